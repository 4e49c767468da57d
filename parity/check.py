"""`parity check`: port a zoo twin through ONNX and compare four runtimes against the source."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.compare import Comparison, compare
from parity.errors import NonFiniteOutputError, UsageError

OTHER = {"torch": "tf", "tf": "torch"}


@dataclass(frozen=True)
class CheckOptions:
    model: str
    source: str = "torch"
    preset: str = "small"
    batch: int = 2
    seed: int = 0
    atol: float | None = None  # absolute; by default the spec's tolerance, scaled to the output
    rtol: float | None = None
    device: str = "auto"
    threads: int | None = None
    precision: str = "fp32"
    exporter: str | None = None  # torch exporter; None: the spec's (dynamo unless the twin needs legacy)
    lossless: bool = True
    strict: bool = False
    out: Path | None = None


@dataclass
class CheckResult:
    model: str
    preset: str
    source: str
    target: str
    passed: bool
    environment: dict[str, Any]
    comparisons: list[Comparison]
    tolerance: dict[str, Any]
    port: dict[str, Any]
    runners: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    lint: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "preset": self.preset, "source": self.source, "target": self.target,
            "passed": self.passed, "environment": self.environment,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "tolerance": self.tolerance, "port": self.port, "runners": self.runners,
            "files": self.files, "notes": self.notes, "lint": self.lint,
        }

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c]


def prepare_out_dir(out: Path | None) -> Path | None:
    """Create ``out`` and prove it is writable before any work starts."""
    if out is None:
        return None
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose a writable folder") from exc
    return out


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights_atomic(model: Any, framework: str, folder: Path) -> Path:
    """The ported weights in the framework's native format: safetensors or .weights.h5."""
    if framework == "torch":
        from safetensors.torch import save_file

        path = folder / "target.safetensors"
        tmp = folder / ".target.tmp.safetensors"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp))
    else:
        path = folder / "target.weights.h5"
        tmp = folder / ".target.tmp.weights.h5"
        model.save_weights(str(tmp))
    os.replace(tmp, path)
    return path


def _progress(msg: str) -> None:
    print(f"[parity] {msg}", file=sys.stderr, flush=True)


