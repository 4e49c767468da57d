"""An attention layer (Keras ``MultiHeadAttention``, torch ``nn.MultiheadAttention``) twinned with four
dense layers on the other side (the q, k, v and output projections spelled out, as Hugging Face's and
the zoo's twins write them): for gradient and training parity each projection of the attention layer
is read as a dense layer of its own, in the canonical layout its ``read`` gives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from converters.targets import Fetch, TargetLayer

PARTS = (("q", "query"), ("k", "key"), ("v", "value"), ("out", "output"))


def _part(layer: TargetLayer, role: str, label: str) -> TargetLayer:
    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        whole = layer.read(fetch, mode, attrs)
        return {k: whole[f"{role}_{k}"] for k in ("kernel", "bias") if f"{role}_{k}" in whole}

    def write(tensors: Any, attrs: dict[str, Any]) -> str:
        raise NotImplementedError("an attention layer's projection is read for diagnostics, never written alone")

    variables = {k: layer.variables[f"{role}_{k}"] for k in ("kernel", "bias") if f"{role}_{k}" in layer.variables}
    shapes = {k: layer.shapes.get(f"{role}_{k}") for k in ("kernel", "bias")}
    return TargetLayer(f"{layer.name}.{label}", "dense", layer.framework, layer.obj, shapes,
                       {"use_bias": shapes["bias"] is not None}, write, read, variables)


def split_attention(layers: Sequence[TargetLayer]) -> list[TargetLayer]:
    """``layers`` with each attention layer replaced by its four projections as dense layers."""
    out: list[TargetLayer] = []
    for layer in layers:
        out += [_part(layer, role, label) for role, label in PARTS] if layer.kind == "attention" else [layer]
    return out


def twin_attention(t_layers: list[TargetLayer], k_layers: list[TargetLayer]) -> tuple[list[TargetLayer],
                                                                                      list[TargetLayer]]:
    """Both sides' layers, an attention layer split where the other side has none."""
    t_att = any(t.kind == "attention" for t in t_layers)
    k_att = any(k.kind == "attention" for k in k_layers)
    if t_att and not k_att:
        t_layers = split_attention(t_layers)
    if k_att and not t_att:
        k_layers = split_attention(k_layers)
    return t_layers, k_layers
