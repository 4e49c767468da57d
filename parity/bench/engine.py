"""The timing engine: honest latency and throughput for torch, TF and ONNX Runtime.

The rules it follows (see BENCHMARKING.md): synchronise before every clock read; warm
up per input shape and report the first call on its own; median and tail over a time
budget *and* a minimum count; one thread budget for every framework, recorded; precision
set explicitly per framework (TF32 off for fp32); inputs resident on the device unless
copies are asked for; peak memory from each framework's allocator on GPU, RSS on CPU.

``parity.bench.timing.measure`` is the core and knows nothing of frameworks (re-exported here
with ``Stats`` and ``Measurement``); ``parity.bench.environment`` records the environment. ``Bench`` turns a zoo spec
into *cases* (a call and its sync) for each runtime and batch size, and cells (the
statistics, or the reason a runtime was skipped) into a ``BenchResult``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.bench.environment import _load_average, capture_environment, default_threads
from parity.bench.timing import Measurement, Stats, _noop, measure
from parity.errors import UsageError

Progress = Callable[[str], None]

INFERENCE_RUNTIMES: tuple[str, ...] = (
    "torch-eager", "torch-compile", "tf-eager", "tf-function", "tf-xla", "ort-cpu", "ort-cuda", "ort-tensorrt",
)
TRAINING_RUNTIMES: tuple[str, ...] = ("torch-eager", "torch-compile", "tf-eager", "tf-function", "tf-xla")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")

# One training recipe for both frameworks. torch's SGD (v = mu*v + g; p -= lr*v) and
# Keras' (v = mu*v - lr*g; p += v) take identical steps at a constant learning rate.
LEARNING_RATE = 0.01
MOMENTUM = 0.9
# The loss follows the first output: a [batch, classes] output is trained as a classifier,
# anything else (images, sequences, hidden states) regresses onto a seeded random target.
LOSSES = {
    "cross_entropy": "cross-entropy on seeded integer labels, from logits, mean over the batch",
    "mse": "mean squared error to a seeded N(0, 1) target, mean over all elements",
}
# Backward costs about twice the forward (one product for the input gradient, one for
# the weight gradient), the usual convention for training FLOPs.
TRAINING_FLOPS_FACTOR = 3



# ============================================================================ results


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

    @property
    def measured(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


@dataclass(frozen=True)
class BenchResult:
    """Every cell of a run, with the configuration, the environment, FLOPs and the machine's peak."""

    model: str
    preset: str
    task: str
    config: Mapping[str, Any]
    environment: Mapping[str, Any]
    cells: tuple[Cell, ...]
    flops: Mapping[int, int | None] = field(default_factory=dict)
    peak: Mapping[str, Any] | None = None

    def fastest(self, batch: int) -> Cell | None:
        """The measured cell with the lowest median at ``batch``."""
        cells = [c for c in self.cells if c.batch == batch and c.measured and c.stats]
        return min(cells, key=lambda c: c.stats.median_s) if cells else None  # type: ignore[union-attr]

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({
            "model": self.model, "preset": self.preset, "task": self.task, "config": dict(self.config),
            "environment": dict(self.environment), "peak": self.peak,
            "flops": {str(b): f for b, f in self.flops.items()},
            "cells": [c.to_dict() for c in self.cells],
        })


