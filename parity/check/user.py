"""A user's own model pair as a check source, beside the zoo and checkpoint sources.

``user_pair`` describes the pair as a ``UserSpec`` (a ModelSpec whose builders refuse to
build: the models are the user's) so that ``run_check`` runs it through the one pipeline.
Inputs come in the SOURCE's layout, as arrays or as shapes to draw seeded inputs from;
each input's mapping to the other framework is inferred from the Keras model's declared
input shapes or, for a Keras source, from the layout the torch model accepts (one forward
pass of batch 1 in eval mode, without gradients, modes restored); where both would fit it
is an error that says what to state (``parity.check.user_inputs``). The user's models are
never built, randomised or re-initialised here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.check.user_inputs import (
    Given,
    framework_of,
    given_input,
    input_candidates,
    int_high,
    keras_inputs,
    keras_output_shapes,
    named_inputs,
    output_layout,
    pairing,
    probe_torch,
    resolve_by_probing,
    torch_input_names,
    torch_shape,
)
from parity.errors import UsageError
from zoo.spec import ModelSpec, TensorSpec, Tolerance

DEFAULT_TOLERANCE = Tolerance(
    atol=1e-5, rtol=1e-5,
    reason=("default for a user pair: float32 runtimes sum in their own order, so a dot product of length K "
            "differs by about sqrt(K)*eps*|y| (eps = 6e-8; K up to ~1e4 gives ~6e-6 of the output scale); "
            "1e-5 of the output scale (max |source output|) is the zoo's bound for its convolutional and dense "
            "twins and still catches a mis-ported weight, a wrong flatten order or a BatchNorm epsilon of 1e-3; "
            "deep or long-sequence models may need tolerance=1e-4"),
)


def as_tolerance(tolerance: Tolerance | float | None) -> Tolerance:
    """``None`` -> the default; a number -> that atol (relative to the output scale) and rtol."""
    if tolerance is None:
        return DEFAULT_TOLERANCE
    if isinstance(tolerance, Tolerance):
        return tolerance
    if isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and tolerance >= 0:
        return Tolerance(float(tolerance), float(tolerance),
                         reason="given by the caller (atol relative to the output scale, and rtol)")
    raise UsageError(f"tolerance must be None, a non-negative number or a zoo.spec.Tolerance, got {tolerance!r}")


def _no_build(config: Any) -> Any:
    raise UsageError("a user pair is checked as given: it is never rebuilt")


@dataclass(frozen=True)
class UserSpec(ModelSpec):
    """A user pair described like a zoo model; each framework gets the inputs in its own argument order."""

    torch_order: tuple[str, ...] = ()
    keras_order: tuple[str, ...] = ()

    def inputs_for(self, framework: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        by_name = {s.name: s for s in self.inputs}
        order = self.torch_order if framework == "torch" else self.keras_order
        return {n: by_name[n].to_framework(inputs[n], framework) for n in order}


@dataclass
class UserPair:
    """The user's two models, their inputs (torch layout, by name), and how the layouts were chosen."""

    spec: UserSpec
    source: Any
    target: Any
    source_framework: str
    inputs: dict[str, np.ndarray]
    described: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problem: str = ""  # outputs that cannot be the same tensors: a mismatched pair, raised after the port


def _label(model: Any) -> str:
    return str(getattr(model, "name", "")) if framework_of(model) == "tf" else type(model).__name__


