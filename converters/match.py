"""Which parameter group of the graph goes into which target layer.

The target's parametric layers, in forward order, take the graph's groups (converters.params)
by kind and shape. Where several groups fit, a group whose ONNX names carry the target
layer's name (torch's ``fc.weight``, tf2onnx's ``model_1/fc_1/MatMul``) wins over graph order:
twins share layer names, and graph order differs between frameworks where the forward pass
is not a chain (a Keras model's layers follow its input order). Two decisions are made from
the graph rather than from the target's layer order: whether a BatchNorm after a conv-like
layer is still a node of its own or was folded into that layer by the exporter, and whether
an embedding table was folded into the rows an exporter looked up at constant positions.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from converters.errors import WeightMappingError
from converters.graph import Graph
from converters.params import ParamGroup, upstream_groups
from converters.targets import TargetLayer

Tensors = dict[str, np.ndarray | None]
CONV_LIKE = ("conv", "dense", "convtranspose")


def shape_text(shapes: dict[str, Any]) -> str:
    return ", ".join(f"{k} {tuple(v) if v is not None else None}" for k, v in shapes.items())


def mismatch(target: TargetLayer, group: ParamGroup | None, why: str) -> WeightMappingError:
    """The error for the first target layer that no group fits, with both sides' shapes."""
    there = f"ONNX {group.label} [{shape_text(group.shapes())}]" if group else "no ONNX parametric node left"
    return WeightMappingError(
        f"first mismatching layer: target {target.framework} layer {target.name!r} ({target.kind}: "
        f"{shape_text(target.shapes)}) vs {there}: {why}. Check that the two models are the same "
        "architecture with the same sizes, in the same layer order"
    )


def adapt(target: TargetLayer, group: ParamGroup) -> tuple[Tensors | None, str]:
    """The group's tensors shaped for ``target``, or None and the reason they do not fit."""
    if group.kind != target.kind:
        return None, f"expected a {target.kind} layer"
    tensors = dict(group.tensors)
    w = tensors.get("weight")
    want_w = target.shapes.get("weight")
    if w is not None and want_w is not None and w.ndim == len(want_w) + 1 and w.shape[2] == 1:
        tensors["weight"] = w.squeeze(2)  # tf2onnx writes Conv1D as a 4-D Conv over (1, L)
    for key, want in target.shapes.items():
        have = tensors.get(key)
        if key == "bias" and (want is None or have is None):
            continue  # absent biases are handled by the writers (zeros, or folded into BatchNorm)
        if key == "var" and have is None and group.attrs.get("folded_statistics"):
            continue
        if want is None or have is None or tuple(have.shape) != tuple(want):
            return None, f"{key} shape {None if have is None else tuple(have.shape)} was expected to be {want}"
    return tensors, ""


def folded_lookup(target: TargetLayer, group: ParamGroup) -> Tensors | None:
    """An embedding table for ``target`` from a constant added where its lookup was: the rows an
    exporter or simplifier looked up at constant positions 0..L-1 and folded (BERT's position
    embeddings, whose ids are ``arange(L)``). Rows L.. are not in the graph and keep the target's values."""
    want = target.shapes.get("table")
    value = group.tensors.get("value")
    if target.kind != "embedding" or group.kind != "tensor" or group.attrs.get("op") != "Add" \
            or want is None or value is None:
        return None
    rows = value.reshape(value.shape[-2:]) if value.ndim >= 2 and all(d == 1 for d in value.shape[:-2]) else None
    if rows is None or rows.shape[1] != want[1] or rows.shape[0] > want[0]:
        return None
    table = np.array(target.read()["table"], dtype=np.float32)
    table[: rows.shape[0]] = rows
    return {"table": table}


_CALL_SUFFIX = re.compile(r"_\d+$")  # Keras scopes a layer's ops "<layer>_1/...", numbered per call


def onnx_names(group: ParamGroup, source: str) -> set[str]:
    """The layer names a group's ONNX nodes and initializers carry, read as ``source`` ('torch' or
    'tf') writes them: torch exporters keep parameter paths (``block1.conv1.weight``) and the legacy
    one scopes nodes by module path (``/block1/conv1/Conv``); tf2onnx scopes by model and layer with
    a call number (``model_1/block1.conv1_1/Conv2D``)."""
    found: set[str] = set()
    for name in [*group.nodes, *group.sources]:
        parts = [p for p in name.split(":")[0].split("/") if p]
        if len(parts) > 1:  # a scope: the last part is the op
            if source == "tf":  # the outermost of several scopes is the model's
                found.update(_CALL_SUFFIX.sub("", p) for p in parts[1 if len(parts) > 2 else 0:-1])
            else:
                found.add(".".join(parts[:-1]))
        elif source == "torch" and "." in name and not name.startswith("onnx::"):
            found.add(name.rsplit(".", 1)[0])  # a parameter path
    return found