def _jsonable(value: Any) -> Any:
    """Plain JSON types: mappings to dicts, tuples to lists, numpy scalars to Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# ============================================================================ configuration


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

    @property
    def task(self) -> str:
        return "training" if self.train else "inference"

    @property
    def warmup_s(self) -> float:
        """Warm-up time per shape: a tenth of the budget, on top of the ``warmup`` calls."""
        return self.budget_s / 10

    def validate(self) -> None:
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
        select_runtimes(self.runtimes, self.train)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({**dataclasses.asdict(self), "task": self.task, "warmup_s": self.warmup_s})


def select_runtimes(requested: Sequence[str] | None, train: bool) -> tuple[str, ...]:
    """Runtimes to run, in canonical order; a family name ('torch', 'tf', 'ort') selects all its modes."""
    known = TRAINING_RUNTIMES if train else INFERENCE_RUNTIMES
    if not requested:
        return known
    chosen: set[str] = set()
    for name in requested:
        matches = [r for r in INFERENCE_RUNTIMES if r == name or r.split("-")[0] == name]
        if not matches:
            raise UsageError(f"unknown runtime {name!r}; known: {', '.join(INFERENCE_RUNTIMES)} "
                             "(or a family: torch, tf, ort)")
        chosen.update(matches)
    selected = tuple(r for r in known if r in chosen)
    if not selected:
        raise UsageError(f"none of {list(requested)} has a {'training' if train else 'inference'} mode; "
                         f"choose from {', '.join(known)}")
    return selected


# ============================================================================ cases


class Skip(Exception):
    """A runtime that cannot run here (no GPU, provider or framework missing); becomes a skipped cell."""


@dataclass(frozen=True)
class Memory:
    """How to reset and read the peak memory that belongs to one case."""

    source: str
    reset: Callable[[], None] = _noop
    peak: Callable[[], int | None] = lambda: None


@dataclass(frozen=True)
class Case:
    """One runtime at one batch size, ready to time: ``call`` does the work, ``sync`` waits for it."""

    runtime: str
    batch: int
    call: Callable[[], Any]
    sync: Callable[[], Any]
    device: str
    memory: Memory
    settings: Mapping[str, Any] = field(default_factory=dict)


def rss_memory() -> Memory:
    """Process peak RSS (Linux VmHWM, reset through /proc/self/clear_refs), else RSS after the run."""
    status = "/proc/self/status"
    if os.path.exists(status) and _clear_peak_rss():
        return Memory("process peak RSS (VmHWM, reset per cell; all frameworks in the process)",
                      _clear_peak_rss_quiet, lambda: _read_status_kb(status, "VmHWM"))
    return Memory("process RSS after the run (peak not readable here)", _noop, _current_rss)


def _clear_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _clear_peak_rss_quiet() -> None:
    _clear_peak_rss()


def _read_status_kb(path: str, key: str) -> int | None:
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def _current_rss() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


# ============================================================================ the engine


class Bench:
    """Build cases for ``spec`` under ``config``, measure them, and collect a ``BenchResult``.

    Frameworks are imported here (torch first, then TensorFlow), threads and precision are
    set once for all of them, and the device is resolved once. Use as a context manager so
    the exported ONNX file is removed.
    """

    def __init__(self, spec: Any, config: BenchConfig):
        config.validate()
        self.spec, self.config = spec, config
        self.runtimes = select_runtimes(config.runtimes, config.train)
        self.threads = config.threads or default_threads()
        self._tmp = tempfile.TemporaryDirectory(prefix="parity-bench-")
        self._modules: dict[str, Any] = {}
        self._missing: dict[str, str] = {}
        self._models: dict[str, Any] = {}
        self._onnx: str | None = None
        self._onnx_error: str | None = None
        self._flops: dict[int, int | None] = {}
        self._peak_gflops: float | None = None
        self.settings: dict[str, Any] = {}
        self._import_frameworks()
        self.device = self._resolve_device()

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._models.clear()
        self._tmp.cleanup()

    # ---------------------------------------------------------------- setup

    def _needs(self, family: str) -> bool:
        return any(r.startswith(family + "-") for r in self.runtimes)

    def _import_frameworks(self) -> None:
        """torch always (export, probe) and before TensorFlow; TF and ORT only when a runtime needs them."""
        wanted = [("torch", "torch"), ("tf", "tensorflow"), ("ort", "onnxruntime")]
        for key, module in wanted:
            if key != "torch" and not self._needs(key):
                continue
            try:
                self._modules[key] = importlib.import_module(module)
            except ImportError as exc:
                self._missing[key] = f"{module} is not installed ({exc})"
        self.settings["threads"] = self._apply_threads()
        self.settings["precision"] = self._apply_precision()

    def _apply_threads(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requested": self.threads}
        if "torch" in self._modules:
            from parity.runners.torch_runner import apply_threads

            out["torch"] = apply_threads(self.threads)
        if "tf" in self._modules:
            from parity.runners.tf_runner import apply_threads as tf_apply_threads

            out["tf"] = tf_apply_threads(self.threads)
        if "ort" in self._modules:
            out["ort"] = {"intra_op_threads": self.threads, "inter_op_threads": self.threads,
                          "allow_spinning": "0"}
        return out

    def _apply_precision(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requested": self.config.precision}
        if "torch" in self._modules:
            from parity.runners.torch_runner import apply_precision

            out["torch"] = apply_precision(self.config.precision)
        if "tf" in self._modules:
            from parity.runners.tf_runner import apply_precision as tf_apply_precision

            out["tf"] = {**tf_apply_precision(self.config.precision), "keras_policy": _keras_policy(self.config.precision)}
        if "ort" in self._modules:
            out["ort"] = {"use_tf32": self.config.precision == "tf32"}
        return out

    def _resolve_device(self) -> str:
        """'auto' is cuda when any installed framework sees a GPU; the same device for every cell."""
        if self.config.device != "auto":
            return self.config.device
        torch, tf, ort = (self._modules.get(k) for k in ("torch", "tf", "ort"))
        if torch is not None and torch.cuda.is_available():
            return "cuda"
        if tf is not None and tf.config.list_physical_devices("GPU"):
            return "cuda"
        if ort is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            return "cuda"
        return "cpu"

    def _module(self, key: str) -> Any:
        if key not in self._modules:
            raise Skip(self._missing.get(key, f"{key} was not imported"))
        return self._modules[key]

    # ---------------------------------------------------------------- public API

    def case(self, runtime: str, batch: int) -> Case:
        """A ready-to-time case; raises ``Skip`` with the reason when the runtime cannot run here."""
        family, mode = runtime.split("-", 1)
        builder = {"torch": self._torch_case, "tf": self._tf_case, "ort": self._ort_case}[family]
        return builder(mode, batch)

    def cell(self, runtime: str, batch: int) -> Cell:
        """Measure ``runtime`` at ``batch``; a skip or a failure becomes a cell with its reason."""
        task = self.config.task
        # Compilers, exporters and providers raise anything (inductor, XLA, TensorRT): the
        # contract is a cell with the reason, not a crash that loses every other measurement.
        try:
            case = self.case(runtime, batch)
        except Skip as exc:
            return Cell(runtime, task, batch, "skipped", reason=str(exc), device=self.device)
        except Exception as exc:
            return Cell(runtime, task, batch, "failed", reason=f"setup: {_describe(exc)}", device=self.device)
        case.memory.reset()
        try:
            m = measure(case.call, case.sync, budget_s=self.config.budget_s, min_runs=self.config.min_runs,
                        warmup=self.config.warmup, warmup_s=self.config.warmup_s)
        except Exception as exc:
            return Cell(runtime, task, batch, "failed", reason=_describe(exc), device=case.device,
                        settings=case.settings)
        return self._ok_cell(case, m)

    def run(self, progress: Progress | None = None) -> BenchResult:
        """Every selected runtime at every batch size, plus FLOPs, the peak probe and the environment."""
        say = progress or (lambda _msg: None)
        load_start = _load_average()
        say(f"{self.spec.name}: exporting to ONNX and counting FLOPs ...")
        flops = {b: self.flops(b) for b in self.config.batches}
        peak = self.peak(say)
        cells: list[Cell] = []
        for runtime in self.runtimes:
            for batch in self.config.batches:
                say(f"{self.spec.name} {self.config.task} {runtime} batch={batch} ...")
                cell = self.cell(runtime, batch)
                cells.append(cell)
                say(_progress_line(cell))
        return BenchResult(
            model=self.spec.name, preset=self.spec.preset, task=self.config.task,
            config={**self.config.to_dict(), "runtimes": list(self.runtimes), "threads": self.threads,
                    "device_resolved": self.device},
            environment={**self.environment(), "load_average_1min": {"start": load_start, "end": _load_average()}},
            cells=tuple(cells),
            flops=flops, peak=peak,
        )

    def environment(self) -> dict[str, Any]:
        return capture_environment(self._modules, self.device, self.settings)

    # ---------------------------------------------------------------- roofline

    def onnx_path(self) -> str:
        """The spec exported to ONNX once (torch twin, dynamic batch); ``Skip`` if no exporter works."""
        if self._onnx is None and self._onnx_error is None:
            from converters.errors import ConversionError
            from parity.bench.flops import export_spec

            try:
                with _quiet():
                    self._onnx = str(export_spec(self.spec, self._tmp.name, seed=self.config.seed))
            except (ConversionError, ImportError) as exc:
                self._onnx_error = f"ONNX export failed: {exc}"
        if self._onnx is None:
            raise Skip(self._onnx_error or "ONNX export failed")
        return self._onnx

    def flops(self, batch: int) -> int | None:
        """Forward FLOPs at ``batch`` counted from the ONNX graph; None if it cannot be exported."""
        if batch not in self._flops:
            from converters.errors import ConversionError
            from parity.bench.flops import count_flops

            try:
                self._flops[batch] = count_flops(self.onnx_path(), batch).total
            except (Skip, ConversionError, ValueError):  # no graph to count: the cells show no GFLOP/s
                self._flops[batch] = None
        return self._flops[batch]

    def peak(self, say: Progress | None = None) -> dict[str, Any] | None:
        """The matmul probe on the bench device, once per run (None if disabled or torch is missing)."""
        if not self.config.probe_peak or "torch" not in self._modules:
            return None
        if self.device == "cuda" and not self._modules["torch"].cuda.is_available():
            return None
        from parity.bench.flops import matmul_peak

        if say:
            say(f"matmul peak probe on {self.device} ...")
        probe = matmul_peak(self.device, self.config.precision, budget_s=min(max(self.config.budget_s, 0.2), 1.0),
                            min_runs=3)
        self._peak_gflops = probe.gflops
        return probe.to_dict()

    def _ok_cell(self, case: Case, m: Measurement) -> Cell:
        forward = self.flops(case.batch)
        flops = forward * TRAINING_FLOPS_FACTOR if forward and self.config.train else forward
        achieved = flops / m.stats.median_s / 1e9 if flops and m.stats.median_s > 0 else None
        peak = self._peak_gflops
        return Cell(
            runtime=case.runtime, task=self.config.task, batch=case.batch, status="ok", device=case.device,
            stats=m.stats, first_call_s=m.first_call_s,
            throughput=case.batch / m.stats.median_s if m.stats.median_s > 0 else None,
            peak_memory_bytes=case.memory.peak(), memory_source=case.memory.source, flops=flops,
            achieved_gflops=achieved, fraction_of_peak=achieved / peak if achieved and peak else None,
            settings={**case.settings, "warmup_runs": m.warmup_runs},
        )

    # ---------------------------------------------------------------- inputs

    def _inputs(self, batch: int, framework: str) -> list[np.ndarray]:
        example = self.spec.example_inputs(batch=batch, seed=self.config.seed)
        laid_out = self.spec.inputs_for(framework, example)
        return [np.ascontiguousarray(laid_out[n]) for n in self.spec.input_names]

    def _targets(self, batch: int, framework: str) -> tuple[str, np.ndarray]:
        """The loss kind for the first output and its seeded target in ``framework``'s layout."""
        out = self.spec.outputs[0]
        rng = np.random.default_rng(self.config.seed + 1)
        if len(out.shape) == 1:
            return "cross_entropy", rng.integers(0, out.shape[0], size=batch).astype(np.int64)
        target = rng.standard_normal((batch, *out.shape)).astype(np.float32)
        return "mse", np.ascontiguousarray(out.to_framework(target, framework))

    def _common(self, mode: str) -> dict[str, Any]:
        return {"mode": mode, "precision": self.config.precision, "include_copies": self.config.include_copies,
                "threads": self.threads}

    # ---------------------------------------------------------------- torch

    def _torch_device(self) -> Any:
        torch = self._module("torch")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise Skip("torch sees no CUDA device")
        return torch.device(self.device)

    def _torch_case(self, mode: str, batch: int) -> Case:
        torch = self._module("torch")
        dev = self._torch_device()
        autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.config.precision)
        if mode == "compile":
            torch.compiler.reset()  # each shape compiles from scratch: its first call shows the whole cost
        maker = self._torch_train_step if self.config.train else self._torch_forward
        call, settings = maker(torch, dev, mode, batch, autocast)
        on_gpu = dev.type == "cuda"
        memory = Memory("torch.cuda.max_memory_allocated (reset per cell)", torch.cuda.reset_peak_memory_stats,
                        torch.cuda.max_memory_allocated) if on_gpu else rss_memory()
        sync = torch.cuda.synchronize if on_gpu else _noop
        device_name = torch.cuda.get_device_name(dev) if on_gpu else "cpu"
        return Case(f"torch-{mode}", batch, call, sync, device_name, memory,
                    {**self._common(mode), **settings, "tf32": bool(torch.backends.cuda.matmul.allow_tf32)})

    def _torch_forward(self, torch: Any, dev: Any, mode: str, batch: int,
                       autocast: Any) -> tuple[Callable[[], Any], dict[str, Any]]:
        if "torch" not in self._models:
            self._models["torch"] = self.spec.build_torch(self.config.seed).eval()
        model = self._models["torch"].to(dev)
        if mode == "compile":
            model = torch.compile(model, dynamic=False)
        arrays = self._inputs(batch, "torch")

        def forward(*xs: Any) -> Any:
            with torch.inference_mode(), _autocast(torch, dev.type, autocast):
                return model(*xs)

        if self.config.include_copies:
            def call() -> Any:
                out = forward(*[torch.from_numpy(a).to(dev) for a in arrays])
                return [o.cpu() for o in _as_list(out)]
        else:
            tensors = [torch.from_numpy(a).to(dev) for a in arrays]

            def call() -> Any:
                return forward(*tensors)

        return call, {"autocast": str(autocast).split(".")[-1] if autocast else None,
                      "compile": {"dynamic": False} if mode == "compile" else None}

    def _torch_train_step(self, torch: Any, dev: Any, mode: str, batch: int,
                          autocast: Any) -> tuple[Callable[[], Any], dict[str, Any]]:
        import torch.nn.functional as F

        loss_kind, labels = self._targets(batch, "torch")
        loss_of = F.cross_entropy if loss_kind == "cross_entropy" else F.mse_loss
        model = self.spec.build_torch(self.config.seed).to(dev).train()
        opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        scaler = torch.amp.GradScaler(dev.type) if self.config.precision == "fp16" else None
        arrays = self._inputs(batch, "torch")
        resident = [torch.from_numpy(a).to(dev) for a in arrays]
        y_resident = torch.from_numpy(labels).to(dev)

        def step(*xs: Any) -> Any:
            opt.zero_grad(set_to_none=True)
            with _autocast(torch, dev.type, autocast):
                loss = loss_of(_as_list(model(*xs[:-1]))[0].float(), xs[-1])
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            return loss

        if mode == "compile":
            step = torch.compile(step, dynamic=False)

        if self.config.include_copies:
            def call() -> Any:
                return step(*[torch.from_numpy(a).to(dev) for a in [*arrays, labels]]).item()
        else:
            def call() -> Any:
                return step(*resident, y_resident)

        return call, {**_training_recipe(loss_kind), "loss_scaling": scaler is not None,
                      "compile": "whole step (forward, backward, optimizer)" if mode == "compile" else None}

    # ---------------------------------------------------------------- TensorFlow / Keras

    def _tf_case(self, mode: str, batch: int) -> Case:
        tf = self._module("tf")
        gpus = tf.config.list_physical_devices("GPU")
        if self.device == "cuda" and not gpus:
            raise Skip("TensorFlow sees no GPU")
        on_gpu = self.device == "cuda"
        tf_device = "/GPU:0" if on_gpu else "/CPU:0"
        maker = self._tf_train_step if self.config.train else self._tf_forward
        call, settings = maker(tf, tf_device, mode, batch)
        memory = Memory("tf.config.experimental.get_memory_info('GPU:0')['peak'] (reset per cell)",
                        lambda: tf.config.experimental.reset_memory_stats("GPU:0"),
                        lambda: int(tf.config.experimental.get_memory_info("GPU:0")["peak"])) if on_gpu \
            else rss_memory()
        sync = tf.test.experimental.sync_devices if on_gpu else _noop
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU:0") if on_gpu else "cpu"
        return Case(f"tf-{mode}", batch, call, sync, name, memory,
                    {**self._common(mode), **settings,
                     "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled())})

    def _tf_wrap(self, tf: Any, fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
        if mode == "eager":
            return fn
        if mode == "function":
            return tf.function(fn)
        if mode == "xla":
            return tf.function(fn, jit_compile=True)
        raise ValueError(f"unknown TensorFlow mode {mode!r}")

    def _keras_model(self, key: str) -> Any:
        with _keras_policy_scope(self.config.precision):
            model = self.spec.build_keras(self.config.seed)
        if key:
            self._models[key] = model
        return model

    def _tf_forward(self, tf: Any, tf_device: str, mode: str, batch: int) -> tuple[Callable[[], Any], dict[str, Any]]:
        model = self._models["tf"] if "tf" in self._models else self._keras_model("tf")
        fn = self._tf_wrap(tf, lambda *xs: model(_keras_args(xs), training=False), mode)
        arrays = self._inputs(batch, "tf")
        with tf.device(tf_device):
            resident = [tf.identity(tf.convert_to_tensor(a)) for a in arrays]

        if self.config.include_copies:
            def call() -> Any:
                with tf.device(tf_device):
                    out = fn(*[tf.convert_to_tensor(a) for a in arrays])
                return [np.asarray(o) for o in _as_list(out)]
        else:
            def call() -> Any:
                with tf.device(tf_device):
                    return fn(*resident)

        return call, {"keras_policy": _keras_policy(self.config.precision), "jit_compile": mode == "xla"}

    def _tf_train_step(self, tf: Any, tf_device: str, mode: str, batch: int) -> tuple[Callable[[], Any], dict[str, Any]]:
        import keras

        loss_kind, labels = self._targets(batch, "tf")
        model = self._keras_model("")
        opt = keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM)
        if self.config.precision == "fp16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        loss_fn = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if loss_kind == "cross_entropy"
                   else keras.losses.MeanSquaredError())
        variables = model.trainable_variables
        opt.build(variables)

        def step(*xs: Any) -> Any:
            with tf.GradientTape() as tape:
                out = _as_list(model(_keras_args(xs[:-1]), training=True))[0]
                loss = loss_fn(xs[-1], tf.cast(out, tf.float32))
                scaled = opt.scale_loss(loss)
            opt.apply(tape.gradient(scaled, variables), variables)
            return loss

        fn = self._tf_wrap(tf, step, mode)
        arrays = [*self._inputs(batch, "tf"), labels]
        with tf.device(tf_device):
            resident = [tf.identity(tf.convert_to_tensor(a)) for a in arrays]

        if self.config.include_copies:
            def call() -> Any:
                with tf.device(tf_device):
                    return float(fn(*[tf.convert_to_tensor(a) for a in arrays]))
        else:
            def call() -> Any:
                with tf.device(tf_device):
                    return fn(*resident)

        return call, {**_training_recipe(loss_kind), "keras_policy": _keras_policy(self.config.precision),
                      "loss_scaling": self.config.precision == "fp16", "jit_compile": mode == "xla"}

    # ---------------------------------------------------------------- ONNX Runtime

    _PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}

    def _ort_case(self, mode: str, batch: int) -> Case:
        ort = self._module("ort")
        provider = self._PROVIDERS[mode]
        self._ort_check(ort, mode, provider)
        from parity.runners.ort_runner import session_options

        opts = session_options(self.threads, optimize=True)
        opts.inter_op_num_threads = self.threads
        session = ort.InferenceSession(self.onnx_path(), opts, providers=self._ort_providers(mode))
        used = session.get_providers()[0]
        if used != provider:
            raise Skip(f"onnxruntime fell back to {used} instead of {provider}")
        arrays = self._inputs(batch, "torch")  # the ONNX file is the torch twin's export
        feeds = dict(zip([i.name for i in session.get_inputs()], arrays, strict=True))
        outputs = [o.name for o in session.get_outputs()]
        call, sync, how = self._ort_call(ort, session, feeds, outputs, on_gpu=mode != "cpu")
        memory = rss_memory() if mode == "cpu" else Memory("not exposed by onnxruntime's Python API")
        return Case(f"ort-{mode}", batch, call, sync, self.device if mode == "cpu" else self._gpu_name(), memory,
                    {**self._common(mode), "provider": used, "graph_optimization": "ORT_ENABLE_ALL",
                     "onnx_source": os.path.basename(self.onnx_path()), "call": how,
                     "tf32": self.config.precision == "tf32" and mode != "cpu"})

    def _ort_check(self, ort: Any, mode: str, provider: str) -> None:
        if self.config.train:
            raise Skip("ONNX Runtime is benchmarked for inference only")
        available = ort.get_available_providers()
        if provider not in available:
            raise Skip(f"onnxruntime has no {provider} (available: {', '.join(available)}); "
                       "install onnxruntime-gpu for CUDA/TensorRT")
        if mode == "cpu" and self.device != "cpu":
            raise Skip(f"device is {self.device}; the CPU provider is benchmarked with --device cpu")
        if mode != "cpu" and self.device != "cuda":
            raise Skip(f"device is {self.device}; {provider} needs --device cuda (or auto on a GPU machine)")
        if self.config.precision in ("fp16", "bf16"):
            raise Skip(f"precision {self.config.precision} needs an ONNX model converted to that type")

    def _ort_providers(self, mode: str) -> list[Any]:
        from parity.runners.ort_runner import providers_for

        if mode == "cpu":
            return ["CPUExecutionProvider"]
        cuda = providers_for("cuda", self.config.precision)
        if mode == "tensorrt":
            return [("TensorrtExecutionProvider", {"trt_fp16_enable": False}), *cuda]
        return cuda

    def _ort_call(self, ort: Any, session: Any, feeds: dict[str, np.ndarray], outputs: list[str],
                  on_gpu: bool) -> tuple[Callable[[], Any], Callable[[], Any], str]:
        """CPU, or GPU with copies: ``session.run`` on numpy. GPU resident: IO binding, outputs left on device."""
        if not on_gpu or self.config.include_copies:
            return (lambda: session.run(outputs, feeds)), _noop, "session.run (numpy in, numpy out)"
        binding = session.io_binding()
        values = {n: ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0) for n, a in feeds.items()}
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cuda", 0)
        binding.synchronize_inputs()

        def call() -> Any:
            session.run_with_iobinding(binding)
            return values  # keeps the device inputs alive with the closure

        return call, binding.synchronize_outputs, "run_with_iobinding (inputs and outputs on the device)"

    def _gpu_name(self) -> str:
        torch = self._modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
        return "cuda"


