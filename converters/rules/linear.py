"""Dense (Gemm, MatMul with a following bias Add), convolutions and embedding lookups; also ONNX Runtime's
fused variants (FusedGemm, FusedMatMul, FusedConv) and the dense bias it moves into BiasGelu/FastGelu."""

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


def _bias_after(graph: Graph, output: str, channels: int, claimed: set[str],
                spatial: int = 0) -> tuple[np.ndarray | None, Any | None, str]:
    """A constant per-channel bias added right after a MatMul/Conv, possibly behind one
    layout op (tf2onnx's Tensordot Reshape for Dense on >=3-D inputs, the Squeeze of
    Conv1D). Right after a conv with ``spatial`` dims, the constant must be shaped to
    broadcast over channels (C, 1, 1) / (1, C, 1, 1). Returns (bias, add node, the
    tensor leaving the group)."""
    node, tensor = graph.only_consumer(output), output
    if node is not None and node.op_type in ("Reshape", "Squeeze", "Unsqueeze", "Transpose"):
        tensor = node.output[0]
        node = graph.only_consumer(tensor)
    if node is None or node.op_type != "Add":
        return None, None, output
    value = float_const(graph, other_input(node, tensor))
    if value is None or value.size != channels:
        return None, None, output
    if spatial and tensor == output and (value.ndim <= spatial or value.shape[value.ndim - spatial - 1] != channels):
        return None, None, output  # a conv's output is channels-first: a (C,) constant would add along W
    split_heads = tensor != output and graph.producer(tensor) is not None and graph.producer(tensor).op_type == "Reshape"
    if value.ndim > 1 and sum(d > 1 for d in value.shape) != 1 and not split_heads:
        return None, None, output  # a (heads, head_dim) bias only after a Reshape that split the features
    claimed.add(node_name(node))
    return f32(value.reshape(channels)), node, node.output[0]

def _flatten_origin(graph: Graph, tensor: str, in_features: int) -> tuple[str, tuple[int, ...]] | str | None:
    """If ``tensor`` is a feature map flattened into ``in_features``, its order and dims;
    "unknown" when it is a Reshape/Flatten of a tensor whose shape shape inference could not tell."""
    _, node = graph.trace_back(tensor)
    if node is None or node.op_type not in ("Reshape", "Flatten"):
        return None
    source = node.input[0]
    shape = graph.shapes.get(source)
    if shape is None or (len(shape) >= 3 and any(d is None for d in shape[1:])):
        return "unknown"
    if len(shape) < 3:
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
                 claimed: set[str], output: str = "", nodes: list[str] | None = None) -> ParamGroup:
    """A dense layer: ``kernel`` (in, out) read by ``node``, leaving through ``output`` (default: the node's)."""
    nodes = nodes or [node_name(node)]
    output = output or node.output[0]
    if bias is None:
        bias, add, output = _bias_after(graph, output, kernel.shape[1], claimed)
        if add is not None:
            nodes.append(node_name(add))
            sources |= initializers_of(graph, *add.input)
    flatten = _flatten_origin(graph, node.input[0], kernel.shape[0])
    return ParamGroup("dense", nodes, {"kernel": f32(kernel), "bias": bias},
                      {"flatten": None if flatten == "unknown" else flatten,
                       "flatten_unknown": flatten == "unknown",
                       "unflatten": _unflatten_target(graph, output, kernel.shape[1])},
                      sources, input=node.input[0], output=output)