class Matcher:
    """The groups not yet written, and how the next target layer takes one of them."""

    def __init__(self, graph: Graph, groups: list[ParamGroup], targets: list[TargetLayer]) -> None:
        self.groups = groups
        self.remaining = list(groups)
        self.matched: set[int] = set()  # id() of the groups taken
        self.index = {id(g): k for k, g in enumerate(groups)}
        self.upstream = upstream_groups(graph, groups)
        source = "tf" if targets and targets[0].framework == "torch" else "torch"
        self.names = {id(g): onnx_names(g, source) for g in groups}
        self.target_names = {t.name for t in targets}
        self.notes: list[str] = []  # where names decided against graph order

    def _names(self, group: ParamGroup, name: str) -> bool:
        """Whether ``group``'s ONNX names carry the target layer name ``name``."""
        return name in self.names[id(group)]

    def take(self, target: TargetLayer) -> tuple[ParamGroup, Tensors, bool]:
        """The group for ``target``: one that fits and carries its name, else the first that fits
        in graph order and carries no other target layer's name (graph order agrees with the
        forward order for chains; for branches a later group of the right shapes is taken).
        An embedding with no table left in the graph takes the rows of a folded lookup (True)."""
        fits = [(g, t) for g in self.remaining for t in [adapt(target, g)[0]] if t is not None]
        if fits:
            best = max(fits, key=lambda f: self._names(f[0], target.name))
            if not self._names(best[0], target.name):
                others = self.target_names - {target.name}
                best = next((f for f in fits if not self.names[id(f[0])] & others), fits[0])
            elif best[0] is not fits[0][0]:
                self.notes.append(f"{target.name}: took {best[0].label}, which carries its name, over "
                                  f"{fits[0][0].label}, which comes first in the graph")
            return self._claim(best[0]), best[1], False
        for group in self.remaining:
            tensors = folded_lookup(target, group)
            if tensors is not None:
                return self._claim(group), tensors, True
        same_kind = next((g for g in self.remaining if g.kind == target.kind), None)
        first = same_kind or (self.remaining[0] if self.remaining else None)
        why = adapt(target, first)[1] if first is not None else ""
        raise mismatch(target, first, why or f"expected a {target.kind} layer")

    def claim(self, group: ParamGroup, target: TargetLayer) -> Tensors:
        """Take ``group`` (found for ``target`` beforehand) and its tensors shaped for it."""
        self._claim(group)
        return adapt(target, group)[0] or {}

    def _claim(self, group: ParamGroup) -> ParamGroup:
        self.remaining.remove(group)
        self.matched.add(id(group))
        return group

    def batchnorm_after(self, layer: ParamGroup, norm: TargetLayer, later: list[TargetLayer]) -> ParamGroup | bool:
        """The graph's BatchNorm for ``norm``, the target layer right after ``layer``'s; True if the
        exporter folded it into ``layer``; False if neither is clear (it is then taken like any other).

        Decided from the graph, not from the target's layer order: a BatchNorm the graph still has
        is fed by ``layer`` (directly, after an activation, or through a residual Add) once every
        parametric layer upstream of it has been matched. Exporters fold only a BatchNorm that
        reads the layer's output directly, which is then no node of its own: the graph has fewer
        BatchNorms left than the target, and the channel counts agree.
        """
        me = self.index[id(layer)]
        for group in self.remaining:
            if group.kind != "batchnorm" or adapt(norm, group)[0] is None:
                continue
            up = self.upstream.get(self.index[id(group)], set())
            if me in up and all(id(self.groups[k]) in self.matched for k in up):
                return group
        in_graph = sum(g.kind == "batchnorm" for g in self.remaining)
        in_target = sum(t.kind == "batchnorm" for t in later)
        return in_graph < in_target and _out_channels(layer) == (norm.shapes["gamma"] or (0,))[0]


def _out_channels(group: ParamGroup) -> int:
    """The number of output channels (features) of a conv, convtranspose or dense group."""
    if group.kind == "dense":
        return int(group.tensors["kernel"].shape[1])  # type: ignore[union-attr]
    w = group.tensors["weight"]
    assert w is not None
    return int(w.shape[1]) * int(group.attrs.get("group", 1)) if group.kind == "convtranspose" else int(w.shape[0])
