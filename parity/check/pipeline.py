"""`parity check`: port a zoo twin through ONNX and compare four runtimes against the source.

The port itself is ``converters.port.port_model`` (the one pipeline, shared with
``parity port`` and the API); results are typed (``parity.check.results``), the checkpoint
source is in ``parity.check.sources``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters.files import atomic_path, write_json_atomic
from parity.check.results import COMPARE_ONLY, CheckOptions, CheckResult
from parity.check.user import UserPair
from parity.compare import Comparison, compare
from parity.errors import NonFiniteOutputError, UsageError

OTHER = {"torch": "tf", "tf": "torch"}
# What `parity check --runtimes` may name (run in this order), and what runs by default.
CHECK_RUNTIMES = ("torch", "tf", "keras-jax", "keras-torch", "ort-torch", "ort-tf")
DEFAULT_RUNTIMES = ("torch", "tf", "ort-torch", "ort-tf")


def check_runtimes(requested: tuple[str, ...] | None, source: str) -> tuple[str, ...]:
    """The runtimes to run, in canonical order; the source's own runtime is the reference, so it must be one."""
    if not requested:
        return DEFAULT_RUNTIMES
    unknown = [r for r in requested if r not in CHECK_RUNTIMES]
    if unknown:
        raise UsageError(f"--runtimes: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(CHECK_RUNTIMES)} "
                         "(comma separated)")
    if source not in requested:
        raise UsageError(f"--runtimes {','.join(requested)}: the source ({source}) is the reference every other "
                         f"runtime is compared with; add {source}")
    if len(requested) < 2:
        raise UsageError(f"--runtimes {','.join(requested)}: name at least one runtime besides the source to compare")
    return tuple(r for r in CHECK_RUNTIMES if r in requested)


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