def _split_sizes(graph: Graph, split: Any, total: int) -> list[int] | None:
    """The part sizes of a Split node along the last axis of a tensor with ``total`` features there."""
    a = attrs_of(split)
    rank = len(graph.shapes.get(split.input[0]) or ())
    if int(a.get("axis", 0)) not in (-1, rank - 1):
        return None
    sizes = graph.const(split.input[1]) if len(split.input) > 1 and split.input[1] else a.get("split")
    if sizes is None:
        parts = int(a.get("num_outputs", len(split.output)))
        sizes = [-(-total // parts)] * (parts - 1) + [total - (parts - 1) * -(-total // parts)]
    sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
    return sizes if sum(sizes) == total and len(sizes) == len(split.output) else None

def _dense_or_parts(graph: Graph, node: Any, kernel: np.ndarray, bias: np.ndarray | None, sources: frozenset[str],
                    claimed: set[str]) -> ParamGroup | list[ParamGroup]:
    """One dense layer, or several when a simplifier merged projections of the same input into
    one MatMul whose output is Split along the features (onnxsim does that to Q, K and V)."""
    split = graph.only_consumer(node.output[0])
    sizes = _split_sizes(graph, split, kernel.shape[1]) if bias is None and split is not None \
        and split.op_type == "Split" else None
    if sizes is None:
        return _dense_group(graph, node, kernel, bias, sources, claimed)
    claimed.add(node_name(split))
    starts = np.cumsum([0, *sizes])
    return [_dense_group(graph, node, kernel[:, starts[k]:starts[k + 1]], None, sources, claimed, out,
                         [f"{node_name(node)}[{starts[k]}:{starts[k + 1]}]", node_name(split)])
            for k, out in enumerate(split.output)]

@extractor("Gemm")
def _gemm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | list[ParamGroup] | None:
    b = float_const(graph, node.input[1])
    if b is None:
        return None
    a = attrs_of(node)
    if a.get("transA", 0):
        raise UnsupportedLayerError(f"{node.op_type} node {node_name(node)} transposes its input (transA=1); "
                                    "not supported")
    kernel = (b.T if a.get("transB", 0) else b) * a.get("alpha", 1.0)
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = graph.const(bias_name)
    if bias is not None:
        bias = f32(np.broadcast_to(bias * a.get("beta", 1.0), (kernel.shape[1],)))
    return _dense_or_parts(graph, node, kernel, bias, initializers_of(graph, node.input[1], bias_name), claimed)

@extractor("MatMul")
def _matmul(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | list[ParamGroup] | None:
    w = float_const(graph, node.input[1])
    if w is None or w.ndim != 2:
        return None
    return _dense_or_parts(graph, node, w, None, initializers_of(graph, node.input[1]), claimed)

@extractor("FusedGemm")
def _fused_gemm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | list[ParamGroup] | None:
    """ONNX Runtime's Gemm with a fused activation (com.microsoft; its offline optimiser writes it)."""
    return _gemm(graph, node, claimed)

@extractor("FusedMatMul")
def _fused_matmul(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | list[ParamGroup] | None:
    """ONNX Runtime's MatMul with transposes and a scale folded in (com.microsoft). The scale
    (``alpha``) is not the weight's: ORT folds constant weights before it fuses, so ``alpha`` is a
    scalar Mul of the activations around it (GELU's 0.5, attention's 1/sqrt(d)), which the
    target computes itself. The weight is ported without it (``attrs["moved_scale"]``)."""
    w = float_const(graph, node.input[1])
    if w is None:
        return None
    a = attrs_of(node)
    if w.ndim != 2 or a.get("transA", 0) or a.get("transBatchA", 0) or a.get("transBatchB", 0):
        raise UnsupportedLayerError(f"FusedMatMul node {node_name(node)} with a {w.shape} weight and attributes "
                                    f"{a}: only a 2-D weight, optionally transposed (transB), is supported")
    found = _dense_or_parts(graph, node, w.T if a.get("transB", 0) else w, None, initializers_of(graph, node.input[1]),
                            claimed)
    for group in found if isinstance(found, list) else [found]:
        group.attrs["moved_scale"] = float(a.get("alpha", 1.0))
    return found

def _conv_like(kind: str, graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    w = float_const(graph, node.input[1])
    if w is None:
        return None
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = graph.const(bias_name)
    channels = w.shape[0] if kind == "conv" else w.shape[1] * int(attrs_of(node).get("group", 1))
    nodes, output = [node_name(node)], node.output[0]
    sources = initializers_of(graph, node.input[1], bias_name)
    spatial = w.ndim - 2
    # a per-channel shift after the bias too: a BatchNorm's, once a simplifier folded its scale into W
    extra, add, output = _bias_after(graph, node.output[0], channels, claimed, spatial)
    if add is not None:
        nodes.append(node_name(add))
        sources |= initializers_of(graph, *add.input)
        bias = extra if bias is None else bias.reshape(-1) + extra
    a = attrs_of(node)
    attrs = {"group": int(a.get("group", 1)), "strides": tuple(a.get("strides", (1,) * spatial)),
             "dilations": tuple(a.get("dilations", (1,) * spatial)), "pads": tuple(a.get("pads", ())),
             "auto_pad": a.get("auto_pad", "NOTSET"), "spatial": spatial}
    return ParamGroup(kind, nodes, {"weight": f32(w), "bias": None if bias is None else f32(bias)},
                      attrs, sources, input=node.input[0], output=output)

@extractor("Conv")
def _conv(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _conv_like("conv", graph, node, claimed)

@extractor("FusedConv")
def _fused_conv(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """ONNX Runtime's Conv with a fused activation and residual input Z (com.microsoft)."""
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

def _moved_bias(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """ONNX Runtime's activation with the preceding dense layer's bias moved into it (com.microsoft
    BiasGelu, FastGelu): a group of kind "moved_bias" that ``converters.params`` gives back to that layer."""
    bias_name = node.input[1] if len(node.input) > 1 else ""
    bias = float_const(graph, bias_name)
    if bias is None:
        return None
    return ParamGroup("moved_bias", [node_name(node)], {}, {"moved_bias": (f32(bias.reshape(-1)),
                      initializers_of(graph, bias_name), (node.input[0],))}, input=node.input[0], output=node.output[0])

extractor("BiasGelu")(_moved_bias)
extractor("FastGelu")(_moved_bias)

def column_parts(group: ParamGroup, count: int) -> list[ParamGroup]:
    """A dense group cut into ``count`` equal parts along its output features (kernel columns, bias),
    for a projection that packs several (torch's key and value in one (E, 2E) MatMul)."""
    kernel, bias = group.tensors["kernel"], group.tensors["bias"]
    width = kernel.shape[1] // count  # type: ignore[union-attr]
    if width * count != kernel.shape[1]:  # type: ignore[union-attr]
        raise ValueError(f"{group.label}: {kernel.shape[1]} features do not split into {count} parts")  # type: ignore[union-attr]
    cuts = [(k * width, (k + 1) * width) for k in range(count)]
    return [ParamGroup("dense", [f"{group.nodes[0]}[{a}:{b}]", *group.nodes[1:]],
                       {"kernel": kernel[:, a:b], "bias": None if bias is None else bias[a:b]},  # type: ignore[index]
                       {**group.attrs, "unflatten": None}, group.sources, input=group.input, output=group.output)
            for a, b in cuts]
