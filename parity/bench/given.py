"""A user's own models, or an ONNX file, described like a zoo ``ModelSpec`` so that the bench
engine, its cases and the FLOP count stay one code path.

``GivenSpec`` builds nothing: ``build_torch`` / ``build_keras`` return the models it was given,
as they are (never re-initialised, never reseeded). Whatever could change a model (a training
step, a move to another device) works on a copy (``training_copy``, ``on_device``). A runtime
whose model was not given raises ``Skip`` with the option that would give it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.bench.case import Skip
from parity.errors import UsageError
from zoo.spec import ModelSpec, TensorSpec, Tolerance

_OPTION = {"torch": "--torch pkg.module:factory", "tf": "--keras model.keras|pkg.module:factory"}
_NOT_COMPARED = Tolerance(atol=0.0, rtol=0.0, reason="a user's models in the bench are timed, not compared")
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64", 16: "bfloat16"}


def _unbuildable(config: Any) -> Any:
    raise TypeError("a GivenSpec builds nothing: it holds the given models")


@dataclass(frozen=True)
class GivenSpec(ModelSpec):
    """A ModelSpec whose builders return the given models; ``onnx_file`` replaces the export.

    ``output_shapes``: per framework, each output's shape without the batch (from one forward
    pass at batch 1); a training step draws its seeded target from the first.
    """

    torch_model: Any = field(default=None, repr=False)
    keras_model: Any = field(default=None, repr=False)
    onnx_file: str | None = None
    output_shapes: Mapping[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    fixed_batch: int | None = None  # an ONNX file exported with a static batch dimension
    onnx_layout: str = "torch"  # whose layout the given ONNX file's inputs take: 'torch' or 'tf'
    keras_order: tuple[str, ...] | None = None  # the Keras model's input order, when not the torch one

    def input_order(self, framework: str) -> list[str]:
        """The input names in ``framework``'s argument order."""
        return list(self.keras_order) if framework == "tf" and self.keras_order else self.input_names

    def given_or_none(self, framework: str) -> Any:
        """The model given for ``framework`` ('torch' or 'tf'), or None."""
        return self.torch_model if framework == "torch" else self.keras_model

    def given(self, framework: str) -> Any:
        """The model given for ``framework`` ('torch' or 'tf'); ``Skip`` naming the option when none was."""
        model = self.given_or_none(framework)
        if model is None:
            raise Skip(f"no {'torch' if framework == 'torch' else 'Keras'} model given ({_OPTION[framework]})")
        return model

    def build_torch(self, seed: int = 0) -> Any:
        """The given torch model in eval mode: as it is, ``seed`` is not used."""
        return self.given("torch").eval()

    def build_keras(self, seed: int = 0) -> Any:
        """The given Keras model as it is (``seed`` is not used)."""
        return self.given("tf")

    def on_device(self, model: Any, device: str) -> Any:
        """The torch model on ``device``: itself when it is there already, else a moved copy."""
        import torch

        want = torch.device(device)
        if all(t.device.type == want.type and want.index in (None, t.device.index)
               for t in [*model.parameters(), *model.buffers()]):
            return model
        return copy.deepcopy(model).to(device)

    def training_copy(self, framework: str) -> Any:
        """A copy of the given model for a training step to change (the given one keeps its weights)."""
        model = self.given(framework)
        if framework == "torch":
            return copy.deepcopy(model)
        import keras

        try:
            clone = keras.models.clone_model(model)
            clone.set_weights(model.get_weights())
        except Exception as exc:  # subclassed models without get_config cannot be cloned
            raise Skip(f"the Keras model cannot be copied for training ({type(exc).__name__}: {exc}); "
                       "its own weights are not trained in place") from None
        return clone

    def check_policy(self, policy: str) -> None:
        """``Skip`` unless the given Keras model was built under ``policy`` (it cannot be rebuilt under another)."""
        have = getattr(getattr(self.given("tf"), "dtype_policy", None), "name", "float32")
        if have != policy:
            raise Skip(f"the given Keras model was built under the dtype policy {have!r}, not {policy!r}; "
                       f"build it under keras.mixed_precision.set_dtype_policy({policy!r}) to time it so")

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]


def given_spec(name: str, inputs: Sequence[TensorSpec], *, torch_model: Any = None, keras_model: Any = None,
               onnx_file: str | Path | None = None, fixed_batch: int | None = None,
               onnx_layout: str = "torch", keras_order: Sequence[str] | None = None) -> GivenSpec:
    """Describe given models (and/or an ONNX file) for the bench; one forward pass at batch 1 per model
    finds the outputs. ``inputs``: shapes in the torch layout, ``layout`` saying how Keras sees them."""
    if torch_model is None and keras_model is None and onnx_file is None:
        raise UsageError("give a model to time: --torch pkg.module:factory, --keras FILE|pkg.module:factory "
                         "or --onnx FILE")
    spec = GivenSpec(name=name, family="user", preset="given", config=None, inputs=tuple(inputs), outputs=(),
                     tolerance=_NOT_COMPARED, torch_builder=_unbuildable, keras_builder=_unbuildable,
                     presets=("given",), torch_model=torch_model, keras_model=keras_model,
                     onnx_file=None if onnx_file is None else str(onnx_file), fixed_batch=fixed_batch,
                     onnx_layout=onnx_layout, keras_order=tuple(keras_order) if keras_order else None)
    shapes = {fw: _output_shapes(spec, fw) for fw in ("torch", "tf") if spec.given_or_none(fw) is not None}
    count = max((len(s) for s in shapes.values()), default=0) or _onnx_output_count(spec.onnx_file)
    first = next(iter(shapes.values()), ())
    outputs = tuple(TensorSpec(f"output_{k}", first[k] if k < len(first) else ()) for k in range(count))
    return dataclasses.replace(spec, outputs=outputs, output_shapes=shapes)


