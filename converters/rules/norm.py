"""BatchNorm, LayerNorm and GroupNorm: as ONNX nodes, folded into Mul/Add, or decomposed into elementary ops."""

from __future__ import annotations

from typing import Any

import numpy as np

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
    per_channel,
)


@extractor("BatchNormalization")
def _batchnorm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    values = [float_const(graph, n) for n in node.input[1:5]]
    if any(v is None for v in values):
        return None
    gamma, beta, mean, var = (f32(v) for v in values)  # type: ignore[arg-type]
    a = attrs_of(node)
    return ParamGroup("batchnorm", [node_name(node)], {"gamma": gamma, "beta": beta, "mean": mean, "var": var},
                      {"epsilon": float(a.get("epsilon", 1e-5)), "momentum": float(a.get("momentum", 0.9))},
                      initializers_of(graph, *node.input[1:5]), input=node.input[0], output=node.output[0])

@extractor("LayerNormalization")
def _layernorm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    gamma = float_const(graph, node.input[1])
    if gamma is None:
        return None
    bias_name = node.input[2] if len(node.input) > 2 else ""
    beta = float_const(graph, bias_name)
    a = attrs_of(node)
    return ParamGroup("layernorm", [node_name(node)],
                      {"gamma": f32(gamma.reshape(-1)),
                       "beta": f32(beta.reshape(-1)) if beta is not None else np.zeros(gamma.size, np.float32)},
                      {"epsilon": float(a.get("epsilon", 1e-5)), "axis": int(a.get("axis", -1))},
                      initializers_of(graph, node.input[1], bias_name), input=node.input[0], output=node.output[0])