def run_check(options: CheckOptions, *, spec: Any = None,
              progress: Callable[[str], None] = _progress) -> CheckResult:
    """Build, export, port, run and compare. ``spec`` overrides the zoo lookup (tests plant bugs this way)."""
    import zoo

    if options.source not in OTHER:
        raise UsageError(f"--from must be 'torch' or 'tf', got {options.source!r}")
    if options.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {options.batch}")
    if spec is None:
        try:
            spec = zoo.get(options.model, preset=options.preset)
        except (zoo.UnknownModelError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
    out = prepare_out_dir(options.out)

    import torch  # noqa: F401  (torch before TensorFlow in one process)

    from converters.export import export_model
    from converters.lint import enforce, lint_models
    from converters.port import port_onnx
    from parity.env import capture
    from parity.runners import make_runner
    from zoo.weights import randomize

    src, dst = options.source, OTHER[options.source]
    exporter = options.exporter or spec.torch_exporter
    inputs = spec.example_inputs(options.batch, options.seed)
    per_fw = {fw: spec.inputs_for(fw, inputs) for fw in ("torch", "tf")}

    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        work = out or Path(tmp)
        progress(f"building the {src} twin of {spec.name} ({spec.preset}) with seed {options.seed}")
        source_model = spec.build(src, options.seed)
        randomize(source_model, src, options.seed)
        files = {"torch": work / "torch.onnx", "tf": work / "tf.onnx"}
        kw = dict(input_names=spec.input_names, output_names=spec.output_names)
        progress(f"exporting it to ONNX ({exporter if src == 'torch' else 'tf2onnx'}"
                 f"{', lossless' if options.lossless and src == 'torch' else ''})")
        export_model(source_model, src, list(per_fw[src].values()), files[src], exporter=exporter,
                     lossless=options.lossless, **kw)
        target_model = spec.build(dst, options.seed + 1)
        findings = lint_models(source_model, target_model, list(per_fw[src].values()), list(per_fw[dst].values()))
        for f in findings:
            progress(f"semantic mismatch: {f.message}")
        enforce(findings, options.strict)
        progress(f"porting its weights into the {dst} twin through {files[src].name}")
        report = port_onnx(files[src], target_model, list(per_fw[dst].values()))
        progress(f"exporting the ported {dst} twin to ONNX")
        export_model(target_model, dst, list(per_fw[dst].values()), files[dst], exporter=exporter, **kw)
        weights = save_weights_atomic(target_model, dst, work) if out else None

        models = {"torch": source_model if src == "torch" else target_model,
                  "tf": source_model if src == "tf" else target_model}
        outputs: dict[str, dict[str, np.ndarray]] = {}
        runner_info: dict[str, Any] = {}
        opts = dict(device=options.device, threads=options.threads, precision=options.precision)
        plan = [("torch", "torch", models["torch"], "torch"), ("tf", "tf", models["tf"], "tf"),
                ("ort-torch", "ort", files["torch"], "torch"), ("ort-tf", "ort", files["tf"], "tf")]
        for label, kind, model, layout in plan:
            progress(f"running {label}")
            runner = make_runner(kind, **opts).prepare(model, spec.input_names, spec.output_names)
            outputs[label] = spec.outputs_from(layout, runner.run(per_fw[layout]))
            runner_info[label] = runner.describe()

        comparisons, tolerance = _compare_all(spec, options, outputs, src)
        result = CheckResult(
            model=spec.name, preset=spec.preset, source=src, target=dst,
            passed=all(comparisons), environment=capture(), comparisons=comparisons, tolerance=tolerance,
            port=report.to_dict(), runners=runner_info, lint=[f.to_dict() for f in findings],
            files={k: str(v) for k, v in {"torch_onnx": files["torch"], "tf_onnx": files["tf"],
                                          "weights": weights}.items() if out and v is not None},
        )
        if out:
            write_json_atomic(out / "port_report.json", report.to_dict())
            result.files["port_report"] = str(out / "port_report.json")
    return result


def _compare_all(spec: Any, options: CheckOptions, outputs: dict[str, dict[str, np.ndarray]],
                 src: str) -> tuple[list[Comparison], dict[str, Any]]:
    tol = spec.tolerance
    tf32 = options.precision == "tf32"
    reference = outputs[src]
    for name, value in reference.items():
        if not np.all(np.isfinite(value)):
            raise NonFiniteOutputError(
                f"the source ({src}) produced NaN or Inf in output {name!r}: the model or its inputs are broken, "
                "so nothing can be compared; check the weights and the input ranges"
            )
    comparisons = []
    info: dict[str, Any] = {"reason": tol.reason, "spec_atol": tol.atol, "spec_rtol": tol.rtol,
                            "scale_relative": tol.scale_relative and options.atol is None, "per_output": {}}
    for name, ref in reference.items():
        scale = float(np.abs(ref).max())
        atol = options.atol if options.atol is not None else tol.absolute(scale)
        rtol = options.rtol if options.rtol is not None else tol.rtol
        if tf32:  # TF32 keeps 10 mantissa bits (unit roundoff 4.9e-4): widen and say so
            atol, rtol = max(atol, 1e-3 * scale), max(rtol, 1e-3)
            info["widened_for_tf32"] = "atol >= 1e-3 x output scale, rtol >= 1e-3 (TF32 unit roundoff 4.9e-4)"
        info["per_output"][name] = {"atol": atol, "rtol": rtol, "output_scale": scale}
        for label in ("torch", "tf", "ort-torch", "ort-tf"):
            if label == src:
                continue
            comparisons.append(compare(outputs[label][name], ref, atol=atol, rtol=rtol, a=label, b=src, output=name))
    return comparisons, info


def format_table(result: CheckResult) -> str:
    head = (f"parity check {result.model} ({result.preset}): {result.source} -> {result.target}, "
            f"ported {len(result.port['layers'])} layers "
            f"({sum(1 for x in result.port['layers'] if x['status'] == 'exact')} exact)")
    cols = f"  {'a':<10}{'b':<7}{'output':<10}{'max_abs':>10}{'max_rel':>10}{'mean_abs':>10}{'cosine':>12}{'atol':>10}  verdict"
    rows = [head, cols]
    for c in result.comparisons:
        rows.append(f"  {c.a:<10}{c.b:<7}{c.output:<10}{c.max_abs:>10.2e}{c.max_rel:>10.2e}{c.mean_abs:>10.2e}"
                    f"{c.cosine:>12.8f}{c.atol:>10.2e}  {'ok' if c else 'FAIL'}")
    for c in result.failures:
        rows.append("  " + c.explain())
    for f in result.lint:
        rows.append("  semantic mismatch: " + f["message"])
    rows.append("PASSED" if result.passed else f"FAILED: {len(result.failures)} of {len(result.comparisons)} comparisons")
    return "\n".join(rows)
