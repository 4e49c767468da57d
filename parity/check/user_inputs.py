"""How a user's pair takes its inputs: names, pairing, layouts, and probing the torch model.

Layouts are named for the torch side, as in the zoo specs: ``NCHW`` / ``NCL`` mean the
torch model takes the input channels-first and Keras channels-last; ``same`` (also ``NC``,
``NL``, ``NLC``, ``NHWC``) means both take the same array.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.errors import UsageError
from zoo.spec import TensorSpec

CHANNELS_FIRST = {"NCHW": 3, "NCL": 2}  # layout -> rank without the batch dimension
AS_IS = ("same", "NC", "NL", "NLC", "NHWC")
LAYOUTS = (*CHANNELS_FIRST, *AS_IS)
Shape = tuple[int, ...]


def framework_of(model: Any) -> str:
    """'torch' for a torch.nn.Module, 'tf' for a keras.Model; anything else is the caller's error."""
    from converters.targets import framework_of as detect

    try:
        return detect(model)
    except TypeError:
        pass
    raise UsageError(f"expected a torch.nn.Module and a keras.Model, got {type(model).__module__}."
                     f"{type(model).__name__}")


def torch_input_names(model: Any) -> list[str] | None:
    """The forward's required positional argument names, or None when it takes ``*args``."""
    params = list(inspect.signature(model.forward).parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [p.name for p in positional if p.default is p.empty] or [p.name for p in positional[:1]]


def keras_inputs(model: Any) -> dict[str, tuple[int | None, ...]]:
    """Name -> declared shape without batch, of each Keras input, in call order."""
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):
        inputs = []
    if not inputs:
        raise UsageError(f"the Keras model {model.name!r} declares no inputs; build it with keras.Input "
                         "(functional), or give a Sequential model an Input layer first")
    return {t.name.split(":")[0]: tuple(t.shape[1:]) for t in inputs}


def keras_output_shapes(model: Any) -> list[tuple[int | None, ...]]:
    return [tuple(t.shape[1:]) for t in model.outputs]


def as_array(value: Any) -> np.ndarray | None:
    """A numpy array from numpy, torch or TensorFlow values; None for anything else."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if type(value).__module__.startswith("tensorflow") and hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    return None


@dataclass(frozen=True)
class Given:
    """One input as the caller gave it: an array (batch first, source layout) or a shape without batch."""

    array: np.ndarray | None
    shape: Shape
    dtype: str
    low: float | None = None  # None: the default range for the dtype
    high: float | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"


def _is_shape(value: Any) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) > 0
            and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in value))


def given_input(name: str, value: Any) -> Given:
    arr = as_array(value)
    if arr is not None:
        if arr.ndim < 1:
            raise UsageError(f"input {name!r}: an array needs a batch dimension, got a scalar")
        return Given(arr, tuple(arr.shape[1:]), str(arr.dtype))
    if isinstance(value, TensorSpec):
        defaults = (value.low, value.high) == (-1.0, 1.0)  # TensorSpec's float range: not meant for ids
        if np.dtype(value.dtype).kind != "f" and defaults:
            return Given(None, tuple(value.shape), value.dtype)
        return Given(None, tuple(value.shape), value.dtype, value.low, value.high)
    if _is_shape(value):
        if any(d < 1 for d in value):
            raise UsageError(f"input {name!r}: shape {tuple(value)} has a dimension below 1")
        return Given(None, tuple(int(d) for d in value), "float32")
    raise UsageError(f"input {name!r}: expected an array (batch first), a shape without the batch dimension "
                     f"such as (3, 32, 32), or a zoo.spec.TensorSpec; got {type(value).__name__}")


def named_inputs(inputs: Any, names: list[str], other: list[str]) -> dict[str, Any]:
    """The caller's inputs keyed by ``names`` (the source's); keys may also be the other side's names."""
    if as_array(inputs) is not None or isinstance(inputs, TensorSpec) or _is_shape(inputs):
        inputs = [inputs]  # one array or one shape for a one-input model
    if isinstance(inputs, Mapping):
        keys = list(inputs)
        if set(keys) == set(names):
            return {n: inputs[n] for n in names}
        if set(keys) == set(other):
            return {n: inputs[o] for n, o in zip(names, other, strict=True)}
        if len(keys) == 1 == len(names):
            return {names[0]: inputs[keys[0]]}
        raise UsageError(f"inputs named {keys} do not match the source model's inputs {names}; key them by those "
                         "names, or pass a sequence in the source's argument order")
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        if len(inputs) != len(names):
            raise UsageError(f"{len(inputs)} inputs given, but the source model takes {len(names)} "
                             f"({', '.join(names)})")
        return dict(zip(names, inputs, strict=True))
    raise UsageError(f"inputs must be a dict by name, a sequence, an array or a shape; got {type(inputs).__name__}")


