"""Dense (Gemm, MatMul with a following bias Add), convolutions and embedding lookups."""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.errors import UnsupportedLayerError
from converters.graph import Graph
from converters.rules.base import (
    ParamGroup,
    attrs_of,
    extractor,
    f32,
    float_const,
    initializers_of,
    node_name,
    other_input,
)


def _bias_after(graph: Graph, output: str, channels: int, claimed: set[str]) -> tuple[np.ndarray | None, Any | None, str]:
    """A constant per-channel bias added right after a MatMul/Conv, possibly behind one
    layout op (tf2onnx's Tensordot Reshape for Dense on >=3-D inputs, the Squeeze of
    Conv1D). Returns (bias, add node, the tensor leaving the group)."""
    node, tensor = graph.only_consumer(output), output
    if node is not None and node.op_type in ("Reshape", "Squeeze", "Unsqueeze", "Transpose"):
        tensor = node.output[0]
        node = graph.only_consumer(tensor)
    if node is None or node.op_type != "Add":
        return None, None, output
    value = float_const(graph, other_input(node, tensor))
    if value is None or value.size != channels:
        return None, None, output
    split_heads = tensor != output and graph.producer(tensor) is not None and graph.producer(tensor).op_type == "Reshape"
    if value.ndim > 1 and sum(d > 1 for d in value.shape) != 1 and not split_heads:
        return None, None, output  # a (heads, head_dim) bias only after a Reshape that split the features
    claimed.add(node_name(node))
    return f32(value.reshape(channels)), node, node.output[0]

def _flatten_origin(graph: Graph, tensor: str, in_features: int) -> tuple[str, tuple[int, ...]] | None:
    """If ``tensor`` is a feature map flattened into ``in_features``, its order and dims."""
    _, node = graph.trace_back(tensor)
    if node is None or node.op_type not in ("Reshape", "Flatten"):
        return None
    source = node.input[0]
    shape = graph.shapes.get(source)
    if shape is None or len(shape) < 3 or any(d is None for d in shape[1:]):
        return None
    dims = tuple(int(d) for d in shape[1:])
    if int(np.prod(dims)) != in_features or dims[-1] == in_features:
        return None  # collapses batch-like dims (Tensordot), not a feature-map flatten
    _, producer = graph.trace_back(source)
    if producer is not None and producer.op_type == "Transpose":
        perm = tuple(attrs_of(producer).get("perm", ()))
        if perm == (0, *range(2, len(shape)), 1):
            return "HWC", dims
    return "CHW", dims

def _unflatten_target(graph: Graph, tensor: str, out_features: int) -> tuple[str, tuple[int, ...]] | None:
    """If a dense output is reshaped into a feature map, the order its columns fill it:
    "CHW" (torch's view(C, H, W)) or "HWC" (Keras's Reshape((H, W, C)), which tf2onnx
    follows with a Transpose to channels-first)."""
    users = [u for u in graph.consumers.get(tensor, []) if u.op_type not in ("Shape",)]
    node = users[0] if len(users) == 1 else None
    while node is not None and node.op_type in ("Relu", "Identity", "Cast", "Sigmoid", "Tanh"):
        users = graph.consumers.get(node.output[0], [])
        node = users[0] if len(users) == 1 else None
    if node is None or node.op_type != "Reshape":
        return None
    shape = graph.shapes.get(node.output[0])
    if shape is None or len(shape) < 4 or any(d is None for d in shape[1:]):
        return None
    dims = tuple(int(d) for d in shape[1:])
    if int(np.prod(dims)) != out_features:
        return None
    users = graph.consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Transpose":
        perm = tuple(attrs_of(users[0]).get("perm", ()))
        if perm == (0, len(shape) - 1, *range(1, len(shape) - 1)):
            return "HWC", dims
    return "CHW", dims

def _dense_group(graph: Graph, node: Any, kernel: np.ndarray, bias: np.ndarray | None, sources: frozenset[str],
                 claimed: set[str]) -> ParamGroup:
    nodes = [node_name(node)]
    output = node.output[0]
    if bias is None:
        bias, add, output = _bias_after(graph, node.output[0], kernel.shape[1], claimed)
        if add is not None:
            nodes.append(node_name(add))
            sources |= initializers_of(graph, *add.input)
    return ParamGroup("dense", nodes, {"kernel": f32(kernel), "bias": bias},
                      {"flatten": _flatten_origin(graph, node.input[0], kernel.shape[0]),
                       "unflatten": _unflatten_target(graph, output, kernel.shape[1])},
                      sources, input=node.input[0], output=output)

@extractor("Gemm")
def _gemm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    b = float_const(graph, node.input[1])
    if b is None:
        return None
    a = attrs_of(node)
    if a.get("transA", 0):
        raise UnsupportedLayerError(f"Gemm node {node_name(node)} transposes its input (transA=1); not supported")
    kernel = (b.T if a.get("transB", 0) else b) * a.get("alpha", 1.0)
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = graph.const(bias_name)
    if bias is not None:
        bias = f32(np.broadcast_to(bias * a.get("beta", 1.0), (kernel.shape[1],)))
    return _dense_group(graph, node, kernel, bias, initializers_of(graph, node.input[1], bias_name), claimed)

@extractor("MatMul")
def _matmul(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    w = float_const(graph, node.input[1])
    if w is None or w.ndim != 2:
        return None
    return _dense_group(graph, node, w, None, initializers_of(graph, node.input[1]), claimed)

def _conv_like(kind: str, graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    w = float_const(graph, node.input[1])
    if w is None:
        return None
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = graph.const(bias_name)
    channels = w.shape[0] if kind == "conv" else w.shape[1] * int(attrs_of(node).get("group", 1))
    nodes, output = [node_name(node)], node.output[0]
    sources = initializers_of(graph, node.input[1], bias_name)
    if bias is None:
        bias, add, output = _bias_after(graph, node.output[0], channels, claimed)
        if add is not None:
            nodes.append(node_name(add))
            sources |= initializers_of(graph, *add.input)
    a = attrs_of(node)
    spatial = w.ndim - 2
    attrs = {"group": int(a.get("group", 1)), "strides": tuple(a.get("strides", (1,) * spatial)),
             "dilations": tuple(a.get("dilations", (1,) * spatial)), "pads": tuple(a.get("pads", ())),
             "auto_pad": a.get("auto_pad", "NOTSET"), "spatial": spatial}
    return ParamGroup(kind, nodes, {"weight": f32(w), "bias": None if bias is None else f32(bias)},
                      attrs, sources, input=node.input[0], output=output)

@extractor("Conv")
def _conv(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _conv_like("conv", graph, node, claimed)

@extractor("ConvTranspose")
def _conv_transpose(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _conv_like("convtranspose", graph, node, claimed)

@extractor("Gather")
def _embedding(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    table = float_const(graph, node.input[0])
    if table is None or table.ndim != 2 or int(attrs_of(node).get("axis", 0)) != 0:
        return None
    return ParamGroup("embedding", [node_name(node)], {"table": f32(table)}, {}, initializers_of(graph, node.input[0]),
                      input=node.input[1], output=node.output[0])
