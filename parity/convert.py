"""``convert_zoo`` / ``convert_models``: generate the twin of a model in the other framework as
readable source (``converters.codegen``), port the weights into it, and prove it equal.

The output folder holds ``model.py`` (the twin), its weights in the target's native format
(``model.safetensors`` / ``model.weights.h5``), ``source.onnx`` (what it was generated from),
``port_report.json`` and ``parity.json`` (the check of the twin against the source on torch,
tf, ort-torch and ort-tf). It is written into a temporary folder and renamed into place.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.files import write_json_atomic
from parity.check.results import CheckOptions, CheckResult
from parity.errors import UsageError

OTHER = {"torch": "tf", "tf": "torch"}
WEIGHTS = {"torch": "model.safetensors", "tf": "model.weights.h5"}


@dataclass(frozen=True)
class ConvertResult:
    out: Path
    code: str
    result: CheckResult
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # parity.json: every path final

    @property
    def passed(self) -> bool:
        return self.result.passed


def _quiet(message: str) -> None:
    pass


def _finish(stage: Path, out: Path, target: str, result: CheckResult) -> dict[str, Any]:
    """Move the check's ported weights and report next to model.py; write parity.json (returned).

    Every path the check stored pointed into the staging folder: each becomes the file's final
    path in ``out`` (the check's export of the source is ``source.onnx`` when byte-identical), and
    a file that does not survive (the check's own exports) is dropped (``null``)."""
    import json

    check = stage / "check"
    final = {"source.onnx": "source.onnx", "model.py": "model.py"}
    moves = {"target.safetensors" if target == "torch" else "target.weights.h5": WEIGHTS[target],
             "port_report.json": "port_report.json"}
    for name, dest in moves.items():
        if (check / name).exists():
            (check / name).rename(stage / dest)
            final[f"check/{name}"] = dest
    source = (stage / "source.onnx").read_bytes() if (stage / "source.onnx").exists() else b""
    for onnx_file in check.glob("*.onnx") if check.is_dir() else ():
        if source and onnx_file.read_bytes() == source:
            final[f"check/{onnx_file.name}"] = "source.onnx"
    shutil.rmtree(check, ignore_errors=True)
    data = _final_paths(result.to_dict(), stage, Path(out).resolve(), final)
    data["files"] = {k: v for k, v in data["files"].items() if v is not None}
    write_json_atomic(stage / "parity.json", data)
    if (stage / "port_report.json").exists():
        report = json.loads((stage / "port_report.json").read_text())
        write_json_atomic(stage / "port_report.json", _final_paths(report, stage, Path(out).resolve(), final))
    return data


def _final_paths(data: Any, stage: Path, out: Path, final: dict[str, str]) -> Any:
    """``data`` with each path into ``stage`` replaced by its final path in ``out``, or None."""
    if isinstance(data, dict):
        return {k: _final_paths(v, stage, out, final) for k, v in data.items()}
    if isinstance(data, list):
        return [_final_paths(v, stage, out, final) for v in data]
    if isinstance(data, str):
        for root in {str(stage), str(stage.resolve())}:
            if data.startswith(root + "/"):
                kept = final.get(Path(data).relative_to(root).as_posix())
                return str(out / kept) if kept else None
    return data


def convert_zoo(model: str, out: str | Path, *, source: str = "torch", preset: str = "small", seed: int = 0,
                batch: int = 2, layers: bool = False, grads: bool = False, train_steps: int = 0,
                exporter: str | None = None, overwrite: bool = False, fold_batchnorm: bool = False,
                progress: Callable[[str], None] | None = None) -> ConvertResult:
    """Generate the ``OTHER[source]`` twin of zoo ``model`` from its ``source`` twin into ``out``
    (``fold_batchnorm``: the serving twin, see ``parity.serving``)."""
    import zoo
    from converters.codegen import generate, keras_hints
    from converters.codegen.files import load_model_module, staged_folder
    from converters.export import export_model
    from parity.check.pipeline import run_check
    from zoo.weights import randomize

    say = progress or _quiet
    if source not in OTHER:
        raise UsageError(f"--from must be 'torch' or 'tf', got {source!r}")
    if fold_batchnorm:
        from parity.serving import refuse_training

        refuse_training(layers, grads, train_steps)
    try:
        spec = zoo.get(model, preset=preset)
    except (zoo.UnknownModelError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    target = OTHER[source]
    import torch  # noqa: F401  (torch before TensorFlow in one process)

    with staged_folder(out, overwrite) as stage:
        say(f"building the {source} twin of {spec.name} ({preset}) with seed {seed}")
        source_model = spec.build(source, seed)
        randomize(source_model, source, seed)
        inputs = spec.inputs_for(source, spec.example_inputs(batch, seed))
        say("exporting it to ONNX")
        export_model(source_model, source, list(inputs.values()), stage / "source.onnx", input_names=list(inputs),
                     output_names=spec.output_names, exporter=exporter or spec.torch_exporter, lossless=True)
        if fold_batchnorm:  # BatchNorm folded into the convolutions: generated, ported, folded, checked as it is
            from parity.serving import serve_zoo

            twin, result = serve_zoo(stage, spec, source_model, inputs, source=source, batch=batch, seed=seed, say=say)
            return ConvertResult(Path(out), twin.generated.code, result, _finish(stage, Path(out), target, result))
        say(f"generating the {'Keras' if target == 'tf' else 'PyTorch'} twin's source")
        spatial = {s.name for s in spec.inputs if s.layout in ("NCHW", "NCL")}
        generated = generate(stage / "source.onnx", target, model=spec.name, spatial_inputs=spatial,
                             origin=f"zoo model {spec.name} ({preset}), its {source} twin",
                             hints=keras_hints(source_model) if source == "tf" else None)
        (stage / "model.py").write_text(generated.code)
        module = load_model_module(stage / "model.py")
        builder = {"torch_builder" if target == "torch" else "keras_builder": lambda cfg: module.build_model()}
        twin_spec = dataclasses.replace(spec, **builder)
        options = CheckOptions(model=spec.name, source=source, preset=preset, batch=batch, seed=seed,
                               exporter=exporter, out=stage / "check", layers=layers, grads=grads,
                               train_steps=train_steps)
        result = run_check(options, spec=twin_spec, progress=say)
        data = _finish(stage, Path(out), target, result)
    return ConvertResult(Path(out), generated.code, result, data)


def convert_models(source_model: Any, inputs: Any, out: str | Path, *, name: str = "",
                   input_layouts: dict[str, str] | None = None, layers: bool = False, grads: bool = False,
                   train_steps: int = 0, batch: int = 2, seed: int = 0, overwrite: bool = False,
                   fold_batchnorm: bool = False, progress: Callable[[str], None] | None = None) -> ConvertResult:
    """Generate the twin of your own torch or Keras model in the other framework into ``out``.

    ``inputs``: as for ``parity.check_models`` (arrays or shapes, in the source's layout);
    ``input_layouts``: each spatial input's torch-side layout (``{"x": "NCHW"}``). ``name``: the
    model's name in the generated code (default: the torch class's or the Keras model's).
    """
    import numpy as np

    from converters.codegen import generate, keras_hints
    from converters.codegen.files import load_model_module, staged_folder
    from converters.export import export_model
    from parity.api import check_pair
    from parity.check.user_inputs import framework_of

    say = progress or _quiet
    source = framework_of(source_model)
    if fold_batchnorm:
        from parity.serving import refuse_training

        refuse_training(layers, grads, train_steps)
    target = OTHER[source]
    name = name or (source_model.name if source == "tf" else type(source_model).__name__)
    from zoo.spec import TensorSpec

    rng = np.random.default_rng(seed)
    arrays = {}
    for key, value in (inputs.items() if isinstance(inputs, dict) else enumerate(inputs)):
        spec = value if isinstance(value, TensorSpec) else TensorSpec(str(key), value) if isinstance(value, tuple) \
            else None
        if spec is not None:  # a shape without the batch: seeded values (ids 0 or 1 for an integer input)
            shape = (batch, *spec.shape)
            value = rng.integers(0, 2, shape) if np.dtype(spec.dtype).kind in "iub" else rng.uniform(-1, 1, shape)
            value = value.astype(spec.dtype)
        arrays[str(key)] = np.asarray(value)
    layouts = dict(input_layouts or {})
    with staged_folder(out, overwrite) as stage:
        say(f"exporting your {source} model to ONNX")
        export_model(source_model, source, list(arrays.values()), stage / "source.onnx", input_names=list(arrays),
                     output_names=[f"output_{k}" for k in range(_outputs(source_model, source))], lossless=True)
        spatial = {n for n, a in arrays.items() if layouts.get(n) in ("NCHW", "NCL") or
                   (n not in layouts and a.ndim == 4 and a.dtype.kind == "f")}
        for n in spatial:
            layouts.setdefault(n, "NCHW" if arrays[n].ndim == 4 else "NCL")
        if fold_batchnorm:  # BatchNorm folded into the convolutions: generated, ported, folded, checked as it is
            from parity.serving import serve_user

            twin, result = serve_user(stage, source_model, arrays, name=name, spatial=spatial, layouts=layouts,
                                      batch=batch, seed=seed, say=say)
            return ConvertResult(Path(out), twin.generated.code, result, _finish(stage, Path(out), target, result))
        generated = generate(stage / "source.onnx", target, model=name, spatial_inputs=spatial,
                             origin=f"your {source} model {name}",
                             hints=keras_hints(source_model) if source == "tf" else None)
        (stage / "model.py").write_text(generated.code)
        twin = load_model_module(stage / "model.py").build_model()
        options = CheckOptions(model="", source=source, batch=batch, seed=seed, out=stage / "check", layers=layers,
                               grads=grads, train_steps=train_steps)
        result = check_pair(source_model, twin, arrays, options, input_layouts=layouts or None, progress=say)
        data = _finish(stage, Path(out), target, result)
    return ConvertResult(Path(out), generated.code, result, data)


def convert_checkpoint(model: str, checkpoint: str | Path, out: str | Path, *, texts: tuple[str, ...] = (),
                       batch: int = 2, seed: int = 0, layers: bool = False, grads: bool = False,
                       train_steps: int = 0, overwrite: bool = False,
                       progress: Callable[[str], None] | None = None) -> ConvertResult:
    """Generate the Keras twin of a published torch checkpoint (``parity import`` formats), imported into
    the zoo's ``model`` twin, and check it as ``parity check --checkpoint`` does: with ``texts`` (bert), on
    the checkpoint's own tokenisation, including the sentence embeddings its users see."""
    from converters.codegen import generate
    from converters.codegen.files import load_model_module, staged_folder
    from converters.export import export_model
    from parity.check.pipeline import run_check
    from parity.check.sources import checkpoint_source

    say = progress or _quiet
    import torch  # noqa: F401  (torch before TensorFlow in one process)

    options = CheckOptions(model=model, source="torch", preset="standard", batch=batch, seed=seed,
                           checkpoint=Path(checkpoint), texts=tuple(texts), layers=layers, grads=grads,
                           train_steps=train_steps)
    with staged_folder(out, overwrite) as stage:
        ckpt = checkpoint_source(options, None, say)
        inputs = ckpt.spec.inputs_for("torch", ckpt.inputs)
        say("exporting it to ONNX")
        export_model(ckpt.model, "torch", list(inputs.values()), stage / "source.onnx", input_names=list(inputs),
                     output_names=ckpt.spec.output_names, exporter=ckpt.spec.torch_exporter, lossless=True)
        say("generating the Keras twin's source")
        generated = generate(stage / "source.onnx", "tf", model=ckpt.spec.name,
                             origin=f"checkpoint {Path(checkpoint).name} in the zoo's {model} torch twin")
        (stage / "model.py").write_text(generated.code)
        module = load_model_module(stage / "model.py")
        twin_spec = dataclasses.replace(ckpt.spec, keras_builder=lambda cfg: module.build_model())
        result = run_check(dataclasses.replace(options, out=stage / "check"), spec=twin_spec, progress=say)
        data = _finish(stage, Path(out), "tf", result)
    return ConvertResult(Path(out), generated.code, result, data)


def _outputs(model: Any, framework: str) -> int:
    return len(model.outputs) if framework == "tf" else 1


# A file has no source model to run: the twin is compared with ONNX Runtime on the file itself, at the
# default tolerance of a user pair (1e-5 of the output scale; its reason is DEFAULT_TOLERANCE's).
@dataclass(frozen=True)
class OnnxConvertResult:
    out: Path
    code: str
    comparisons: list[Any]

    @property
    def passed(self) -> bool:
        return all(self.comparisons)


def _copy_onnx(path: str | Path, dest: Path) -> None:
    """Check the user's file (errors name it) and copy it; one with external data (read only from its
    own folder) is written as one file, its tensors inline."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    from converters.graph import load_onnx

    model = load_onnx(path)
    if any(uses_external_data(t) for t in _get_all_tensors(onnx.load(str(path), load_external_data=False))):
        onnx.save_model(model, str(dest))
    else:
        shutil.copyfile(path, dest)


def convert_onnx(path: str | Path, target: str, out: str | Path, *, spatial_inputs: set[str] | None = None,
                 batch: int = 2, seed: int = 0, overwrite: bool = False,
                 progress: Callable[[str], None] | None = None) -> OnnxConvertResult:
    """Generate the ``target`` ('tf' or 'torch') twin of the model in the ONNX file ``path`` into ``out``,
    port the file's weights into it, and compare it with ONNX Runtime on the file (seeded inputs)."""
    import numpy as np

    from converters.codegen import generate
    from converters.codegen.files import load_model_module, staged_folder
    from converters.port import port_onnx
    from parity.check.pipeline import save_weights_atomic
    from parity.check.user import DEFAULT_TOLERANCE
    from parity.compare import compare

    say = progress or _quiet
    if target not in OTHER:
        raise UsageError(f"--to must be 'torch' or 'tf', got {target!r}")
    import torch  # noqa: F401  (torch before TensorFlow in one process)

    with staged_folder(out, overwrite) as stage:
        _copy_onnx(path, stage / "source.onnx")
        say(f"generating the {'Keras' if target == 'tf' else 'PyTorch'} twin of {Path(path).name}")
        generated = generate(stage / "source.onnx", target, model=Path(path).stem, spatial_inputs=spatial_inputs,
                             origin=Path(path).name)
        (stage / "model.py").write_text(generated.code)
        twin = load_model_module(stage / "model.py").build_model()
        rng = np.random.default_rng(seed)
        feeds, native = {}, []
        for given in generated.program.inputs:
            shape = (batch, *(d or 1 for d in given.shape))
            kind = np.dtype(given.dtype).kind
            value = rng.integers(0, 2, shape) if kind in "iu" else rng.uniform(-1, 1, shape)
            native.append(value.astype(given.dtype))
            perm = _input_perm(generated.program, given.name)
            feeds[given.name] = np.ascontiguousarray(native[-1].transpose(perm))
        say("porting the file's weights into it")
        report = port_onnx(stage / "source.onnx", twin, native if target == "torch" else None)
        weights = save_weights_atomic(twin, target, stage)
        weights.rename(stage / WEIGHTS[target])
        write_json_atomic(stage / "port_report.json", report.to_dict())
        import onnxruntime as ort

        session = ort.InferenceSession(str(stage / "source.onnx"), providers=["CPUExecutionProvider"])
        want = session.run(None, feeds)
        got = _run_twin(twin, target, native)
        comparisons = []
        for (var, name), expected, actual in zip(generated.program.outputs, want, got, strict=True):
            perm = _output_perm(generated.program, var, expected.ndim)
            actual = np.asarray(actual).transpose(perm)
            atol = DEFAULT_TOLERANCE.absolute(float(np.abs(expected).max()))
            comparisons.append(compare(actual, expected, atol=atol, rtol=DEFAULT_TOLERANCE.rtol,
                                       a=target, b="ort-source", output=name))
        write_json_atomic(stage / "parity.json", {
            "source": Path(path).name, "target": target, "passed": all(comparisons),
            "tolerance": {"atol": DEFAULT_TOLERANCE.atol, "rtol": DEFAULT_TOLERANCE.rtol,
                          "reason": DEFAULT_TOLERANCE.reason},
            "comparisons": [c.to_dict() for c in comparisons]})
    return OnnxConvertResult(Path(out), generated.code, comparisons)


def _input_perm(program: Any, name: str) -> tuple[int, ...]:
    """How the twin's input variable maps to the file's input (``t = v.transpose(p)``)."""
    return next(perm for n, perm in program.input_perms if n == name)


def _output_perm(program: Any, var: str, rank: int) -> tuple[int, ...]:
    return program.output_perms.get(var, tuple(range(rank)))


def _run_twin(twin: Any, target: str, inputs: list[Any]) -> list[Any]:
    if target == "tf":
        out = twin(inputs if len(inputs) > 1 else inputs[0], training=False)
        return [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]
    import torch

    with torch.no_grad():
        out = twin.eval()(*(torch.from_numpy(a) for a in inputs))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
