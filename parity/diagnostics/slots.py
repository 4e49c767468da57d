"""The twins' parameters paired in the canonical (ONNX) layout, read through the target table.

Each framework layer is described once, in ``converters.targets``: the port writes a
canonical tensor into it with its ``write``, and gradient and training parity read it
back with its inverse ``read`` (gradients are linear in the parameters, so the same
transform applies to them). A ``Slot`` is one canonical tensor of one layer pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converters.targets import Fetch, TargetLayer, fetch_from, target_layers, value_of
from parity.diagnostics.attention_slots import twin_attention
from parity.errors import UsageError

SIDES = ("torch", "tf")


@dataclass
class Slot:
    """One canonical tensor of one layer, with the framework tensors it is read from on each side."""

    layer: str
    role: str
    kind: str
    trainable: bool
    torch: list[Any] = field(repr=False)  # the framework tensors behind the canonical one
    keras: list[Any] = field(repr=False)
    torch_layer: TargetLayer = field(repr=False)
    keras_layer: TargetLayer = field(repr=False)
    keras_attrs: dict[str, Any] = field(default_factory=dict)  # ``read`` attrs (a Dense layer's flatten order)
    torch_names: list[str] = field(default_factory=list)
    keras_names: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.role}"

    def handles(self, side: str) -> list[Any]:
        return self.torch if side == "torch" else self.keras


def read_slots(slots: Sequence[Slot], side: str, source: Mapping[int, np.ndarray] | Fetch | None = None,
               mode: str = "value") -> list[np.ndarray]:
    """Each slot's canonical array on ``side`` ('torch' or 'tf'), read through its layer's ``read``.

    ``source``: arrays by ``id(tensor)`` (gradients; zeros for a tensor not in it), a fetch
    function, or None for the current values. Each layer is read once.
    """
    if side not in SIDES:
        raise ValueError(f"side {side!r}; expected one of {SIDES}")
    fetch: Fetch = value_of if source is None else (source if callable(source) else fetch_from(source))
    done: dict[int, dict[str, np.ndarray]] = {}
    out = []
    for slot in slots:
        layer = slot.torch_layer if side == "torch" else slot.keras_layer
        if id(layer) not in done:
            done[id(layer)] = layer.read(fetch, mode, slot.keras_attrs if side == "tf" else {})
        out.append(done[id(layer)][slot.role])
    return out


def pair_layers(t_layers: Sequence[TargetLayer], k_layers: Sequence[TargetLayer]) -> list[tuple[TargetLayer, TargetLayer]]:
    """Torch and Keras layers paired by name (zoo twins share names), the rest in order by kind and
    canonical shapes, as the port matches them; in torch's forward order."""
    t_layers, k_layers = twin_attention(list(t_layers), list(k_layers))  # MultiHeadAttention vs four Linears
    k_by_name = {k.name: k for k in k_layers}
    pairs: list[tuple[TargetLayer, TargetLayer]] = []
    left_t, used_k = [], set()
    for t in t_layers:
        k = k_by_name.get(t.name)
        if k is not None and k.kind == t.kind:
            pairs.append((t, k))
            used_k.add(k.name)
        else:
            left_t.append(t)
    left_k = [k for k in k_layers if k.name not in used_k]
    for t in left_t:
        k = next((k for k in left_k if k.kind == t.kind and k.shapes == t.shapes), None)
        if k is None:
            raise UsageError(f"gradient parity: torch layer {t.name!r} ({t.kind}: {t.shapes}) has no Keras twin "
                             f"(unpaired Keras layers: {[x.name for x in left_k]})")
        left_k.remove(k)
        pairs.append((t, k))
    if left_k:
        raise UsageError(f"gradient parity: Keras layers {[k.name for k in left_k]} have no torch twin")
    order = {id(t): i for i, t in enumerate(t_layers)}
    pairs.sort(key=lambda p: order[id(p[0])])
    return pairs


def parameter_slots(torch_model: Any, keras_model: Any, torch_inputs: Sequence[np.ndarray] | None = None, *,
                    channels_first_1d: bool = False) -> list[Slot]:
    """Every parameter and running statistic of the twins, paired, in torch's forward order.

    A Keras Dense fed by a Flatten of an (H, W, C) map (or reshaped into one) is read with
    its rows (columns) in torch's C, H, W order (``keras_target.flatten_attrs``); a 1-D
    map counts when the torch twin is channels-first in 1-D (``channels_first_1d``).
    """
    from converters.targets.keras_target import flatten_attrs

    pairs = pair_layers(target_layers(torch_model, torch_inputs), target_layers(keras_model))
    t_names = {id(p): n for n, p in [*torch_model.named_parameters(), *torch_model.named_buffers()]}
    flatten = flatten_attrs(keras_model, channels_first_1d)
    slots: list[Slot] = []
    for t, k in pairs:
        if set(t.variables) != set(k.variables):
            raise UsageError(f"gradient parity: {t.name!r} has {sorted(t.variables)} in torch but "
                             f"{sorted(k.variables)} in Keras (a bias on one side only?)")
        layer = t.name if t.name == k.name else f"{t.name} <-> {k.name}"
        attrs = flatten.get(k.obj.name, {}) if k.kind == "dense" else {}
        for role, th in t.variables.items():
            kh = k.variables[role]
            note = ("torch keeps b_ih and b_hh; Keras their sum: compared as the sum, gradients as either's"
                    if t.kind == "lstm" and role == "B" else "")
            if attrs:
                note = f"Keras {'rows' if 'flatten' in attrs else 'cols'} in H, W, C order: permuted to C, H, W"
            slots.append(Slot(layer, role, t.kind, role not in t.statistics, th, kh, t, k, dict(attrs),
                              [t_names.get(id(h), "?") for h in th], [str(getattr(v, "path", v.name)) for v in kh],
                              note))
    return slots