@extractor("InstanceNormalization")
def _groupnorm_torch(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """torch's GroupNorm: Reshape -> InstanceNormalization(ones, zeros) -> Reshape -> Mul -> Add."""
    scale, bias = float_const(graph, node.input[1]), float_const(graph, node.input[2])
    if scale is None or bias is None:
        return None
    nodes, sources = [node_name(node)], initializers_of(graph, node.input[1], node.input[2])
    tensor = node.output[0]
    reshape = graph.only_consumer(tensor)
    if reshape is not None and reshape.op_type == "Reshape":
        tensor = reshape.output[0]
    mul = graph.only_consumer(tensor)
    gamma = per_channel(graph, mul, tensor) if mul is not None and mul.op_type == "Mul" else None
    if gamma is None or not (np.all(scale == 1) and np.all(bias == 0)):
        return ParamGroup("instancenorm", nodes, {"gamma": f32(scale), "beta": f32(bias)},
                          {"epsilon": float(attrs_of(node).get("epsilon", 1e-5))}, sources,
                          input=node.input[0], output=node.output[0])
    claimed.add(node_name(mul))
    nodes.append(node_name(mul))
    sources |= initializers_of(graph, gamma[1])
    add = graph.only_consumer(mul.output[0])
    beta = per_channel(graph, add, mul.output[0]) if add is not None and add.op_type == "Add" else None
    output = mul.output[0]
    if beta is not None:
        claimed.add(node_name(add))
        nodes.append(node_name(add))
        sources |= initializers_of(graph, beta[1])
        output = add.output[0]
    c = gamma[0].shape[0]
    return ParamGroup("groupnorm", nodes,
                      {"gamma": gamma[0], "beta": beta[0] if beta is not None else np.zeros(c, np.float32)},
                      {"epsilon": float(attrs_of(node).get("epsilon", 1e-5)), "groups": int(scale.size)},
                      sources, input=node.input[0], output=output)

def _decomposed_norm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """Keras LayerNormalization / GroupNormalization as tf2onnx writes them:
    inv = Reciprocal(Sqrt(var + eps)) * gamma; y = x * inv + (beta - mean * inv)."""
    data = next((i for i in node.input if graph.const(i) is None), None)
    gamma_name = other_input(node, data) if data else ""
    gamma = float_const(graph, gamma_name)
    if data is None or gamma is None or gamma.size < 2:
        return None
    _, recip = graph.trace_back(data)
    if recip is None or recip.op_type not in ("Reciprocal", "Div"):
        return None
    sqrt = graph.producer(recip.input[-1])
    add_eps = graph.producer(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
    if add_eps is None or add_eps.op_type != "Add":
        return None
    eps_value = next((graph.consts[i] for i in add_eps.input if i in graph.consts), None)
    channels = gamma.size
    # beta: an Add of a constant with ``channels`` elements within two steps downstream
    beta, beta_name, beta_node, frontier = None, "", None, [node.output[0]]
    for _ in range(3):
        nxt = []
        for t in frontier:
            for user in graph.consumers.get(t, []):
                if user.op_type == "Add":
                    value = float_const(graph, other_input(user, t))
                    if value is not None and value.size == channels:
                        beta, beta_name, beta_node = value, other_input(user, t), user
                nxt.extend(user.output)
        if beta is not None:
            break
        frontier = nxt
    groups = gamma.shape[-2] if sum(d > 1 for d in gamma.shape) >= 2 else None
    kind = "groupnorm" if groups else "layernorm"
    nodes = [node_name(node)] + ([node_name(beta_node)] if beta_node is not None else [])
    if beta_node is not None:
        claimed.add(node_name(beta_node))
    # the normalised tensor leaves through the last Add of the pattern
    attrs: dict[str, Any] = {"epsilon": float(np.asarray(eps_value).reshape(-1)[0]) if eps_value is not None else None}
    if groups:
        attrs["groups"] = int(groups)
    return ParamGroup(kind, nodes, {"gamma": f32(gamma.reshape(-1)),
                                    "beta": f32(beta.reshape(-1)) if beta is not None else np.zeros(channels, np.float32)},
                      attrs, initializers_of(graph, gamma_name, beta_name), input="", output="")

@extractor("Mul")
def _mul(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _decomposed_norm(graph, node, claimed) or _channel_affine(graph, node, claimed)

def _channel_affine(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """``x * scale + shift`` per channel: a BatchNorm whose statistics the exporter folded
    (tf2onnx emits this when the BatchNorm cannot be folded into a preceding conv)."""
    data = next((i for i in node.input if graph.const(i) is None), None)
    if data is None:
        return None
    scale = per_channel(graph, node, data)
    add = graph.only_consumer(node.output[0])
    if scale is None or add is None or add.op_type != "Add":
        return None
    shift = per_channel(graph, add, node.output[0])
    if shift is None or shift[0].shape != scale[0].shape:
        return None
    claimed.add(node_name(add))
    c = scale[0].shape[0]
    return ParamGroup("batchnorm", [node_name(node), node_name(add)],
                      {"gamma": scale[0], "beta": shift[0], "mean": np.zeros(c, np.float32), "var": None},
                      {"folded_statistics": True}, initializers_of(graph, scale[1], shift[1]), input=data,
                      output=add.output[0])

@extractor("SkipLayerNormalization")
def _skip_layernorm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """ONNX Runtime's LayerNorm(input + skip [+ bias]) (com.microsoft; its offline optimiser writes it).
    The optional bias is the preceding dense layer's, moved here: ``attrs["moved_bias"]`` carries it
    back to that layer (``converters.params``)."""
    gamma = float_const(graph, node.input[2]) if len(node.input) > 2 else None
    if gamma is None:
        return None
    beta_name = node.input[3] if len(node.input) > 3 else ""
    bias_name = node.input[4] if len(node.input) > 4 else ""
    beta, bias = float_const(graph, beta_name), float_const(graph, bias_name)
    attrs: dict[str, Any] = {"epsilon": float(attrs_of(node).get("epsilon", 1e-12)), "axis": -1}
    if bias is not None:
        attrs["moved_bias"] = (f32(bias.reshape(-1)), initializers_of(graph, bias_name), tuple(node.input[:2]))
    return ParamGroup("layernorm", [node_name(node)],
                      {"gamma": f32(gamma.reshape(-1)),
                       "beta": f32(beta.reshape(-1)) if beta is not None else np.zeros(gamma.size, np.float32)},
                      attrs, initializers_of(graph, node.input[2], beta_name), input=node.input[0],
                      output=node.output[0])