def pairing(t_names: list[str], k_names: list[str]) -> tuple[dict[str, str], str]:
    """torch input name -> Keras input name: by name when the sets agree, else by position (with a note)."""
    if len(t_names) != len(k_names):
        raise UsageError(f"the torch model takes {len(t_names)} inputs ({', '.join(t_names)}), the Keras model "
                         f"{len(k_names)} ({', '.join(k_names)}): they are not the same architecture")
    if set(t_names) == set(k_names):
        return {n: n for n in t_names}, ""
    note = "" if len(t_names) == 1 else (
        f"inputs paired by position: torch ({', '.join(t_names)}) with Keras ({', '.join(k_names)}); name the "
        "Keras Inputs like the torch forward's arguments to pair them by name")
    return dict(zip(t_names, k_names, strict=True)), note


def fits(declared: Sequence[int | None], shape: Sequence[int]) -> bool:
    return len(declared) == len(shape) and all(d is None or d == s for d, s in zip(declared, shape, strict=True))


def channels_last(shape: Sequence[int]) -> Shape:
    return (*shape[1:], shape[0])


def channels_first(shape: Sequence[int]) -> Shape:
    return (shape[-1], *shape[:-1])


def cf_layout(rank: int) -> str | None:
    """The channels-first layout for inputs of ``rank`` dimensions without batch (None: there is none)."""
    return next((name for name, r in CHANNELS_FIRST.items() if r == rank), None)


def check_layout(name: str, layout: str, rank: int) -> str:
    """A stated layout, validated against the tensor's rank without batch."""
    key = "same" if layout.lower() == "same" else layout.upper()
    if key not in LAYOUTS:
        raise UsageError(f"{name!r}: unknown layout {layout!r}; use one of {', '.join(LAYOUTS)} (NCHW/NCL: the "
                         "torch model takes it channels-first, Keras channels-last; the rest: both as is)")
    if key in CHANNELS_FIRST and CHANNELS_FIRST[key] != rank:
        raise UsageError(f"{name!r}: layout {key} needs {CHANNELS_FIRST[key]} dimensions without the batch, the "
                         f"tensor has {rank}")
    return key


def layout_hint(name: str, rank: int, what: str = "input_layouts") -> str:
    cf = cf_layout(rank)
    if cf is None:
        return f"{what}={{{name!r}: 'same'}}"
    return (f"{what}={{{name!r}: {cf!r}}} (torch channels-first, Keras channels-last) or {what}={{{name!r}: "
            "'same'}} (both as is)")


def torch_shape(layout: str, shape: Sequence[int], source: str) -> Shape:
    """``shape`` (the source's layout, no batch) in the torch layout."""
    return channels_first(shape) if source == "tf" and layout in CHANNELS_FIRST else tuple(shape)


def input_candidates(name: str, given: Given, declared: tuple[int | None, ...], source: str,
                     stated: str | None) -> list[str]:
    """The layouts this input may have: one when stated or when the shapes decide, two to probe (Keras source)."""
    if source == "tf" and not fits(declared, given.shape):
        raise UsageError(f"input {name!r}: shape {given.shape} does not fit the Keras model's input {declared} "
                         "(inputs are given in the source's layout, without the batch dimension)")
    if stated is not None:
        return [check_layout(name, stated, given.rank)]
    cf = cf_layout(given.rank)
    if not given.is_float or cf is None:
        return ["same"]
    if source == "tf":
        return ["same", cf]
    found = [lay for lay in ("same", cf) if fits(declared, channels_last(given.shape) if lay == cf else given.shape)]
    if len(found) > 1:
        raise UsageError(f"input {name!r}: torch shape {given.shape} fits the Keras input {declared} both as is "
                         f"and channels-last, so its layout is ambiguous; state it: {layout_hint(name, given.rank)}")
    if not found:
        raise UsageError(f"input {name!r}: torch shape {given.shape} fits the Keras input {declared} neither as is "
                         "nor channels-last; check the shape (without the batch dimension) and the models")
    return found


