"""``parity convert --fold-batchnorm``: the generated twin for serving, with BatchNorm folded away.

The full twin is generated and ported as usual (in memory), its BatchNorms are folded into the
convolutions before them (``converters.fold_batchnorm``), and the folded weights go into the
serving ``model.py`` (``converters.codegen.serving``: one layer per folded pair). The check then
compares the serving twin with the source as it is (no second port) on every runtime, at the
source's tolerances. Gradients and training steps are refused: a folded twin is a different model
once it trains (its BatchNorm statistics and affine are gone).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.fold_batchnorm import SERVING_NOTE
from parity.errors import UsageError

__all__ = ["SERVING_NOTE", "ServingTwin", "check_serving", "refuse_training", "serve_user", "serve_zoo", "serving_twin",
           "write_serving_copy"]


def refuse_training(layers: bool, grads: bool, train_steps: int) -> None:
    """--fold-batchnorm with --layers/--grads/--train-steps is a usage error, said plainly."""
    asked = [flag for flag, on in (("--layers", layers), ("--grads", grads), ("--train-steps", train_steps)) if on]
    if asked:
        raise UsageError(f"--fold-batchnorm writes an inference-only twin (BatchNorm folded into convolutions; for "
                         f"serving, not training), so {' and '.join(asked)} cannot be compared: a folded "
                         "convolution's output is its BatchNorm's, and its gradients and training steps are a "
                         "different model's. Leave out --fold-batchnorm to check those on the full twin")


@dataclass(frozen=True)
class ServingTwin:
    model: Any  # the serving twin built from model.py, with the folded weights
    generated: Any  # converters.codegen.Generated of model.py (the serving program)
    pairs: list[tuple[str, str]]  # (convolution, batchnorm) folded, by layer name
    report: Any  # the port report of the full twin the weights were folded from

    @property
    def notes(self) -> list[str]:
        """What the check's notes say: the twin is for serving, and which pairs were folded."""
        if not self.pairs:
            return [f"{SERVING_NOTE} (no BatchNorm follows a convolution here: nothing was folded)"]
        return [f"{SERVING_NOTE} ({len(self.pairs)} BatchNorm{'s' if len(self.pairs) != 1 else ''} folded)",
                "folded (BatchNorm -> convolution): " + ", ".join(f"{bn} -> {conv}" for conv, bn in self.pairs)]


def serving_twin(stage: Path, target: str, *, model: str, origin: str, spatial_inputs: set[str] | None,
                 hints: dict[str, dict[str, Any]] | None, target_inputs: list[Any] | None,
                 say: Callable[[str], None]) -> ServingTwin:
    """Generate the serving ``stage / "model.py"`` from ``stage / "source.onnx"`` and fill its weights.

    ``target_inputs``: example inputs of a torch twin (the porter traces it); None for Keras."""
    from converters.codegen.files import load_model_module
    from converters.codegen.serving import generate_serving
    from converters.fold_batchnorm import fold_keras, fold_torch
    from converters.port import port_onnx

    full, serving, pairs = generate_serving(stage / "source.onnx", target, model=model, origin=origin,
                                            spatial_inputs=spatial_inputs, hints=hints)
    (stage / "model.py").write_text(serving.code)
    with tempfile.TemporaryDirectory(prefix="parity-full-twin-") as tmp:
        (Path(tmp) / "model.py").write_text(full.code)
        twin = load_model_module(Path(tmp) / "model.py").build_model()
    say("porting the source's weights into the full twin")
    report = port_onnx(stage / "source.onnx", twin, target_inputs if target == "torch" else None)
    say(f"folding {len(pairs)} BatchNorms into the convolutions before them")
    named = _torch_attributes(full.program) if target == "torch" else {}
    want = sorted((named.get(conv, conv), named.get(bn, bn)) for conv, bn in pairs)  # the model's own names
    folded, done = (fold_torch if target == "torch" else fold_keras)(twin, {bn for _, bn in want})
    if sorted(done) != want:  # the program and the model disagree on what follows what: our bug
        raise AssertionError(f"the generated serving program folds {want}, the twin folded {sorted(done)}")
    serving_model = load_model_module(stage / "model.py").build_model()
    _copy_weights(folded, serving_model, target)
    return ServingTwin(serving_model, serving, pairs, report)


def _torch_attributes(program: Any) -> dict[str, str]:
    """Each layer's attribute in the generated torch module (``layer1.0.bn1`` -> ``layer1_0_bn1``), as
    ``converters.codegen.torch_emit`` names them."""
    from converters.codegen.naming import Unique, identifier

    unique = Unique({"forward", "training"})
    return {op.name: unique(identifier(op.name)) for op in program.layers()}


def _copy_weights(folded: Any, serving: Any, target: str) -> None:
    """The folded twin's weights into the serving twin, layer by layer (same names, same shapes)."""
    if target == "torch":
        state = {k: v for k, v in folded.state_dict().items()}
        serving.load_state_dict(state, strict=True)
        serving.eval()
        return
    from converters.targets.keras_target import leaf_layers

    have = {layer.name: layer for layer in leaf_layers(folded) if layer.weights}
    want = {layer.name: layer for layer in leaf_layers(serving) if layer.weights}
    if set(have) != set(want):
        raise AssertionError(f"serving twin layers {sorted(set(want) ^ set(have))} are not in both models")
    for name, layer in want.items():
        layer.set_weights(have[name].get_weights())