def _rekey(mapping: Mapping[str, Any] | None, aliases: dict[str, str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (mapping or {}).items():
        if key not in aliases:
            raise UsageError(f"{what} names {key!r}, which the pair does not have "
                             f"({', '.join(sorted(set(aliases.values())))})")
        out[aliases[key]] = value
    return out


def _spec_input(name: str, given: Given, layout: str, source: str, int_limit: int) -> TensorSpec:
    low, high = given.low, given.high
    if given.is_float:
        low, high = (-1.0 if low is None else low), (1.0 if high is None else high)
    elif given.array is not None:  # draws for --grads/--train-steps stay within the data's range
        low, high = float(given.array.min()), float(given.array.max()) + 1
    else:
        low, high = (0.0 if low is None else low), (float(int_limit) if high is None else high)
    dtype = "float32" if given.dtype == "float64" else given.dtype  # cast when the arrays are taken
    return TensorSpec(name, torch_shape(layout, given.shape, source), dtype, layout, low, high)


def _torch_layout(specs: Sequence[TensorSpec], given: Mapping[str, Given], source: str, batch: int,
                  seed: int, draw: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every input in torch layout: the caller's arrays (float64 -> float32, said), the rest drawn."""
    batches = {g.array.shape[0] for g in given.values() if g.array is not None}
    if len(batches) > 1:
        raise UsageError(f"the input arrays have different batch sizes {sorted(batches)}; give one batch")
    drawn = draw(batches.pop() if batches else batch, seed)
    out, notes = {}, []
    for s in specs:
        arr = given[s.name].array
        if arr is None:
            out[s.name] = drawn[s.name]
            continue
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
            notes.append(f"input {s.name!r}: float64 array cast to float32 (the models compute in float32)")
        out[s.name] = s.from_framework(np.ascontiguousarray(arr), source)
    return out, notes


def user_pair(source: Any, target: Any, inputs: Any, *, input_layouts: Mapping[str, str] | None = None,
              output_layouts: Mapping[str, str] | None = None, output_names: Sequence[str] | None = None,
              tolerance: Tolerance | float | None = None, batch: int = 2, seed: int = 0) -> UserPair:
    """Describe the user's pair as a UserSpec (see the module docstring); neither model is modified."""
    src, dst = framework_of(source), framework_of(target)
    if src == dst:
        raise UsageError(f"source and target are both {src} models; give one torch.nn.Module and one keras.Model")
    torch_model, keras_model = (source, target) if src == "torch" else (target, source)
    declared = keras_inputs(keras_model)
    k_names = list(declared)
    t_names = torch_input_names(torch_model) or k_names
    t2k, pair_note = pairing(t_names, k_names)
    k2t = {k: t for t, k in t2k.items()}
    names = t_names if src == "torch" else k_names  # canonical: the source's names
    keras_of = {n: (t2k[n] if src == "torch" else n) for n in names}
    torch_of = {n: (n if src == "torch" else k2t[n]) for n in names}
    other = [keras_of[n] if src == "torch" else torch_of[n] for n in names]
    given = {n: given_input(n, v) for n, v in named_inputs(inputs, names, other).items()}
    aliases = {**{keras_of[n]: n for n in names}, **{torch_of[n]: n for n in names}}
    stated = _rekey(input_layouts, aliases, "input_layouts")
    cands = {n: input_candidates(n, given[n], declared[keras_of[n]], src, stated.get(n)) for n in names}
    limit = int_high(torch_model)
    canon_of_torch = {torch_of[n]: n for n in names}
    canon_of_keras = {keras_of[n]: n for n in names}
    base = UserSpec(
        name=f"{_label(source)}/{_label(target)}", family="user", preset="user", config=None, inputs=(),
        outputs=(), tolerance=as_tolerance(tolerance), torch_builder=_no_build, keras_builder=_no_build,
        torch_order=tuple(canon_of_torch[t] for t in t_names), keras_order=tuple(canon_of_keras[k] for k in k_names))

    def spec_for(layouts: Mapping[str, str]) -> UserSpec:
        return dataclasses.replace(base, inputs=tuple(_spec_input(n, given[n], layouts[n], src, limit)
                                                      for n in names))

    def torch_batch(layouts: Mapping[str, str], n: int) -> dict[str, np.ndarray]:
        spec = spec_for(layouts)
        arrays, _ = _torch_layout(spec.inputs, given, src, n, seed, spec.example_inputs)
        return spec.inputs_for("torch", {k: v[:n] for k, v in arrays.items()})

    how = {n: "stated" if n in stated else "as is (not a channels-first candidate)" if cands[n] == ["same"]
           else "inferred from the models' input shapes" for n in names}
    if any(len(c) > 1 for c in cands.values()):
        layouts = resolve_by_probing(torch_model, cands, {n: given[n].rank for n in names},
                                     lambda lay: list(torch_batch(lay, 1).values()))
        how |= {n: "the only layout the torch model takes" for n in names if len(cands[n]) > 1}
    else:
        layouts = {n: c[0] for n, c in cands.items()}
    spec = spec_for(layouts)
    t_out, error = probe_torch(torch_model, list(torch_batch(layouts, 1).values()))
    if t_out is None:
        raise UsageError(f"the torch model fails on inputs of shapes "
                         f"{[s.shape for s in spec.inputs]} (torch layout, without batch): {error}")
    k_out = keras_output_shapes(keras_model)
    problem = "" if len(t_out) == len(k_out) else (
        f"the torch model returns {len(t_out)} outputs, the Keras model {len(k_out)}: the two models are not the "
        "same architecture")
    out_names = list(output_names) if output_names is not None else (
        ["output"] if len(t_out) == 1 else [f"output_{i}" for i in range(len(t_out))])
    if len(out_names) != len(t_out):
        raise UsageError(f"output_names has {len(out_names)} names for {len(t_out)} outputs")
    stated_out = _rekey(output_layouts, {n: n for n in out_names}, "output_layouts")
    outputs, out_how = [], {}
    for i, (name, ts) in enumerate(zip(out_names, t_out, strict=True)):
        layout, out_how[name] = output_layout(i, name, ts, k_out[i] if i < len(k_out) else (), stated_out.get(name),
                                              list(layouts.values()))
        problem = problem or (out_how[name] if layout is None else "")
        outputs.append(TensorSpec(name, ts, "float32", layout or "same"))
    spec = dataclasses.replace(spec, outputs=tuple(outputs))
    arrays, notes = _torch_layout(spec.inputs, given, src, batch, seed, spec.example_inputs)
    described = {
        "inputs": {n: {"torch": torch_of[n], "keras": keras_of[n], "torch_shape": list(s.shape),
                       "keras_shape": list(s.framework_shape("tf")), "dtype": s.dtype, "layout": s.layout,
                       "how": how[n], "given": "array" if given[n].array is not None else "shape"}
                   for n, s in zip(names, spec.inputs, strict=True)},
        "outputs": {o.name: {"torch_shape": list(o.shape), "layout": o.layout, "how": out_how[o.name]}
                    for o in outputs},
    }
    return UserPair(spec, source, target, src, arrays, described, [pair_note, *notes] if pair_note else notes,
                    problem)
