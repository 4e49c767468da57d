"""What tf2onnx spells out in elementary ops, found again as one step of the twin.

- A Keras ``LayerNormalization``: the porter's group holds its scale and shift (the ``mul`` and
  ``add_1`` nodes); the mean, variance and the final sum around them are the layer too, so the
  group is given the tensor it normalises and the sum it leaves through.
- GELU (``x * 0.5 * erfc(-x / sqrt(2))``, or the tanh approximation): the element-wise
  subgraph between ``x`` and its result, recognised by its values (``_gelu``), becomes one
  ``gelu`` step.
- ``ones_like(x)`` (ConstantOfShape of Shape(x)) becomes one ``fill_like`` step reading ``x``
  itself, not its shape.

A step that is a pattern is a ``ParamGroup`` without tensors (kinds ``gelu`` and ``fill_like``),
made only for a target that has a handler for it.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from converters.codegen.handlers import group, group_handler, node
from converters.codegen.keras_attention import prepare
from converters.codegen.lower import Lowering, group_input
from converters.graph import Graph
from converters.params import ParamGroup
from converters.rules.base import attrs_of, node_name

_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Neg", "Erf", "Tanh", "Pow", "Sqrt"}
_MAX_NODES = 12  # the tanh form has 9 element-wise nodes, the erf forms 5 or 6


def keras_patterns(graph: Graph, groups: list[ParamGroup], target: str,
                   hints: dict[str, dict[str, Any]] | None = None) -> list[ParamGroup]:
    """``groups`` with each decomposed LayerNorm's and bias-less sequence Dense's input and output set
    (for a torch ``target``, also each attention's, ``keras_attention.prepare``), the biases
    ``hints`` name (``keras_hints``), and the patterns the ``target`` has a handler for added as
    groups of their own."""
    for g in groups:
        if g.kind == "layernorm" and not g.output:
            span = layernorm_span(graph, g)
            if span is not None:
                g.input, g.output = span
        projections = g.attrs.get("members", []) if g.kind == "attention" else [g] if g.kind == "dense" else []
        for dense in projections:
            span = tensordot_span(graph, dense)
            if span is not None:
                dense.input, dense.output = span
            if (hints or {}).get(_keras_layer(dense), {}).get("use_bias"):
                dense.attrs["use_bias"] = True  # a zero bias tf2onnx dropped: the twin has one too
        if g.kind == "attention":
            g.output = g.attrs["members"][-1].output  # the output projection's, after its Tensordot
    if target == "torch":
        prepare(graph, groups)
    taken = {g.output for g in groups}
    extra: list[ParamGroup] = []
    if group_handler("gelu", target) is not None:
        extra += [p for n in graph.nodes if n.op_type in ("Erf", "Tanh") and (p := gelu(graph, n, taken))]
    if group_handler("fill_like", target) is not None:
        extra += [p for n in graph.nodes if n.op_type == "ConstantOfShape" and (p := fill_like(graph, n))]
    return groups + extra


def _keras_layer(g: ParamGroup) -> str:
    """The Keras layer a group's first node belongs to (a MultiHeadAttention's, for its projections)."""
    parts = [p for p in g.nodes[0].split("/")[1:-1] if p != "Tensordot"]
    return re.sub(r"_\d+$", "", parts[0]) if parts else ""


def layernorm_span(graph: Graph, g: ParamGroup) -> tuple[str, str] | None:
    """(input, output) of a LayerNorm that tf2onnx decomposed: ``y = x * inv + (beta - mean * inv)``
    with ``inv = gamma / sqrt(var + eps)`` (the group's ``mul``); None for any other graph."""
    scale = next((n for n in graph.nodes if node_name(n) == g.nodes[0]), None)
    if scale is None or scale.op_type != "Mul":
        return None
    users = graph.consumers.get(scale.output[0], [])
    times_x = [u for u in users if u.op_type == "Mul" and _mean_of(graph, u, scale.output[0]) is None]
    times_mean = [u for u in users if u.op_type == "Mul" and _mean_of(graph, u, scale.output[0]) is not None]
    if len(times_x) != 1 or len(times_mean) != 1:
        return None
    x = next(i for i in times_x[0].input if i != scale.output[0])
    if _mean_of(graph, times_mean[0], scale.output[0]) != x:
        return None
    shifted = times_mean[0].output[0]
    if len(g.nodes) > 1:  # the shift: beta - mean * inv
        shifted = next((n.output[0] for n in graph.nodes if node_name(n) == g.nodes[1]), "")
    total = [u for u in graph.consumers.get(times_x[0].output[0], []) if u.op_type == "Add" and shifted in u.input]
    return (x, total[0].output[0]) if len(total) == 1 else None


def tensordot_span(graph: Graph, g: ParamGroup) -> tuple[str, str] | None:
    """(sequence, result) of a Keras Dense without a bias on a sequence: tf2onnx's Tensordot, a
    Reshape to 2-D, the MatMul and a Reshape back, is one Dense; None for any other layer."""
    before, after = graph.producer(g.input), graph.only_consumer(g.output)
    if before is None or after is None or before.op_type != "Reshape" or after.op_type != "Reshape" or \
            "Tensordot" not in node_name(before):
        return None
    rank = len(graph.shapes.get(before.input[0]) or ())
    return (str(before.input[0]), str(after.output[0])) if rank == len(graph.shapes.get(after.output[0]) or ()) > 2 \
        else None


def _mean_of(graph: Graph, mul: Any, inv: str) -> str | None:
    """The tensor whose mean the other operand of ``mul`` negates (``-mean(x)``), or None."""
    other = next((i for i in mul.input if i != inv), "")
    neg = graph.producer(other)
    mean = graph.producer(neg.input[0]) if neg is not None and neg.op_type == "Neg" else None
    return str(mean.input[0]) if mean is not None and mean.op_type == "ReduceMean" else None


# -- GELU --------------------------------------------------------------------------------
def _exact(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu(graph: Graph, erf: Any, taken: set[str]) -> ParamGroup | None:
    """The GELU around an Erf or Tanh node: the element-wise subgraph from its one data input ``x``
    to the last tensor of the single-consumer chain below the node that computes GELU(x) (within
    1e-6 on [-6, 6]); None if there is none."""
    x = _source(graph, erf.input[0], taken)
    if x is None:
        return None
    chain, tensor = [erf], erf.output[0]
    while len(chain) < _MAX_NODES:
        users = graph.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type not in _ELEMENTWISE or tensor in graph.outputs:
            break
        chain.append(users[0])
        tensor = users[0].output[0]
    for end in range(len(chain), 0, -1):
        nodes = _subgraph(graph, x, chain[end - 1].output[0])
        if nodes is None or not _closed(graph, nodes, chain[end - 1].output[0]):
            continue
        values = _evaluate(graph, nodes, x)
        if values is None:
            continue
        for approximate, fn in (("none", _exact), ("tanh", _tanh)):
            if np.allclose(values, fn(_GRID), rtol=1e-6, atol=1e-6):
                names = [node_name(n) for n in nodes]
                return ParamGroup("gelu", names, {}, {"approximate": approximate}, input=x,
                                  output=chain[end - 1].output[0])
    return None


_GRID = np.linspace(-6.0, 6.0, 121)


def _source(graph: Graph, tensor: str, taken: set[str]) -> str | None:
    """The one data tensor upstream of ``tensor`` through element-wise ops on scalar constants
    (stopping at a layer's output); None if there are several."""
    leaves: set[str] = set()
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        n = graph.producer(t)
        if t in taken or n is None or n.op_type not in _ELEMENTWISE or len(seen) > _MAX_NODES or \
                any(graph.const(i) is not None and graph.const(i).size != 1 for i in n.input):  # type: ignore[union-attr]
            leaves.add(t)
            continue
        if node_name(n) in seen:
            continue
        seen.add(node_name(n))
        stack += [i for i in n.input if i and graph.const(i) is None]
    return next(iter(leaves)) if len(leaves) == 1 else None


def _subgraph(graph: Graph, x: str, out: str) -> list[Any] | None:
    """The nodes on the paths from ``x`` to ``out`` in graph order; None if one reads another tensor
    that is not a scalar constant."""
    found: dict[str, Any] = {}
    stack = [out]
    while stack:
        t = stack.pop()
        if t == x:
            continue
        n = graph.producer(t)
        if n is None or n.op_type not in _ELEMENTWISE or len(found) > _MAX_NODES:
            return None
        if node_name(n) in found:
            continue
        found[node_name(n)] = n
        for i in n.input:
            value = graph.const(i)
            if value is None:
                stack.append(i)
            elif value.size != 1:
                return None
    order = {node_name(n): k for k, n in enumerate(graph.nodes)}
    return sorted(found.values(), key=lambda n: order[node_name(n)])


def _closed(graph: Graph, nodes: list[Any], out: str) -> bool:
    """Whether no tensor inside ``nodes`` but ``out`` is read outside them."""
    names = {node_name(n) for n in nodes}
    return all(all(node_name(u) in names for u in graph.consumers.get(o, [])) and o not in graph.outputs
               for n in nodes for o in n.output if o != out)


def _evaluate(graph: Graph, nodes: list[Any], x: str) -> np.ndarray | None:
    values: dict[str, np.ndarray] = {x: _GRID}
    fns = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}
    with np.errstate(all="ignore"):
        for n in nodes:
            args = [values[i] if i in values else np.asarray(graph.const(i), np.float64).reshape(()) for i in n.input]
            if n.op_type in fns:
                values[n.output[0]] = fns[n.op_type](args[0], args[1])
            elif n.op_type == "Erf":
                values[n.output[0]] = np.vectorize(math.erf)(args[0])
            else:
                values[n.output[0]] = {"Neg": np.negative, "Tanh": np.tanh, "Sqrt": np.sqrt}[n.op_type](args[0])
    out = values[nodes[-1].output[0]]
    return out if np.all(np.isfinite(out)) else None


# -- ones_like ---------------------------------------------------------------------------
def fill_like(graph: Graph, n: Any) -> ParamGroup | None:
    """``ConstantOfShape(Shape(x))``: a tensor of x's shape filled with one value."""
    from onnx import numpy_helper

    shape = graph.producer(n.input[0])
    if shape is None or shape.op_type != "Shape" or attrs_of(shape).get("start", 0) or "end" in attrs_of(shape):
        return None
    value = next((numpy_helper.to_array(a.t) for a in n.attribute if a.name == "value"), np.zeros(1, np.float32))
    return ParamGroup("fill_like", [node_name(n)], {},
                      {"value": value.reshape(-1)[0].item(), "dtype": str(value.dtype)},
                      input=str(shape.input[0]), output=str(n.output[0]))


# -- handlers (torch) --------------------------------------------------------------------
@group("gelu", target="torch")
def _gelu(low: Lowering, g: ParamGroup) -> None:
    var, p = low.vars[group_input(low.graph, g)]
    low.vars[g.output] = (low.emit("gelu", [var], {"approximate": g.attrs["approximate"]}, "gelu"), p)


@group("fill_like", target="torch")
def _fill_like(low: Lowering, g: ParamGroup) -> None:
    var, p = low.vars[group_input(low.graph, g)]
    low.vars[g.output] = (low.emit("fill_like", [var], dict(g.attrs), "fill"), p)


@node("CumSum")
def _cumsum(low: Lowering, n: Any) -> None:
    var, p = low.vars[n.input[0]]
    axis = low.graph.const(n.input[1])
    a = attrs_of(n)
    if axis is None or a.get("exclusive", 0) or a.get("reverse", 0):
        from converters.errors import UnsupportedLayerError

        raise UnsupportedLayerError(f"cannot generate code for ONNX node {node_name(n)!r} (CumSum): an axis "
                                    "computed at run time, exclusive or reverse; only a plain running sum is generated")
    rank = len(p)
    low.vars[n.output[0]] = (low.emit("cumsum", [var], {"axis": p[int(np.asarray(axis).reshape(-1)[0]) % rank]},
                                      low.label(n)), p)