def run_check(options: CheckOptions, *, spec: Any = None, user: UserPair | None = None,
              progress: Callable[[str], None] = _progress) -> CheckResult:
    """Export, port, run and compare; return the typed result.

    Three sources: a zoo model (``options.model``), whose twins are built here and whose
    source twin's weights are randomised with ``options.seed`` (they are the zoo's own,
    freshly built); a published checkpoint (``options.checkpoint``), imported and not
    randomised; or a user pair (``user``, see ``parity.check_models``), whose source model
    is never modified: with ``options.port`` the target's weights are replaced by the
    port, without it both models are compared as they are. ``spec`` overrides the zoo
    lookup (tests plant bugs this way).
    """
    import zoo

    if options.source not in OTHER:
        raise UsageError(f"--from must be 'torch' or 'tf', got {options.source!r}")
    if options.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {options.batch}")
    if options.checkpoint is None and options.texts:
        raise UsageError("--text/--text-file need --checkpoint DIR (the checkpoint's tokenizer tokenises them)")
    if options.checkpoint is not None and options.source != "torch":
        raise UsageError("--checkpoint imports a PyTorch checkpoint, so the source is torch: use --from torch")
    if user is None and not options.port:
        raise UsageError("compare-only (no port) needs two models of your own; a zoo twin is ported from its source")
    if user is not None and user.source_framework != options.source:
        raise UsageError(f"the user pair's source is a {user.source_framework} model, options say {options.source}")
    if spec is None and options.checkpoint is None and user is None:
        try:
            spec = zoo.get(options.model, preset=options.preset)
        except (zoo.UnknownModelError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
    runtimes = check_runtimes(options.runtimes, options.source)
    out = prepare_out_dir(options.out)

    import torch  # noqa: F401  (torch before TensorFlow in one process)

    from parity.runners import check_device

    check_device(options.device)  # an absent GPU is refused before minutes of export and port

    from converters.export import export_model
    from converters.port import port_model
    from converters.report import PortReport
    from parity.check.sources import checkpoint_source, compare_checkpoint_embeddings
    from parity.env import capture
    from parity.runners import make_runner
    from parity.runners.keras_backend import BackendUnavailableError
    from zoo.weights import randomize

    src, dst = options.source, OTHER[options.source]
    ckpt = checkpoint_source(options, spec, progress) if options.checkpoint is not None else None
    spec = user.spec if user else ckpt.spec if ckpt else spec
    exporter = options.exporter or spec.torch_exporter
    inputs = user.inputs if user else ckpt.inputs if ckpt else spec.example_inputs(options.batch, options.seed)
    per_fw = {fw: spec.inputs_for(fw, inputs) for fw in ("torch", "tf")}  # each in its framework's order
    names = {fw: list(arrays) for fw, arrays in per_fw.items()}

    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        work = out or Path(tmp)
        if user:  # the user's models, as given: never randomised
            source_model, target_model = user.source, user.target
            laid = ", ".join(f"{n} {d['layout']}" for n, d in user.described["inputs"].items())
            progress(f"checking your {src} model {spec.name.split('/')[0]} against your {dst} model "
                     f"{spec.name.split('/')[-1]} (inputs {laid}; {'port' if options.port else 'compare only'})")
        elif ckpt:  # trained weights: not randomized
            source_model, target_model = ckpt.model, spec.build(dst, options.seed + 1)
        else:
            progress(f"building the {src} twin of {spec.name} ({spec.preset}) with seed {options.seed}")
            source_model = spec.build(src, options.seed)
            randomize(source_model, src, options.seed)
            target_model = spec.build(dst, options.seed + 1)
        files = {"torch": work / "torch.onnx", "tf": work / "tf.onnx"}
        if options.port:
            report = port_model(source_model, target_model, list(per_fw[src].values()), list(per_fw[dst].values()),
                                onnx_path=files[src], exporter=exporter, lossless=options.lossless,
                                strict=options.strict, input_names=names[src], output_names=spec.output_names,
                                progress=progress)
        else:
            progress(f"exporting the {src} model to ONNX (compare only: no weights are ported)")
            export_model(source_model, src, list(per_fw[src].values()), files[src], exporter=exporter,
                         input_names=names[src], output_names=spec.output_names, lossless=options.lossless)
            report = PortReport(source=COMPARE_ONLY, target_framework=dst)
        if user and user.problem:
            raise UsageError(user.problem)
        progress(f"exporting the {'ported ' if options.port else ''}{dst} model to ONNX")
        export_model(target_model, dst, list(per_fw[dst].values()), files[dst], exporter=exporter,
                     input_names=names[dst], output_names=spec.output_names)
        weights = save_weights_atomic(target_model, dst, work) if out and options.port else None

        models = {"torch": source_model if src == "torch" else target_model,
                  "tf": source_model if src == "tf" else target_model}
        outputs: dict[str, dict[str, np.ndarray]] = {}
        runner_info: dict[str, Any] = {}
        opts = dict(device=options.device, threads=options.threads, precision=options.precision)
        # ONNX Runtime is fed by name: the session's own input names, which the exports were given
        plan = {"torch": ("torch", models["torch"], "torch", names["torch"]),
                "tf": ("tf", models["tf"], "tf", names["tf"]),
                # the Keras twin on Keras 3's other backends, each in a worker process of its own
                "keras-jax": ("keras-jax", models["tf"], "tf", names["tf"]),
                "keras-torch": ("keras-torch", models["tf"], "tf", names["tf"]),
                "ort-torch": ("ort", files["torch"], "torch", None), "ort-tf": ("ort", files["tf"], "tf", None)}
        skipped: list[str] = []
        for label in runtimes:
            kind, model, layout, in_names = plan[label]
            progress(f"running {label}")
            try:
                runner = make_runner(kind, **opts).prepare(model, in_names, spec.output_names)
                outputs[label] = spec.outputs_from(layout, runner.run(per_fw[layout]))
            except BackendUnavailableError as exc:  # a Keras backend not installed here: skipped, with why
                skipped.append(f"{label} skipped: {exc}")
                runner_info[label] = {"runner": label, "skipped": str(exc)}
                continue
            runner_info[label] = runner.describe()

        comparisons, tolerance = _compare_all(spec, options, outputs, src)
        if ckpt and ckpt.pooling is not None:
            comparisons += compare_checkpoint_embeddings(ckpt, outputs, src, tolerance)
        result = CheckResult(
            model=spec.name, preset=spec.preset, source=src, target=dst,
            passed=all(comparisons), environment=capture(), comparisons=comparisons, tolerance=tolerance,
            port=report, runners=runner_info,
            files={k: str(v) for k, v in {"torch_onnx": files["torch"], "tf_onnx": files["tf"],
                                          "weights": weights}.items() if out and v is not None},
            checkpoint=ckpt.describe() if ckpt else {}, outputs=outputs,
            notes=[*(ckpt.notes if ckpt else list(user.notes) if user else []), *skipped],
            ported=options.port, pair=user.described if user else {},
        )
        if options.save_outputs is not None:
            result.files["outputs"] = str(save_outputs(options.save_outputs, spec, outputs, src))
        from parity.diagnostics import diagnose

        diagnose(result, options, spec=spec, models=models, files=files, port=report, inputs=inputs, progress=progress)
        if out and options.port:
            write_json_atomic(out / "port_report.json", report.to_dict())
            result.files["port_report"] = str(out / "port_report.json")
    return result


def save_outputs(path: Path, spec: Any, outputs: dict[str, dict[str, np.ndarray]], source: str) -> Path:
    """Every runtime's outputs in the source's layout, keyed ``runtime/output``, written atomically."""
    layout = {o.name: o for o in spec.outputs}
    arrays = {f"{label}/{name}": (layout[name].to_framework(value, source) if name in layout else value)
              for label, values in outputs.items() for name, value in values.items()}
    try:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
    except OSError as exc:
        raise UsageError(f"--save-outputs {path}: cannot write it ({exc.strerror or exc})") from exc
    return path


def _compare_all(spec: Any, options: CheckOptions, outputs: dict[str, dict[str, np.ndarray]],
                 src: str) -> tuple[list[Comparison], dict[str, Any]]:
    from zoo.spec import XLA_RUNTIMES, XLA_TOLERANCE_FACTOR, XLA_TOLERANCE_REASON

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
        for label in outputs:
            if label == src:
                continue
            xla = label in XLA_RUNTIMES  # held to the same bound, for the reason written in zoo/spec.py
            if xla:
                info["xla"] = XLA_TOLERANCE_REASON
            comparisons.append(compare(outputs[label][name], ref, atol=atol * XLA_TOLERANCE_FACTOR if xla else atol,
                                       rtol=rtol, a=label, b=src, output=name))
    return comparisons, info