def check_serving(source_model: Any, twin: ServingTwin, stage: Path, arrays: dict[str, Any], *, target: str,
                  batch: int, seed: int, layouts: dict[str, str] | None, tolerance: Any,
                  output_names: list[str] | None, say: Callable[[str], None]) -> Any:
    """Check the serving twin against the source as it is (its weights are already in); keep its
    weights and the full twin's port report in ``stage / "check"`` as a ported check does."""
    from converters.files import write_json_atomic
    from parity.api import check_pair
    from parity.check.pipeline import save_weights_atomic
    from parity.check.results import CheckOptions
    from parity.check.user_inputs import framework_of

    options = CheckOptions(model="", source=framework_of(source_model), batch=batch, seed=seed, out=stage / "check",
                           port=False)
    result = check_pair(source_model, twin.model, arrays, options, input_layouts=layouts or None, tolerance=tolerance,
                        output_names=output_names, progress=say)
    # where a ported check keeps them: parity.convert moves both beside model.py and rewrites the paths
    result.files["weights"] = str(save_weights_atomic(twin.model, target, stage / "check"))
    write_json_atomic(stage / "check" / "port_report.json", twin.report.to_dict())
    result.files["port_report"] = str(stage / "check" / "port_report.json")
    result.port, result.ported = twin.report, True  # ported into the full twin, then folded (the note says so)
    result.notes.extend(twin.notes)
    return result


def serve_zoo(stage: Path, spec: Any, source_model: Any, inputs: dict[str, Any], *, source: str, batch: int,
              seed: int, say: Callable[[str], None]) -> tuple[ServingTwin, Any]:
    """The serving twin of a zoo model (``stage / "source.onnx"`` exported) and its check at the zoo's tolerance."""
    from converters.codegen import keras_hints

    target = "tf" if source == "torch" else "torch"
    spatial = {s.name for s in spec.inputs if s.layout in ("NCHW", "NCL")}
    say(f"generating the {'Keras' if target == 'tf' else 'PyTorch'} serving twin's source")
    twin = serving_twin(stage, target, model=spec.name, origin=f"zoo model {spec.name} ({spec.preset}), its {source} twin",
                        spatial_inputs=spatial, hints=keras_hints(source_model) if source == "tf" else None,
                        target_inputs=list(spec.inputs_for(target, spec.example_inputs(batch, seed)).values()), say=say)
    layouts = {s.name: s.layout for s in spec.inputs if s.layout in ("NCHW", "NCL")}
    result = check_serving(source_model, twin, stage, dict(inputs), target=target, batch=batch, seed=seed,
                           layouts=layouts, tolerance=spec.tolerance, output_names=list(spec.output_names), say=say)
    result.model, result.preset = spec.name, spec.preset
    return twin, result


def serve_user(stage: Path, source_model: Any, arrays: dict[str, Any], *, name: str, spatial: set[str],
               layouts: dict[str, str], batch: int, seed: int, say: Callable[[str], None]) -> tuple[ServingTwin, Any]:
    """The serving twin of your own model (``stage / "source.onnx"`` exported) and its check."""
    from converters.codegen import keras_hints
    from parity.check.user_inputs import framework_of

    source = framework_of(source_model)
    target = "tf" if source == "torch" else "torch"
    native = None
    if target == "torch":  # the torch twin's inputs: the Keras arrays, channels-first where spatial
        native = [a.transpose(0, a.ndim - 1, *range(1, a.ndim - 1)) if n in spatial else a for n, a in arrays.items()]
    twin = serving_twin(stage, target, model=name, origin=f"your {source} model {name}", spatial_inputs=spatial,
                        hints=keras_hints(source_model) if source == "tf" else None, target_inputs=native, say=say)
    result = check_serving(source_model, twin, stage, arrays, target=target, batch=batch, seed=seed, layouts=layouts,
                           tolerance=None, output_names=None, say=say)
    return twin, result


def write_serving_copy(target: Any, framework: str, out: Path, inputs: list[Any] | None) -> tuple[Path, int, float | None]:
    """``parity port --fold-batchnorm``: the ported model's folded copy beside it, and how far it is from it.

    Keras: ``serving.keras`` (the folded model, architecture and weights). torch: ``serving.safetensors``,
    the state of ``fold_torch(model)`` (load it into ``fold_torch(YourModel())[0]``). Returns the file,
    the number of folded pairs and the largest ``|folded - ported|`` on ``inputs`` (None without inputs)."""
    import numpy as np

    from converters.files import atomic_path
    from converters.fold_batchnorm import fold_keras, fold_torch

    folded, pairs = fold_torch(target) if framework == "torch" else fold_keras(target)
    if framework == "torch":
        import torch
        from safetensors.torch import save_file

        path = out / "serving.safetensors"
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous() for k, v in folded.state_dict().items()}, str(tmp))
    else:
        path = out / "serving.keras"
        with atomic_path(path, suffix=".keras") as tmp:
            tmp.unlink()  # Keras refuses to overwrite without asking
            folded.save(str(tmp))
    if not inputs:
        return path, len(pairs), None
    if framework == "torch":
        was = target.training
        with torch.no_grad():
            args = [torch.from_numpy(np.asarray(a)) for a in inputs]
            want, got = target.eval()(*args), folded(*args)
        target.train(was)
        pairs_out = [(np.asarray(w), np.asarray(g)) for w, g in zip(_flat(want), _flat(got), strict=True)]
    else:
        feed = inputs if len(inputs) > 1 else inputs[0]
        pairs_out = [(np.asarray(w), np.asarray(g)) for w, g in
                     zip(_flat(target(feed, training=False)), _flat(folded(feed, training=False)), strict=True)]
    return path, len(pairs), max(float(np.abs(w - g).max()) for w, g in pairs_out)


def _flat(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return [v for v in out.values()]
    return list(out) if isinstance(out, (list, tuple)) else [out]