def output_layout(index: int, name: str, t_shape: Shape, k_shape: tuple[int | None, ...], stated: str | None,
                  input_layouts: Sequence[str]) -> tuple[str | None, str]:
    """(layout, how) for one output; layout None when the shapes cannot be the same tensor."""
    if stated is not None:
        return check_layout(name, stated, len(t_shape)), "stated"
    cf = cf_layout(len(t_shape))
    found = [lay for lay in ("same", cf) if lay is not None
             and fits(k_shape, channels_last(t_shape) if lay == cf else t_shape)]
    if len(found) == 2:  # e.g. a square feature map: follow the inputs' convention
        if cf in input_layouts:
            return cf, "ambiguous shapes: channels-first like the inputs"
        if input_layouts:
            return "same", "ambiguous shapes: as is, like the inputs"
        raise UsageError(f"output {name!r}: torch shape {t_shape} fits Keras {k_shape} both as is and channels-last; "
                         f"state it: {layout_hint(name, len(t_shape), 'output_layouts')}")
    if not found:
        return None, (f"output {index} ({name!r}): the torch model returns shape {t_shape}, the Keras model "
                      f"{k_shape} (without batch): the two models are not the same architecture")
    return found[0], "inferred from the models' output shapes"


def probe_torch(model: Any, arrays: Sequence[np.ndarray]) -> tuple[list[Shape] | None, str]:
    """Output shapes of one inference-mode forward pass, or None and the error; modes are restored."""
    import torch

    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            out = model(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    except Exception as exc:  # the user's model refusing a candidate layout is the answer looked for
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        for m, mode in modes.items():
            m.training = mode
    outs = out if isinstance(out, (tuple, list)) else [out]
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise UsageError(f"the torch model returned {type(out).__name__}; return a tensor or a tuple of tensors")
    return [tuple(o.shape[1:]) for o in outs], ""


def resolve_by_probing(torch_model: Any, cands: dict[str, list[str]], ranks: dict[str, int],
                       arrays_for: Callable[[dict[str, str]], list[np.ndarray]]) -> dict[str, str]:
    """For a Keras source: the candidate layouts the torch model accepts (one batch-1 pass per combination)."""
    open_ = [n for n in cands if len(cands[n]) > 1]
    if len(open_) > 4:
        raise UsageError(f"inputs {', '.join(open_)} could each be channels-first or as is for the torch model; "
                         "state them with input_layouts={name: 'NCHW' | 'NCL' | 'same'}")
    working, first_error = [], ""
    for combo in itertools.product(*(cands[n] for n in open_)):
        layouts = {n: c[0] for n, c in cands.items()} | dict(zip(open_, combo, strict=True))
        shapes, error = probe_torch(torch_model, arrays_for(layouts))
        if shapes is not None:
            working.append(layouts)
        first_error = first_error or error
    if not working:
        raise UsageError(f"the torch model takes the inputs in no layout (tried as is and channels-first): "
                         f"{first_error}")
    if len(working) > 1:
        name = next(n for n in open_ if len({w[n] for w in working}) > 1)
        raise UsageError(f"the torch model takes input {name!r} both as is and channels-first, so its layout is "
                         f"ambiguous; state it: {layout_hint(name, ranks[name])}")
    return working[0]


def int_high(torch_model: Any) -> int:
    """Integer inputs are drawn below the smallest Embedding table (0 or 1 without one)."""
    from torch import nn

    sizes = [m.num_embeddings for m in torch_model.modules() if isinstance(m, nn.Embedding)]
    return min(sizes) if sizes else 2
