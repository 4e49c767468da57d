"""`parity check`: port a zoo twin through ONNX and compare four runtimes against the source."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.files import atomic_path, write_json_atomic
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
    # a published checkpoint as the (torch) source instead of a seeded random twin; see converters.checkpoints
    checkpoint: Path | None = None
    texts: tuple[str, ...] = ()  # bert with a checkpoint: real texts, tokenised by the checkpoint's tokenizer
    # diagnostics (parity.diagnostics); layer-by-layer localisation also runs whenever a comparison fails
    layers: bool = False
    grads: bool = False
    train_steps: int = 0  # 0: no training-step parity
    optimizers: tuple[str, ...] = ("sgd", "adam")
    loss: str = "mse"  # for --grads and --train-steps: "mse" or "xent"
    plot: Path | None = None  # layer error against depth (implies layers)
    strict_tolerances: bool = False  # take tolerances as given: no growth with depth or steps


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
    checkpoint: dict[str, Any] = field(default_factory=dict)
    # every runtime's outputs in torch layout (and "embedding" for a bert checkpoint); not in the JSON
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    layers: dict[str, Any] | None = None  # parity.diagnostics.localize.LayerReport.to_dict()
    gradients: dict[str, Any] | None = None  # parity.diagnostics.grads.GradReport.to_dict()
    training: dict[str, Any] | None = None  # parity.diagnostics.training.TrainingReport.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "preset": self.preset, "source": self.source, "target": self.target,
            "passed": self.passed, "environment": self.environment,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "tolerance": self.tolerance, "port": self.port, "runners": self.runners,
            "files": self.files, "notes": self.notes, "lint": self.lint, "checkpoint": self.checkpoint,
            "layers": self.layers, "gradients": self.gradients, "training": self.training,
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


def save_weights_atomic(model: Any, framework: str, folder: Path) -> Path:
    """The ported weights in the framework's native format: safetensors or .weights.h5."""
    if framework == "torch":
        from safetensors.torch import save_file

        path = folder / "target.safetensors"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
    else:
        path = folder / "target.weights.h5"
        with atomic_path(path, suffix=".weights.h5") as tmp:
            tmp.unlink()  # Keras refuses to overwrite without asking
            model.save_weights(str(tmp))
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
    if options.checkpoint is None and options.texts:
        raise UsageError("--text/--text-file need --checkpoint DIR (the checkpoint's tokenizer tokenises them)")
    if options.checkpoint is not None and options.source != "torch":
        raise UsageError("--checkpoint imports a PyTorch checkpoint, so the source is torch: use --from torch")
    if spec is None and options.checkpoint is None:
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
    ckpt = _checkpoint_source(options, spec, progress) if options.checkpoint is not None else None
    spec = ckpt.spec if ckpt else spec
    exporter = options.exporter or spec.torch_exporter
    inputs = ckpt.inputs if ckpt else spec.example_inputs(options.batch, options.seed)
    per_fw = {fw: spec.inputs_for(fw, inputs) for fw in ("torch", "tf")}

    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        work = out or Path(tmp)
        if ckpt:  # trained weights: not randomized
            source_model = ckpt.model
        else:
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
        if ckpt and ckpt.pooling is not None:
            comparisons += _compare_embeddings(ckpt, outputs, src, tolerance)
        result = CheckResult(
            model=spec.name, preset=spec.preset, source=src, target=dst,
            passed=all(comparisons), environment=capture(), comparisons=comparisons, tolerance=tolerance,
            port=report.to_dict(), runners=runner_info, lint=[f.to_dict() for f in findings],
            files={k: str(v) for k, v in {"torch_onnx": files["torch"], "tf_onnx": files["tf"],
                                          "weights": weights}.items() if out and v is not None},
            checkpoint=ckpt.describe() if ckpt else {}, outputs=outputs,
            notes=ckpt.notes if ckpt else [],
        )
        from parity.diagnostics import diagnose

        diagnose(result, options, spec=spec, models=models, files=files, port=report, inputs=inputs, progress=progress)
        if out:
            write_json_atomic(out / "port_report.json", report.to_dict())
            result.files["port_report"] = str(out / "port_report.json")
    return result


@dataclass
class _Checkpoint:
    spec: Any
    model: Any
    inputs: dict[str, np.ndarray]
    imported: Any
    pooling: Any = None  # parity.check.text.Pooling for bert: sentence embeddings are compared too
    texts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        d = {"import": self.imported.to_dict(), "texts": self.texts}
        if self.pooling is not None:
            d["pooling"] = self.pooling.describe()
        return d