def _output_shapes(spec: GivenSpec, framework: str) -> tuple[tuple[int, ...], ...]:
    """Each output's shape without the batch, from one forward pass of the given model at batch 1."""
    laid_out = spec.inputs_for(framework, spec.example_inputs(1, 0))
    arrays = [np.ascontiguousarray(laid_out[n]) for n in spec.input_order(framework)]
    try:
        if framework == "torch":
            import torch

            with torch.inference_mode():
                out = spec.build_torch()(*[torch.from_numpy(a) for a in arrays])
        else:
            out = spec.build_keras()(arrays if len(arrays) > 1 else arrays[0], training=False)
    except Exception as exc:  # the user's model refused the inputs described by --input
        why = (str(exc).strip().splitlines() or [""])[0][:200]
        shapes = ", ".join(f"{n} {tuple(a.shape)} {a.dtype}" for n, a in zip(spec.input_order(framework), arrays,
                                                                                 strict=True))
        raise UsageError(f"the {'torch' if framework == 'torch' else 'Keras'} model does not run on inputs "
                         f"{shapes} (batch 1) ({type(exc).__name__}: {why}); "
                         "check --input (NAME:SHAPE[:DTYPE][:LAYOUT], shape without the batch)") from None
    outs = list(out.values()) if isinstance(out, Mapping) else list(out) if isinstance(out, (list, tuple)) else [out]
    return tuple(tuple(int(d) for d in tuple(o.shape)[1:]) for o in outs)


def _onnx_output_count(path: str | None) -> int:
    if path is None:
        return 0
    from converters.graph import load_onnx

    return len(load_onnx(path).graph.output)


def onnx_input_specs(path: str | Path,
                     fixed: Mapping[str, tuple[int, ...]] | None = None) -> tuple[tuple[TensorSpec, ...], int | None]:
    """The graph inputs of an ONNX file as TensorSpecs (shapes without the batch, as declared) and its static
    batch size (None when dynamic). ``fixed`` gives shapes for inputs with dynamic dimensions beyond the batch."""
    from converters.graph import load_onnx

    fixed = dict(fixed or {})
    graph = load_onnx(path).graph
    initializers = {i.name for i in graph.initializer}
    specs: list[TensorSpec] = []
    batches: set[int] = set()
    declared = [v for v in graph.input if v.name not in initializers]
    unknown = sorted(set(fixed) - {v.name for v in declared})
    if unknown:
        raise UsageError(f"--input {unknown[0]!r}: {path} has no such input (its inputs: "
                         f"{', '.join(v.name for v in declared)})")
    for value in declared:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        if not dims:
            raise UsageError(f"{path}: input {value.name!r} is a scalar or has no declared shape; "
                             f"the bench needs a batch dimension")
        if isinstance(dims[0], int):
            batches.add(dims[0])
        rest = dims[1:]
        if value.name in fixed:
            if len(fixed[value.name]) != len(rest) or any(isinstance(d, int) and d != f
                                                          for d, f in zip(rest, fixed[value.name], strict=True)):
                raise UsageError(f"--input {value.name}: shape {fixed[value.name]} does not fit {path}'s declared "
                                 f"{tuple(rest)} (without the batch dimension {dims[0]!r})")
            rest = list(fixed[value.name])
        elif any(not isinstance(d, int) for d in rest):
            raise UsageError(f"{path}: input {value.name!r} has dynamic dimensions {tuple(rest)} beyond the batch; "
                             f"fix them with --input {value.name}:{'x'.join(str(d) if isinstance(d, int) else 'N' for d in rest)}")
        dtype = _ONNX_DTYPES.get(tensor.elem_type)
        if dtype is None:
            raise UsageError(f"{path}: input {value.name!r} has ONNX element type {tensor.elem_type}, which the bench "
                             f"cannot draw inputs for")
        specs.append(input_spec(value.name, tuple(rest), dtype, "NC"))
    return tuple(specs), (batches.pop() if len(batches) == 1 else None)


def input_spec(name: str, shape: tuple[int, ...], dtype: str, layout: str) -> TensorSpec:
    """A TensorSpec for seeded inputs: floats uniform in [-1, 1), integers in {0, 1} (valid ids and masks)."""
    if dtype == "bfloat16":
        raise UsageError(f"--input {name}: bfloat16 inputs cannot be drawn with numpy; feed float32 "
                         "(use --precision bf16 to time in bfloat16)")
    if np.dtype(dtype).kind in "iub":
        return TensorSpec(name, shape, dtype, layout, low=0, high=2)
    return TensorSpec(name, shape, dtype, layout)


__all__ = ["GivenSpec", "given_spec", "input_spec", "onnx_input_specs"]
