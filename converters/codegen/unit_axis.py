"""Keras's 1-D layers as tf2onnx writes them: Conv1D, MaxPooling1D and AveragePooling1D are 2-D ops
on the sequence with a size-1 axis inserted (an Unsqueeze) and removed again (a Squeeze); between
two such layers tf2onnx's optimizer cancels the Squeeze against the next Unsqueeze, so a run of
1-D layers is one region of 4-D tensors. ``squeeze_unit_axes`` rewrites each such region as the
1-D graph it is, before lowering: the Unsqueeze and Squeeze go, convolutions and pools lose the
unit axis from their weights and attributes, Transposes and constant operands lose it too. Then
the generator writes ``nn.Conv1d`` / ``F.max_pool1d`` (``layers.Conv1D`` / ``MaxPooling1D``).

A region is rewritten only when every tensor in it is read by ops that leave the unit axis alone
(kernel, stride and dilation 1 along it, no pads); anything else leaves the graph as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from converters.graph import Graph
from converters.rules.base import attrs_of, node_name

_UNARY = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Softplus", "Identity", "Exp", "Abs", "Neg", "Sqrt",
          "Erf", "HardSwish", "Clip", "Dropout"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"}
_WINDOWED = {"Conv", "MaxPool", "AveragePool"}


def _axes(graph: Graph, node: Any) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        value = graph.const(node.input[1])
        return None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
    axes = attrs_of(node).get("axes")
    return None if axes is None else [int(a) for a in axes]


def _leaves_axis_alone(graph: Graph, node: Any, s: int) -> bool:
    """Whether a Conv or pool computes nothing along spatial axis ``s`` (a size-1 axis)."""
    a = attrs_of(node)
    if node.op_type == "Conv":
        w = graph.const(node.input[1])
        if w is None or w.ndim != 4 or w.shape[2 + s] != 1:
            return False
    elif list(a.get("kernel_shape", (0, 0)))[s] != 1:
        return False
    pads = list(a.get("pads") or (0, 0, 0, 0))
    return list(a.get("strides") or (1, 1))[s] == 1 and list(a.get("dilations") or (1, 1))[s] == 1 and \
        not pads[s] and not pads[s + 2]


def _region(graph: Graph, start: Any) -> tuple[dict[str, int], list[Any]] | None:
    """From an Unsqueeze of a 3-D tensor: each 4-D tensor of the region and its unit axis, and the
    region's nodes (the Unsqueeze, the ops, the Squeezes that end it); None if it cannot be rewritten."""
    axes = _axes(graph, start)
    if axes is None or len(axes) != 1 or len(graph.shapes.get(start.input[0]) or ()) != 3:
        return None
    unit = {str(start.output[0]): axes[0] % 4}
    nodes, queue, seen = [start], [str(start.output[0])], {node_name(start)}
    while queue:
        tensor = queue.pop()
        pos = unit[tensor]
        if tensor in graph.outputs:
            return None
        for n in graph.consumers.get(tensor, []):
            if node_name(n) in seen:
                continue
            out = None
            if n.op_type == "Transpose":
                out = list(attrs_of(n)["perm"]).index(pos)
            elif n.op_type in _WINDOWED:
                if n.input[0] != tensor or pos < 2 or not _leaves_axis_alone(graph, n, pos - 2):
                    return None
                out = pos
            elif n.op_type in _UNARY and n.input[0] == tensor:
                out = pos
            elif n.op_type in _BINARY:
                out = pos  # operands checked once the region is known
            elif n.op_type == "Squeeze" and [a % 4 for a in _axes(graph, n) or []] == [pos]:
                pass
            else:
                return None
            seen.add(node_name(n))
            nodes.append(n)
            if out is not None:
                unit[str(n.output[0])] = out
                queue.append(str(n.output[0]))
    for n in nodes:
        if n.op_type in _BINARY:
            for i in n.input:
                if i not in graph.consts and unit.get(i) != unit[str(n.output[0])]:
                    return None  # a data operand from outside the region, or another unit axis
                const = graph.consts.get(i)
                k = unit[str(n.output[0])] - (4 - const.ndim) if const is not None else -1
                if const is not None and k >= 0 and const.shape[k] != 1:
                    return None
    return unit, nodes


def _attr(node: Any, name: str, value: Any) -> None:
    from onnx import helper

    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def squeeze_unit_axes(graph: Graph) -> Graph:
    """``graph`` with each 1-D region (see the module's doc) rewritten as 1-D ops; the same graph
    when it has none."""
    from onnx import NodeProto

    regions = [r for n in graph.nodes if n.op_type == "Unsqueeze" and (r := _region(graph, n)) is not None]
    if not regions:
        return graph
    consts, provenance, shapes = dict(graph.consts), dict(graph.provenance), dict(graph.shapes)
    alias: dict[str, str] = {}  # an Unsqueeze's or Squeeze's output -> its input (the same 3-D tensor)
    replaced: dict[str, Any] = {}
    for unit, nodes in regions:
        for n in nodes:
            if n.op_type in ("Unsqueeze", "Squeeze"):
                alias[str(n.output[0])] = str(n.input[0])
                replaced[node_name(n)] = None
                continue
            pos = unit[str(n.input[0])] if n.input[0] in unit else unit[str(n.output[0])]
            new = NodeProto()
            new.CopyFrom(n)
            a = attrs_of(n)
            if n.op_type == "Transpose":
                _attr(new, "perm", [q - (q > pos) for q in a["perm"] if q != pos])
            elif n.op_type in _WINDOWED:
                s = pos - 2
                for key in ("kernel_shape", "strides", "dilations"):
                    if a.get(key):
                        _attr(new, key, [int(v) for i, v in enumerate(a[key]) if i != s])
                if a.get("pads"):
                    _attr(new, "pads", [int(a["pads"][1 - s]), int(a["pads"][3 - s])])
                if n.op_type == "Conv":
                    name = f"{n.input[1]}::1d"
                    consts[name] = np.squeeze(graph.consts[n.input[1]], axis=2 + s)
                    provenance[name] = graph.provenance.get(n.input[1], frozenset())
                    new.input[1] = name
            elif n.op_type in _BINARY:
                for k, i in enumerate(n.input):
                    const = graph.consts.get(i)
                    if const is not None and pos - (4 - const.ndim) >= 0:
                        name = f"{i}::1d"
                        consts[name] = np.squeeze(const, axis=pos - (4 - const.ndim))
                        provenance[name] = graph.provenance.get(i, frozenset())
                        new.input[k] = name
            replaced[node_name(n)] = new
        for tensor, pos in unit.items():
            if shapes.get(tensor) is not None:
                shapes[tensor] = tuple(d for i, d in enumerate(shapes[tensor]) if i != pos)

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    nodes = []
    for n in graph.nodes:
        new = replaced.get(node_name(n), n) if node_name(n) in replaced else n
        if new is None:
            continue
        if any(resolve(i) != i for i in new.input):
            if new is n:
                new = NodeProto()
                new.CopyFrom(n)
            for k, i in enumerate(new.input):
                new.input[k] = resolve(i)
        nodes.append(new)
    return dataclasses.replace(graph, nodes=nodes, consts=consts, provenance=provenance, shapes=shapes,
                               producers={}, consumers={}).index()