# ============================================================================ helpers


def _training_recipe(loss_kind: str) -> dict[str, Any]:
    return {"loss": loss_kind, "loss_detail": LOSSES[loss_kind], "optimizer": "SGD", "learning_rate": LEARNING_RATE, "momentum": MOMENTUM,
            "nesterov": False}


def _autocast(torch: Any, device_type: str, dtype: Any) -> Any:
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _keras_policy(precision: str) -> str:
    return {"fp16": "mixed_float16", "bf16": "mixed_bfloat16"}.get(precision, "float32")


@contextlib.contextmanager
def _keras_policy_scope(precision: str) -> Iterator[None]:
    """Build Keras models under the precision's dtype policy, restoring the previous one after."""
    import keras

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(_keras_policy(precision))
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def _keras_args(xs: Sequence[Any]) -> Any:
    return list(xs) if len(xs) > 1 else xs[0]


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _describe(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:300]}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' chatter on stdout (progress goes to stderr, the table to stdout)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _progress_line(cell: Cell) -> str:
    if cell.measured and cell.stats:
        return (f"  {cell.runtime} batch={cell.batch}: median {cell.stats.median_s * 1e3:.4g} ms "
                f"over {cell.stats.count} runs (first call {cell.first_call_s * 1e3 if cell.first_call_s else 0:.4g} ms)")
    return f"  {cell.runtime} batch={cell.batch}: {cell.status}: {cell.reason}"




def run_benchmark(spec: Any, config: BenchConfig, progress: Progress | None = None) -> BenchResult:
    """Convenience: ``Bench(spec, config).run(progress)`` with cleanup."""
    with Bench(spec, config) as bench:
        return bench.run(progress)


__all__ = ["INFERENCE_RUNTIMES", "TRAINING_RUNTIMES", "Bench", "BenchConfig", "BenchResult", "Case", "Cell",
           "Measurement", "Memory", "Skip", "Stats", "capture_environment", "measure", "run_benchmark",
           "select_runtimes"]
