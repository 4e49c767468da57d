"""What a benchmark is asked to do and what it found: ``BenchConfig``, ``Cell``, ``BenchResult``.

Plain frozen dataclasses that become JSON through ``to_dict``; numpy only, no framework
import, so the CLI can read the runtime names without loading torch or TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.bench.timing import Stats
from parity.errors import UsageError

INFERENCE_RUNTIMES: tuple[str, ...] = (
    "torch-eager", "torch-compile", "tf-eager", "tf-function", "tf-xla", "ort-cpu", "ort-cuda", "ort-tensorrt",
)
TRAINING_RUNTIMES: tuple[str, ...] = ("torch-eager", "torch-compile", "tf-eager", "tf-function", "tf-xla")
# The Keras twin on Keras 3's JAX and PyTorch backends (inference and training; parity.bench.cases_keras).
# Each starts a worker process, so they run when asked for (--runtimes keras, or by name), not by default.
KERAS_RUNTIMES: tuple[str, ...] = ("keras-jax", "keras-torch")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
MEMORY_MODES = ("process", "subprocess")

# Backward costs about twice the forward (one product for the input gradient, one for
# the weight gradient), the usual convention for training FLOPs.
TRAINING_FLOPS_FACTOR = 3


@dataclass(frozen=True)
class Cell:
    """One runtime at one batch size: statistics, or the reason it was not measured.

    ``status`` is 'ok', 'skipped' (the runtime is not available here) or 'failed' (it
    raised while compiling or running); the last two carry ``reason``.
    """

    runtime: str
    task: str
    batch: int
    status: str
    reason: str = ""
    device: str = ""
    stats: Stats | None = None
    first_call_s: float | None = None
    throughput: float | None = None  # samples per second = batch / median
    peak_memory_bytes: int | None = None
    memory_source: str = ""
    flops: int | None = None  # per call: forward, or TRAINING_FLOPS_FACTOR x forward for a training step
    achieved_gflops: float | None = None
    fraction_of_peak: float | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    memory_comparable: bool = False  # True: the framework's own allocator counter (see parity.bench.memory)
    samples_s: tuple[float, ...] = ()  # up to KEPT_SAMPLES timed calls (seconds), for intervals and diffs

    @property
    def measured(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        """A cell written by ``to_dict``; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise UsageError(f"not a bench cell: unknown keys {extra}; expected those of Cell.to_dict")
        kw = dict(data)
        kw["stats"] = Stats(**data["stats"]) if data.get("stats") else None
        kw["samples_s"] = tuple(float(x) for x in data.get("samples_s", ()))
        kw["settings"] = dict(data.get("settings", {}))
        return cls(**kw)


@dataclass(frozen=True)
class BenchResult:
    """Every cell of a run, with the configuration, the environment, FLOPs and the machine's peak.

    ``environment`` has the shape of ``parity.env.capture``; ``load_average_1min`` is the
    host's load at the start and the end of the run (other processes competing for the cores).
    """

    model: str
    preset: str
    task: str
    config: Mapping[str, Any]
    environment: Mapping[str, Any]
    cells: tuple[Cell, ...]
    flops: Mapping[int, int | None] = field(default_factory=dict)
    peak: Mapping[str, Any] | None = None
    load_average_1min: Mapping[str, float | None] = field(default_factory=dict)

    def fastest(self, batch: int) -> Cell | None:
        """The measured cell with the lowest median at ``batch``."""
        cells = [c for c in self.cells if c.batch == batch and c.measured and c.stats]
        return min(cells, key=lambda c: c.stats.median_s) if cells else None  # type: ignore[union-attr]

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``parity bench --json``, with the decision summary computed from the cells."""
        from parity.report.decision import decide

        data = jsonable({
            "model": self.model, "preset": self.preset, "task": self.task, "config": dict(self.config),
            "environment": dict(self.environment), "load_average_1min": dict(self.load_average_1min),
            "peak": self.peak, "flops": {str(b): f for b, f in self.flops.items()},
            "cells": [c.to_dict() for c in self.cells],
        })
        data["decision"] = decide(data)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchResult:
        """A result saved with ``to_dict`` (``parity bench --json``); the decision is recomputed, not read."""
        try:
            return cls(
                model=data["model"], preset=data["preset"], task=data["task"], config=dict(data["config"]),
                environment=dict(data.get("environment", {})), cells=tuple(Cell.from_dict(c) for c in data["cells"]),
                flops={int(b): f for b, f in data.get("flops", {}).items()}, peak=data.get("peak"),
                load_average_1min=dict(data.get("load_average_1min", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"not a saved bench result (BenchResult.to_dict / parity bench --json): {exc!r} "
                             "is missing or malformed") from exc


KEPT_SAMPLES = 500  # enough for a bootstrap of the median; bounds the JSON at ~6 kB per cell


def keep_samples(samples: Sequence[float]) -> tuple[float, ...]:
    """At most ``KEPT_SAMPLES`` of ``samples`` (a seeded uniform subset, in call order), rounded to 1 ns."""
    if len(samples) > KEPT_SAMPLES:
        idx = np.sort(np.random.default_rng(0).choice(len(samples), KEPT_SAMPLES, replace=False))
        samples = [samples[i] for i in idx]
    return tuple(round(float(s), 9) for s in samples)


def jsonable(value: Any) -> Any:
    """Plain JSON types: mappings to dicts, tuples to lists, numpy scalars to Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


