"""Generated twins in `parity bench`: the folder `parity convert` wrote, timed beside the hand-written twin.

``parity bench MODEL --generated DIR`` reads DIR (``model.py`` with ``build_model()``, the ported
weights as ``model.safetensors`` or ``model.weights.h5``, ``parity.json``), refuses a folder whose
check failed or that holds another model, and times the generated twin and the zoo's hand-written
twin of the same framework in turn, in this one process (``timing.measure_alternating``): one
timed call of each per round, so that a load that comes and goes falls on both alike. The
generated twin's cells are labelled ``<runtime> (generated)``; the decision summary turns each
pair into a ratio of medians with a bootstrap interval (``parity.report.decision``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.bench.case import Case, CaseHost, Skip
from parity.bench.results import BenchConfig, Cell, select_runtimes
from parity.bench.timing import Measurement, measure_alternating
from parity.errors import UsageError

SUFFIX = " (generated)"
WEIGHTS = {"torch": "model.safetensors", "tf": "model.weights.h5"}  # what parity.convert writes
_FRAMEWORK_NAMES = {"torch": "PyTorch", "tf": "Keras"}


@dataclass(frozen=True)
class GeneratedTwin:
    """A folder written by ``parity convert``, checked against the model it is benchmarked with."""

    folder: Path
    framework: str  # the generated twin's framework: 'torch' or 'tf' (parity.json's target)
    model: str
    preset: str
    source: str  # the framework it was generated from

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS[self.framework]

    def label(self, runtime: str) -> str:
        """The runtime name of this twin's cells: 'tf-function (generated)'."""
        return runtime + SUFFIX

    def build(self) -> Any:
        """Import ``model.py`` (this runs its code), call ``build_model()`` and load the ported weights."""
        from converters.codegen.files import load_model_module

        model = load_model_module(self.folder / "model.py").build_model()
        try:
            if self.framework == "torch":
                from safetensors.torch import load_file

                model.load_state_dict(load_file(str(self.weights)), strict=True)
            else:
                model.load_weights(str(self.weights))
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise UsageError(f"--generated {self.folder}: {self.weights.name} does not load into model.py's "
                             f"model ({type(exc).__name__}: {str(exc)[:200]}); regenerate the folder with "
                             "`parity convert`") from exc
        return model

    def spec_for(self, spec: Any) -> Any:
        """``spec`` with this twin's framework built from the folder (same inputs, names and config)."""
        key = "torch_builder" if self.framework == "torch" else "keras_builder"
        return dataclasses.replace(spec, **{key: lambda _cfg: self.build()})

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "framework": self.framework, "model": self.model,
                "preset": self.preset, "source": self.source}


def read_generated(folder: str | Path, spec: Any) -> GeneratedTwin:
    """The generated twin in ``folder``; ``UsageError`` when it is not one, failed its check, or is another model."""
    folder = Path(folder).resolve()
    where = f"--generated {folder}"
    if not folder.is_dir():
        raise UsageError(f"{where}: no such folder; give the --out folder of `parity convert {spec.name} ...`")
    if not (folder / "parity.json").is_file() or not (folder / "model.py").is_file():
        raise UsageError(f"{where}: not a folder written by `parity convert` (needs model.py and parity.json)")
    try:
        data = json.loads((folder / "parity.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{where}: parity.json is not readable JSON ({exc}); regenerate the folder") from None
    if not isinstance(data, dict) or data.get("target") not in WEIGHTS:
        raise UsageError(f"{where}: parity.json names no target framework 'torch' or 'tf'; regenerate the folder")
    model, preset = data.get("model"), data.get("preset")
    if (model, preset) != (spec.name, spec.preset):
        hint = (f"`parity convert {spec.name} --preset {spec.preset}`, or bench --preset {preset}" if model == spec.name
                else f"`parity convert {spec.name}`")
        raise UsageError(f"{where} holds the generated twin of {model or 'your own model'} ({preset}), not of "
                         f"{spec.name} ({spec.preset}): give the folder of {hint}")
    if data.get("passed") is not True:
        raise UsageError(f"{where}: parity.json says its generated twin FAILED the parity check against the "
                         f"{data.get('source')} source; only a twin proven equal is benchmarked (see parity.json)")
    twin = GeneratedTwin(folder, str(data["target"]), spec.name, spec.preset, str(data.get("source")))
    if not twin.weights.is_file():
        raise UsageError(f"{where}: {twin.weights.name} is missing; regenerate the folder with `parity convert`")
    return twin


def generated_twins(folders: Sequence[str | Path] | None, spec: Any, config: BenchConfig) -> tuple[GeneratedTwin, ...]:
    """Each ``--generated`` folder read and checked against ``spec`` and ``config``: at most one per framework."""
    if not folders:
        return ()
    from parity.bench.given import GivenSpec

    if isinstance(spec, GivenSpec) or not hasattr(spec, "torch_builder"):
        raise UsageError("--generated compares a generated twin with a zoo model's hand-written twin: give the zoo "
                         "model's name (`parity bench MODEL --generated DIR`), not --torch/--keras/--onnx")
    if config.train:
        raise UsageError("--generated times inference only (a generated twin's training is checked by "
                         "`parity convert --train-steps`); drop --train")
    twins = [read_generated(f, spec) for f in folders]
    runtimes = select_runtimes(config.runtimes, config.train)
    by_framework: dict[str, GeneratedTwin] = {}
    for twin in twins:
        if twin.framework in by_framework:
            raise UsageError(f"--generated {by_framework[twin.framework].folder} and {twin.folder} are both "
                             f"{_FRAMEWORK_NAMES[twin.framework]} twins; give at most one per framework")
        if not any(r.startswith(twin.framework + "-") for r in runtimes):
            raise UsageError(f"--generated {twin.folder} holds a {_FRAMEWORK_NAMES[twin.framework]} twin, but no "
                             f"{twin.framework} runtime is selected: add one to --runtimes "
                             f"(e.g. {twin.framework}-{'eager' if twin.framework == 'torch' else 'function'})")
        by_framework[twin.framework] = twin
    return tuple(twins)


class _TwinHost:
    """The bench as the case modules see it, with the generated twin's spec and its own built models."""

    def __init__(self, bench: Any, spec: Any):
        self._bench = bench
        self.spec = spec
        self.models: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bench, name)


