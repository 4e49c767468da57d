"""The timing engine: honest latency and throughput for torch, TF and ONNX Runtime.

The method is written down in docs/benchmarking.md: synchronise before every clock read;
warm up per input shape and report the first call on its own; median and tail over a time
budget *and* a minimum count; one thread budget for every framework, recorded; precision
set explicitly per framework (TF32 off for fp32); inputs resident on the device unless
copies are asked for; peak memory from each framework's allocator on GPU, RSS on CPU.

``parity.bench.timing.measure`` is the core and knows nothing of frameworks;
``parity.env.capture`` records the environment. ``Bench`` imports the frameworks, sets
threads and precision once, resolves the device once, asks the per-runtime case modules
(``cases_torch``, ``cases_tf``, ``cases_ort``) for a case per runtime and batch size, and
turns each measurement (or the reason a runtime was skipped) into a ``Cell`` of a ``BenchResult``.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from parity.bench.case import Case, Skip
from parity.bench.cases_keras import keras_measurement
from parity.bench.cases_ort import ort_case
from parity.bench.cases_tf import keras_policy, tf_case
from parity.bench.cases_torch import torch_case
from parity.bench.given import GivenSpec
from parity.bench.memory import Memory
from parity.bench.results import (
    INFERENCE_RUNTIMES,
    TRAINING_FLOPS_FACTOR,
    TRAINING_RUNTIMES,
    BenchConfig,
    BenchResult,
    Cell,
    keep_samples,
    select_runtimes,
)
from parity.bench.timing import Measurement, Stats, measure
from parity.env import capture, default_threads, load_average

Progress = Callable[[str], None]

_BUILDERS: dict[str, Callable[[Any, str, int], Case]] = {"torch": torch_case, "tf": tf_case, "ort": ort_case}
# The bench's short framework keys and their module names (also their sections in ``parity.env.capture``).
_FRAMEWORKS = {"torch": "torch", "tf": "tensorflow", "ort": "onnxruntime"}


class Bench:
    """Build cases for ``spec`` under ``config``, measure them, and collect a ``BenchResult``.

    Frameworks are imported here (torch first, then TensorFlow), threads and precision are
    set once for all of them, and the device is resolved once. Use as a context manager so
    the exported ONNX file is removed. The public attributes and methods other than
    ``case``, ``cell`` and ``run`` are what the case modules build from (``CaseHost``).
    """

    def __init__(self, spec: Any, config: BenchConfig, generated: Sequence[Any] = ()):
        config.validate()
        self.spec, self.config = spec, config
        # generated twins (parity.bench.generated) timed in turn with the hand-written twin of their framework
        self.generated = tuple(generated)
        self.generated_hosts: dict[str, Any] = {}  # the generated twins' case hosts by framework, kept across batches
        self.runtimes = select_runtimes(config.runtimes, config.train)
        self.threads = config.threads or default_threads()
        self.models: dict[str, Any] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="parity-bench-")
        self._modules: dict[str, Any] = {}
        self._missing: dict[str, str] = {}
        self._onnx: str | None = None
        self._onnx_layout = "torch"  # whose layout the ONNX file's inputs take
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
        self.models.clear()
        self._tmp.cleanup()

    # ---------------------------------------------------------------- setup

    def _needs(self, family: str) -> bool:
        return any(r.startswith(family + "-") for r in self.runtimes)

    def _import_frameworks(self) -> None:
        """torch always (export, probe) and before TensorFlow; TF and ORT only when a runtime needs them."""
        for key, module in _FRAMEWORKS.items():
            if key != "torch" and not self._needs(key):
                continue
            if key == "tf" and isinstance(self.spec, GivenSpec) and self.spec.keras_model is None:
                self._missing[key] = "no Keras model given (--keras model.keras|pkg.module:factory)"
                continue  # nothing to time in TensorFlow: do not pay for importing it
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

            out["tf"] = {**tf_apply_precision(self.config.precision), "keras_policy": keras_policy(self.config.precision)}
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

    # ---------------------------------------------------------------- what the case modules use

    def module(self, key: str) -> Any:
        """The imported framework ('torch', 'tf', 'ort'); ``Skip`` with the reason when it is missing."""
        if key not in self._modules:
            raise Skip(self._missing.get(key, f"{key} was not imported"))
        return self._modules[key]

    def inputs(self, batch: int, framework: str) -> list[np.ndarray]:
        """The spec's seeded inputs at ``batch`` in ``framework``'s layout, contiguous, in its argument order."""
        example = self.spec.example_inputs(batch=batch, seed=self.config.seed)
        laid_out = self.spec.inputs_for(framework, example)
        order = self.spec.input_order(framework) if isinstance(self.spec, GivenSpec) else self.spec.input_names
        return [np.ascontiguousarray(laid_out[n]) for n in order]

    def onnx_inputs(self, batch: int) -> dict[str, np.ndarray]:
        """The seeded inputs at ``batch`` by name, in the layout the ONNX file takes (its exporter's)."""
        self.onnx_path()  # the export decides the layout
        order = (self.spec.input_order(self._onnx_layout) if isinstance(self.spec, GivenSpec)
                 else self.spec.input_names)
        return dict(zip(order, self.inputs(batch, self._onnx_layout), strict=True))

    def targets(self, batch: int, framework: str) -> tuple[str, np.ndarray]:
        """The loss kind for the first output and its seeded target in ``framework``'s layout."""
        rng = np.random.default_rng(self.config.seed + 1)
        if isinstance(self.spec, GivenSpec):  # a given model's own output shape, in its own layout
            shape = self.spec.output_shapes[framework][0]
            if len(shape) == 1:
                return "cross_entropy", rng.integers(0, shape[0], size=batch).astype(np.int64)
            return "mse", rng.standard_normal((batch, *shape)).astype(np.float32)
        out = self.spec.outputs[0]
        if len(out.shape) == 1:
            return "cross_entropy", rng.integers(0, out.shape[0], size=batch).astype(np.int64)
        target = rng.standard_normal((batch, *out.shape)).astype(np.float32)
        return "mse", np.ascontiguousarray(out.to_framework(target, framework))

    def common(self, mode: str) -> dict[str, Any]:
        """Settings every cell records."""
        return {"mode": mode, "precision": self.config.precision, "include_copies": self.config.include_copies,
                "threads": self.threads}

    def gpu_name(self) -> str:
        """The CUDA device's name as torch reports it, else 'cuda'."""
        torch = self._modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
        return "cuda"

    def onnx_path(self) -> str:
        """The spec exported to ONNX once (torch twin, dynamic batch), or a user's own ONNX file;
        ``Skip`` if no exporter works."""
        if self._onnx is None and self._onnx_error is None:
            from converters.errors import ConversionError
            from parity.bench.flops import export_for_bench

            try:
                with _quiet():
                    path, self._onnx_layout = export_for_bench(self.spec, self._tmp.name, seed=self.config.seed)
                self._onnx = str(path)
            except (ConversionError, ImportError) as exc:
                self._onnx_error = f"ONNX export failed: {exc}"
        if self._onnx is None:
            raise Skip(self._onnx_error or "ONNX export failed")
        return self._onnx

    # ---------------------------------------------------------------- public API

    def case(self, runtime: str, batch: int) -> Case:
        """A ready-to-time case; raises ``Skip`` with the reason when the runtime cannot run here."""
        family, mode = runtime.split("-", 1)
        if family == "keras":
            raise Skip(f"{runtime} is timed in a worker process (cases_keras.keras_rows), not in this one")
        return _BUILDERS[family](self, mode, batch)

    def cell(self, runtime: str, batch: int) -> Cell:
        """Measure ``runtime`` at ``batch``; a skip or a failure becomes a cell with its reason."""
        task = self.config.task
        if runtime.startswith("keras-"):  # timed in a worker process per backend (cases_keras)
            try:
                case, m = keras_measurement(self, runtime.split("-", 1)[1], batch, self._tmp.name)
            except Skip as exc:
                return Cell(runtime, task, batch, "skipped", reason=str(exc), device=self.device)
            except Exception as exc:
                return Cell(runtime, task, batch, "failed", reason=_describe(exc), device=self.device)
            return self.ok_cell(case, m)
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
        return self.ok_cell(case, m)

    def cells_at(self, runtime: str, batch: int) -> list[Cell]:
        """``[cell(runtime, batch)]``, or both twins timed in turn when a generated twin is of ``runtime``'s framework."""
        if self.generated:
            from parity.bench.generated import paired_cells

            pair = paired_cells(self, runtime, batch)
            if pair is not None:
                return pair
        return [self.cell(runtime, batch)]

    def run(self, progress: Progress | None = None) -> BenchResult:
        """Every selected runtime at every batch size, plus FLOPs, the peak probe and the environment."""
        say = progress or (lambda _msg: None)
        load_start = load_average()
        say(f"{self.spec.name}: exporting to ONNX and counting FLOPs ...")
        flops = {b: self.flops(b) for b in self.config.batches}
        peak = self.peak(say)
        cells: list[Cell] = []
        for runtime in self.runtimes:
            for batch in self.config.batches:
                say(f"{self.spec.name} {self.config.task} {runtime} batch={batch} ...")
                for cell in self.cells_at(runtime, batch):
                    cells.append(cell)
                    say(_progress_line(cell))
        if self.config.memory == "subprocess" and self.device == "cpu":
            from parity.bench.memory_probe import with_subprocess_memory

            cells = with_subprocess_memory(self.spec, self.config, cells, say)
        return BenchResult(
            model=self.spec.name, preset=self.spec.preset, task=self.config.task,
            config={**self.config.to_dict(), "runtimes": list(self.runtimes), "threads": self.threads,
                    "device_resolved": self.device, "settings": self.settings,
                    **({"generated": [t.to_dict() for t in self.generated]} if self.generated else {})},
            environment=self.environment(), cells=tuple(cells), flops=flops, peak=peak,
            load_average_1min={"start": load_start, "end": load_average()},
        )

    def environment(self) -> dict[str, Any]:
        """``parity.env.capture`` of the frameworks this bench imported (as their threads and TF32 are set now)."""
        return capture([module for key, module in _FRAMEWORKS.items() if key in self._modules])

    # ---------------------------------------------------------------- roofline

    def flops(self, batch: int) -> int | None:
        """Forward FLOPs at ``batch`` counted from the ONNX graph; None if it cannot be exported."""
        if batch not in self._flops:
            from converters.errors import ConversionError
            from parity.bench.flops import count_flops

            try:
                path = self.onnx_path()
                shapes = ({s.name: s.framework_shape(self._onnx_layout) for s in self.spec.inputs}
                          if isinstance(self.spec, GivenSpec) else None)  # fixes a given file's dynamic dimensions
                self._flops[batch] = count_flops(path, batch, shapes).total
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

    def ok_cell(self, case: Case, m: Measurement) -> Cell:
        """The measured cell of ``case``: statistics, throughput, FLOP rate, memory and kept samples."""
        forward = self.flops(case.batch)
        flops = forward * TRAINING_FLOPS_FACTOR if forward and self.config.train else forward
        achieved = flops / m.stats.median_s / 1e9 if flops and m.stats.median_s > 0 else None
        peak = self._peak_gflops
        return Cell(
            runtime=case.runtime, task=self.config.task, batch=case.batch, status="ok", device=case.device,
            stats=m.stats, first_call_s=m.first_call_s,
            throughput=case.batch / m.stats.median_s if m.stats.median_s > 0 else None,
            peak_memory_bytes=case.memory.peak(), memory_source=case.memory.source,
            memory_comparable=case.memory.comparable, samples_s=keep_samples(m.samples), flops=flops,
            achieved_gflops=achieved, fraction_of_peak=achieved / peak if achieved and peak else None,
            settings={**case.settings, "warmup_runs": m.warmup_runs},
        )


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


def run_benchmark(spec: Any, config: BenchConfig, progress: Progress | None = None,
                  generated: Sequence[Any] = ()) -> BenchResult:
    """Convenience: ``Bench(spec, config, generated).run(progress)`` with cleanup."""
    with Bench(spec, config, generated) as bench:
        return bench.run(progress)


# Re-exported so that ``from parity.bench.engine import ...`` keeps working for the names it always had.
__all__ = ["INFERENCE_RUNTIMES", "TRAINING_RUNTIMES", "Bench", "BenchConfig", "BenchResult", "Case", "Cell",
           "Measurement", "Memory", "Skip", "Stats", "measure", "run_benchmark", "select_runtimes"]