@dataclass(frozen=True)
class BenchConfig:
    """What to run and how. ``threads=None`` means every core this process may use."""

    batches: tuple[int, ...] = (1, 8, 32)
    train: bool = False
    device: str = "auto"
    precision: str = "fp32"
    threads: int | None = None
    include_copies: bool = False
    budget_s: float = 1.0
    min_runs: int = 10
    warmup: int = 3
    runtimes: tuple[str, ...] | None = None
    seed: int = 0
    probe_peak: bool = True
    # "process": each cell's peak RSS in the bench process (not comparable on CPU); "subprocess": each
    # runtime again in a fresh process for CPU memory that is comparable (parity.bench.memory_probe)
    memory: str = "process"

    @property
    def task(self) -> str:
        return "training" if self.train else "inference"

    @property
    def warmup_s(self) -> float:
        """Warm-up time per shape: a tenth of the budget, on top of the ``warmup`` calls."""
        return self.budget_s / 10

    def validate(self) -> None:
        """Raise ``UsageError`` naming the first value out of range."""
        if not self.batches or any(b < 1 for b in self.batches):
            raise UsageError(f"batch sizes must be positive integers, got {list(self.batches)}")
        if self.device not in DEVICES:
            raise UsageError(f"unknown device {self.device!r}; expected one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be a positive integer, got {self.threads}")
        if self.budget_s < 0 or self.min_runs < 1 or self.warmup < 0:
            raise UsageError(f"need budget >= 0, min-runs >= 1, warmup >= 0; got {self.budget_s}, "
                             f"{self.min_runs}, {self.warmup}")
        if self.memory not in MEMORY_MODES:
            raise UsageError(f"unknown memory mode {self.memory!r}; expected one of {', '.join(MEMORY_MODES)}")
        select_runtimes(self.runtimes, self.train)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({**dataclasses.asdict(self), "task": self.task, "warmup_s": self.warmup_s})


def select_runtimes(requested: Sequence[str] | None, train: bool) -> tuple[str, ...]:
    """Runtimes to run, in canonical order; a family name ('torch', 'tf', 'ort') selects all its modes."""
    known = TRAINING_RUNTIMES if train else INFERENCE_RUNTIMES
    if not requested:
        return known
    known = (*known, *KERAS_RUNTIMES)
    chosen: set[str] = set()
    for name in requested:
        matches = [r for r in (*INFERENCE_RUNTIMES, *KERAS_RUNTIMES) if r == name or r.split("-")[0] == name]
        if not matches:
            raise UsageError(f"unknown runtime {name!r}; known: {', '.join((*INFERENCE_RUNTIMES, *KERAS_RUNTIMES))} "
                             "(or a family: torch, tf, keras, ort)")
        chosen.update(matches)
    selected = tuple(r for r in known if r in chosen)
    if not selected:
        raise UsageError(f"none of {list(requested)} has a {'training' if train else 'inference'} mode; "
                         f"choose from {', '.join(known)}")
    return selected


__all__ = ["DEVICES", "INFERENCE_RUNTIMES", "KEPT_SAMPLES", "KERAS_RUNTIMES", "PRECISIONS", "TRAINING_FLOPS_FACTOR", "TRAINING_RUNTIMES",
           "BenchConfig", "BenchResult", "Cell", "jsonable", "keep_samples",
           "select_runtimes"]