class _Raised(Exception):
    def __init__(self, index: int, exc: BaseException):
        super().__init__(str(exc))
        self.index, self.exc = index, exc


def paired_cells(bench: Any, runtime: str, batch: int) -> list[Cell] | None:
    """The hand-written and the generated twin at ``runtime`` and ``batch``, timed in turn; None when no
    generated twin is of ``runtime``'s framework."""
    from parity.bench.cases_tf import tf_case
    from parity.bench.cases_torch import torch_case

    family, mode = runtime.split("-", 1)
    twin = next((t for t in bench.generated if t.framework == family), None)
    if twin is None:
        return None
    builders: dict[str, Callable[[CaseHost, str, int], Case]] = {"torch": torch_case, "tf": tf_case}
    if twin.framework not in bench.generated_hosts:  # kept across batch sizes, as the bench keeps its models
        bench.generated_hosts[twin.framework] = _TwinHost(bench, twin.spec_for(bench.spec))
    host = bench.generated_hosts[twin.framework]
    labels, cells, cases = (runtime, twin.label(runtime)), {}, []
    for i, (name, build) in enumerate(((runtime, lambda: bench.case(runtime, batch)),
                                       (labels[1], lambda: builders[family](host, mode, batch)))):
        try:
            case = build()
        except Skip as exc:
            cells[i] = Cell(name, bench.config.task, batch, "skipped", reason=str(exc), device=bench.device)
            continue
        except Exception as exc:  # the contract of Bench.cell: a failed cell with the reason, not a crash
            cells[i] = Cell(name, bench.config.task, batch, "failed", reason=f"setup: {_describe(exc)}",
                            device=bench.device)
            continue
        settings = {**case.settings, **({"generated": str(twin.folder)} if i == 1 else {})}
        cases.append((i, dataclasses.replace(case, runtime=name, settings=settings)))
    measured = _measure_in_turn(bench.config, cases, cells)
    for i, case, m in measured:
        if len(measured) == 2:  # what the ratio's paired interval relies on (parity.report.decision)
            case = dataclasses.replace(case, settings={**case.settings, "alternated_with": labels[1 - i]})
        cells[i] = bench.ok_cell(case, m)
    return [cells[0], cells[1]]


def _measure_in_turn(config: BenchConfig, cases: list[tuple[int, Case]],
                     failed: dict[int, Cell]) -> list[tuple[int, Case, Measurement]]:
    """Measure ``cases`` in turn; one that raises becomes a failed cell and the others are measured again."""
    while cases:
        for _, case in cases:
            case.memory.reset()
        calls = [(_tagged(k, case.call), case.sync) for k, (_, case) in enumerate(cases)]
        try:
            ms = measure_alternating(calls, budget_s=config.budget_s, min_runs=config.min_runs,
                                     warmup=config.warmup, warmup_s=config.warmup_s)
        except _Raised as raised:
            i, case = cases.pop(raised.index)
            failed[i] = Cell(case.runtime, config.task, case.batch, "failed", reason=_describe(raised.exc),
                             device=case.device, settings=case.settings)
            continue
        return [(i, case, m) for (i, case), m in zip(cases, ms, strict=True)]
    return []


def _tagged(index: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        try:
            return fn()
        except Exception as exc:
            raise _Raised(index, exc) from exc

    return call


def _describe(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


__all__ = ["SUFFIX", "WEIGHTS", "GeneratedTwin", "generated_twins", "paired_cells", "read_generated"]
