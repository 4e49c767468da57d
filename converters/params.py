"""Walk a folded ONNX graph into ParamGroups: one per parametric layer, canonical layout.

One extractor per ONNX op type, registered with ``@extractor``; a parametric node
that no extractor handles raises UnsupportedLayerError listing the supported ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converters.errors import UnsupportedLayerError
from converters.graph import Graph


@dataclass
class ParamGroup:
    """The parameters of one layer as found in the graph, in canonical layout."""

    kind: str  # "dense" | "conv" | "batchnorm"
    nodes: list[str]
    tensors: dict[str, np.ndarray | None]
    attrs: dict[str, Any] = field(default_factory=dict)
    sources: frozenset[str] = frozenset()  # initializers these tensors came from

    @property
    def label(self) -> str:
        return f"{self.kind} {'+'.join(self.nodes)}"

    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        return {k: (tuple(v.shape) if v is not None else None) for k, v in self.tensors.items()}


Extractor = Callable[[Graph, Any, set[str]], "ParamGroup | None"]
_EXTRACTORS: dict[str, Extractor] = {}


def extractor(op_type: str) -> Callable[[Extractor], Extractor]:
    def decorate(fn: Extractor) -> Extractor:
        if op_type in _EXTRACTORS:
            raise ValueError(f"an extractor for ONNX op {op_type!r} is registered twice")
        _EXTRACTORS[op_type] = fn
        return fn

    return decorate


def supported_ops() -> list[str]:
    return sorted(_EXTRACTORS)


def _node_name(node: Any) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _sources(graph: Graph, *names: str) -> frozenset[str]:
    return frozenset().union(*(graph.provenance.get(n, frozenset()) for n in names if n))


def _bias_after(graph: Graph, output: str, channels: int, channel_axis_rank: int | None,
                claimed: set[str]) -> tuple[np.ndarray | None, Any | None]:
    """A constant bias added right after a MatMul/Conv (what tf2onnx and dynamo emit)."""
    add = graph.only_consumer(output)
    if add is None or add.op_type != "Add":
        return None, None
    other = add.input[1] if add.input[0] == output else add.input[0]
    value = graph.const(other)
    if value is None or value.size != channels or not np.issubdtype(value.dtype, np.floating):
        return None, None
    if channel_axis_rank is not None and value.ndim > 1:
        # conv bias must broadcast over channels only: shape (1, M, 1, 1) or (M, 1, 1)
        if value.shape[-channel_axis_rank - 1] != channels:
            return None, None
    claimed.add(_node_name(add))
    return value.reshape(channels).astype(np.float32), add


def _flatten_origin(graph: Graph, tensor: str) -> tuple[str, tuple[int, ...]] | None:
    """If ``tensor`` is a flattened feature map, its flatten order and dims."""
    name, node = graph.trace_back(tensor)
    if node is None or node.op_type not in ("Reshape", "Flatten"):
        return None
    source = node.input[0]
    shape = graph.shapes.get(source)
    if shape is None or len(shape) < 3 or any(d is None for d in shape[1:]):
        return None
    dims = tuple(int(d) for d in shape[1:])
    _, producer = graph.trace_back(source)
    if producer is not None and producer.op_type == "Transpose":
        perm = tuple(_attrs(producer).get("perm", ()))
        rank = len(shape)
        if perm == (0, *range(2, rank), 1):
            return "HWC", dims
    return "CHW", dims


@extractor("Gemm")
def _gemm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    b = graph.const(node.input[1])
    if b is None:
        return None
    a = _attrs(node)
    if a.get("transA", 0):
        raise UnsupportedLayerError(f"Gemm node {_node_name(node)} transposes its input (transA=1); not supported")
    kernel = (b.T if a.get("transB", 0) else b) * a.get("alpha", 1.0)
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = graph.const(bias_name)
    if bias is not None:
        bias = np.broadcast_to(bias * a.get("beta", 1.0), (kernel.shape[1],)).astype(np.float32)
    return ParamGroup("dense", [_node_name(node)], {"kernel": kernel.astype(np.float32), "bias": bias},
                      {"flatten": _flatten_origin(graph, node.input[0])},
                      _sources(graph, node.input[1], bias_name))


@extractor("MatMul")
def _matmul(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    w = graph.const(node.input[1])
    if w is None or w.ndim != 2:
        return None
    bias, add = _bias_after(graph, node.output[0], w.shape[1], None, claimed)
    nodes = [_node_name(node)] + ([_node_name(add)] if add is not None else [])
    bias_src = (set(add.input) - {node.output[0]}) if add is not None else set()
    return ParamGroup("dense", nodes, {"kernel": w.astype(np.float32), "bias": bias},
                      {"flatten": _flatten_origin(graph, node.input[0])},
                      _sources(graph, node.input[1], *bias_src))


@extractor("Conv")
def _conv(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    w = graph.const(node.input[1])
    if w is None:
        return None
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = graph.const(bias_name)
    nodes = [_node_name(node)]
    sources = _sources(graph, node.input[1], bias_name)
    if bias is None:
        bias, add = _bias_after(graph, node.output[0], w.shape[0], w.ndim - 2, claimed)
        if add is not None:
            nodes.append(_node_name(add))
            sources |= _sources(graph, *(set(add.input) - {node.output[0]}))
    a = _attrs(node)
    spatial = w.ndim - 2
    return ParamGroup(
        "conv", nodes, {"weight": w.astype(np.float32), "bias": None if bias is None else bias.astype(np.float32)},
        {"group": int(a.get("group", 1)), "strides": tuple(a.get("strides", (1,) * spatial)),
         "dilations": tuple(a.get("dilations", (1,) * spatial)), "pads": tuple(a.get("pads", ())),
         "auto_pad": a.get("auto_pad", b"NOTSET"), "spatial": spatial},
        sources,
    )


@extractor("BatchNormalization")
def _batchnorm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    values = [graph.const(n) for n in node.input[1:5]]
    if any(v is None for v in values):
        return None
    gamma, beta, mean, var = (v.astype(np.float32) for v in values)  # type: ignore[union-attr]
    a = _attrs(node)
    return ParamGroup("batchnorm", [_node_name(node)], {"gamma": gamma, "beta": beta, "mean": mean, "var": var},
                      {"epsilon": float(a.get("epsilon", 1e-5)), "momentum": float(a.get("momentum", 0.9))},
                      _sources(graph, *node.input[1:5]))


def _per_channel(graph: Graph, node: Any, tensor: str) -> tuple[np.ndarray, str] | None:
    """The float per-channel constant operand of a binary op whose other operand is ``tensor``."""
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    value = graph.const(other)
    if value is None or not np.issubdtype(value.dtype, np.floating) or value.size < 2:
        return None
    if sum(d > 1 for d in value.shape) != 1:
        return None  # not a per-channel vector
    return value.reshape(-1).astype(np.float32), other


@extractor("Mul")
def _channel_affine(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """``x * scale + shift`` per channel: a BatchNorm whose statistics the exporter folded
    (tf2onnx emits this when the BatchNorm cannot be folded into a preceding conv)."""
    data = next((i for i in node.input if graph.const(i) is None), None)
    if data is None:
        return None
    scale = _per_channel(graph, node, data)
    add = graph.only_consumer(node.output[0])
    if scale is None or add is None or add.op_type != "Add":
        return None
    shift = _per_channel(graph, add, node.output[0])
    if shift is None or shift[0].shape != scale[0].shape:
        return None
    claimed.add(_node_name(add))
    c = scale[0].shape[0]
    return ParamGroup("batchnorm", [_node_name(node), _node_name(add)],
                      {"gamma": scale[0], "beta": shift[0], "mean": np.zeros(c, np.float32), "var": None},
                      {"folded_statistics": True}, _sources(graph, scale[1], shift[1]))


def param_groups(graph: Graph) -> list[ParamGroup]:
    """Parametric layers of ``graph`` in topological (forward) order."""
    groups: list[ParamGroup] = []
    claimed: set[str] = set()  # nodes folded into an earlier group (bias Adds)
    for node in graph.nodes:
        name = _node_name(node)
        if name in claimed:
            continue
        fn = _EXTRACTORS.get(node.op_type)
        group = fn(graph, node, claimed) if fn else None
        if group is not None:
            groups.append(group)
            continue
        weights = [i for i in node.input if _is_weight(graph, i)]
        if weights:
            shapes = {w: tuple(graph.consts[w].shape) for w in weights}
            raise UnsupportedLayerError(
                f"ONNX node {name!r} ({node.op_type}) takes parameters {shapes} that no rule handles; "
                f"supported parametric ops: {', '.join(supported_ops())}"
            )
    return groups


def _is_weight(graph: Graph, name: str) -> bool:
    """A float constant with more than one element: a learned tensor, not a shape or scalar."""
    value = graph.const(name)
    return value is not None and np.issubdtype(value.dtype, np.floating) and value.size > 1