def _checkpoint_source(options: CheckOptions, spec: Any, progress: Callable[[str], None]) -> _Checkpoint:
    """The imported torch twin and its inputs; a given ``spec`` lends its builders (tests plant bugs so)."""
    import dataclasses

    from converters.checkpoints import FORMATS, HF_FORMAT, import_checkpoint
    from parity.check import text

    path = Path(options.checkpoint)  # type: ignore[arg-type]
    hf = FORMATS.get(options.model) == HF_FORMAT
    if options.texts and not hf:
        raise UsageError(f"--text/--text-file are for bert checkpoints, not {options.model!r}")
    progress(f"importing the checkpoint {path} into the {options.model} twin")
    batch = text.encode(path, options.texts) if options.texts else None
    if hf:
        imported = import_checkpoint(options.model, path, **({"seq_len": batch.seq_len} if batch else {}))
    else:
        imported = import_checkpoint(options.model, path, preset=options.preset)
    for line in imported.summary():
        progress(line.strip())
    ckpt_spec = imported.spec
    if spec is not None:
        ckpt_spec = dataclasses.replace(ckpt_spec, torch_builder=spec.torch_builder,
                                        keras_builder=spec.keras_builder)
    notes = [f"weights imported from {imported.path} ({imported.format}); not randomized", *imported.notes]
    if batch is not None:
        notes.append(f"{len(batch.texts)} texts tokenised with the checkpoint's tokenizer.json, padded to "
                     f"{batch.seq_len} tokens (truncation at {batch.max_length})")
        if batch.truncated:
            notes.append(f"texts {batch.truncated} were truncated to {batch.max_length} tokens")
        inputs = batch.inputs
    else:
        inputs = ckpt_spec.example_inputs(options.batch, options.seed)
    pooling = text.read_pooling(path) if hf else None
    if pooling is not None:
        notes.append(f"sentence embeddings: {pooling.describe()}")
    return _Checkpoint(spec=ckpt_spec, model=imported.model, inputs=inputs, imported=imported, pooling=pooling,
                       texts=batch.texts if batch else [], notes=notes)


def _compare_embeddings(ckpt: _Checkpoint, outputs: dict[str, dict[str, np.ndarray]], src: str,
                        info: dict[str, Any]) -> list[Comparison]:
    """Pool every runtime's last_hidden_state as the checkpoint declares and compare the embeddings."""
    from parity.check.text import EMBEDDING_TOLERANCE, MIN_COSINE, compare_embeddings, pool

    mask = ckpt.inputs["attention_mask"]
    for label in outputs:
        outputs[label]["embedding"] = pool(outputs[label]["last_hidden_state"], mask, ckpt.pooling)
    info["embedding"] = {"atol": EMBEDDING_TOLERANCE.atol, "min_cosine_per_sentence": MIN_COSINE,
                         "reason": EMBEDDING_TOLERANCE.reason, "pooling": ckpt.pooling.describe()}
    return [compare_embeddings(outputs[label]["embedding"], outputs[src]["embedding"], a=label, b=src)
            for label in ("torch", "tf", "ort-torch", "ort-tf") if label != src]


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
    w = max([len("output"), *(len(c.output) for c in result.comparisons)]) + 2
    cols = f"  {'a':<10}{'b':<7}{'output':<{w}}{'max_abs':>10}{'max_rel':>10}{'mean_abs':>10}{'cosine':>12}{'atol':>10}  verdict"
    rows = [head, cols]
    for c in result.comparisons:
        rows.append(f"  {c.a:<10}{c.b:<7}{c.output:<{w}}{c.max_abs:>10.2e}{c.max_rel:>10.2e}{c.mean_abs:>10.2e}"
                    f"{c.cosine:>12.8f}{c.atol:>10.2e}  {'ok' if c else 'FAIL'}")
    for c in result.failures:
        rows.append("  " + c.explain())
    for f in result.lint:
        rows.append("  semantic mismatch: " + f["message"])
    rows += [f"  note: {n}" for n in result.notes]
    rows.append("PASSED" if result.passed else f"FAILED: {len(result.failures)} of {len(result.comparisons)} comparisons"
                if result.failures else "FAILED: the outputs agree; a requested diagnostic does not (see below)")
    return "\n".join(rows)
