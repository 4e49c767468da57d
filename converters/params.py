"""Walk a folded ONNX graph into ParamGroups: one per parametric layer, canonical layout.

One extractor per ONNX op type, registered with ``@extractor``; a parametric node
that no extractor handles raises UnsupportedLayerError listing the supported ops.

Canonical (ONNX) layouts per kind:
  dense          kernel (in, out), bias (out,)
  conv           weight (M, C/g, *k), bias (M,)
  convtranspose  weight (C, M/g, *k), bias (M,)
  batchnorm      gamma, beta, mean, var (C,)   (var None: statistics folded by the exporter)
  layernorm      gamma, beta (C,)
  groupnorm      gamma, beta (C,)
  embedding      table (N, D)
  lstm           W (dirs, 4H, I), R (dirs, 4H, H), B (dirs, 8H); gates i, o, f, c
  gru            W (dirs, 3H, I), R (dirs, 3H, H), B (dirs, 6H); gates z, r, h
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converters import layouts
from converters.errors import UnsupportedLayerError
from converters.graph import Graph


@dataclass
class ParamGroup:
    """The parameters of one layer as found in the graph, in canonical layout."""

    kind: str
    nodes: list[str]
    tensors: dict[str, np.ndarray | None]
    attrs: dict[str, Any] = field(default_factory=dict)
    sources: frozenset[str] = frozenset()  # initializers these tensors came from
    input: str = ""  # the data tensor flowing in
    output: str = ""  # the tensor leaving the group (after any absorbed bias/affine nodes)

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


def node_name(node: Any) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def attrs_of(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _sources(graph: Graph, *names: str) -> frozenset[str]:
    return frozenset().union(*(graph.provenance.get(n, frozenset()) for n in names if n))


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _float_const(graph: Graph, name: str) -> np.ndarray | None:
    value = graph.const(name)
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return None
    return value


def _other_input(node: Any, tensor: str) -> str:
    return node.input[1] if node.input[0] == tensor else node.input[0]


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
    value = _float_const(graph, _other_input(node, tensor))
    if value is None or value.size != channels:
        return None, None, output
    split_heads = tensor != output and graph.producer(tensor) is not None and graph.producer(tensor).op_type == "Reshape"
    if value.ndim > 1 and sum(d > 1 for d in value.shape) != 1 and not split_heads:
        return None, None, output  # a (heads, head_dim) bias only after a Reshape that split the features
    claimed.add(node_name(node))
    return _f32(value.reshape(channels)), node, node.output[0]


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
            sources |= _sources(graph, *add.input)
    return ParamGroup("dense", nodes, {"kernel": _f32(kernel), "bias": bias},
                      {"flatten": _flatten_origin(graph, node.input[0], kernel.shape[0]),
                       "unflatten": _unflatten_target(graph, output, kernel.shape[1])},
                      sources, input=node.input[0], output=output)


@extractor("Gemm")
def _gemm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    b = _float_const(graph, node.input[1])
    if b is None:
        return None
    a = attrs_of(node)
    if a.get("transA", 0):
        raise UnsupportedLayerError(f"Gemm node {node_name(node)} transposes its input (transA=1); not supported")
    kernel = (b.T if a.get("transB", 0) else b) * a.get("alpha", 1.0)
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = graph.const(bias_name)
    if bias is not None:
        bias = _f32(np.broadcast_to(bias * a.get("beta", 1.0), (kernel.shape[1],)))
    return _dense_group(graph, node, kernel, bias, _sources(graph, node.input[1], bias_name), claimed)


@extractor("MatMul")
def _matmul(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    w = _float_const(graph, node.input[1])
    if w is None or w.ndim != 2:
        return None
    return _dense_group(graph, node, w, None, _sources(graph, node.input[1]), claimed)


def _conv_like(kind: str, graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    w = _float_const(graph, node.input[1])
    if w is None:
        return None
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = graph.const(bias_name)
    channels = w.shape[0] if kind == "conv" else w.shape[1] * int(attrs_of(node).get("group", 1))
    nodes, output = [node_name(node)], node.output[0]
    sources = _sources(graph, node.input[1], bias_name)
    if bias is None:
        bias, add, output = _bias_after(graph, node.output[0], channels, claimed)
        if add is not None:
            nodes.append(node_name(add))
            sources |= _sources(graph, *add.input)
    a = attrs_of(node)
    spatial = w.ndim - 2
    attrs = {"group": int(a.get("group", 1)), "strides": tuple(a.get("strides", (1,) * spatial)),
             "dilations": tuple(a.get("dilations", (1,) * spatial)), "pads": tuple(a.get("pads", ())),
             "auto_pad": a.get("auto_pad", "NOTSET"), "spatial": spatial}
    return ParamGroup(kind, nodes, {"weight": _f32(w), "bias": None if bias is None else _f32(bias)},
                      attrs, sources, input=node.input[0], output=output)


@extractor("Conv")
def _conv(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _conv_like("conv", graph, node, claimed)


@extractor("ConvTranspose")
def _conv_transpose(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _conv_like("convtranspose", graph, node, claimed)


@extractor("BatchNormalization")
def _batchnorm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    values = [_float_const(graph, n) for n in node.input[1:5]]
    if any(v is None for v in values):
        return None
    gamma, beta, mean, var = (_f32(v) for v in values)  # type: ignore[arg-type]
    a = attrs_of(node)
    return ParamGroup("batchnorm", [node_name(node)], {"gamma": gamma, "beta": beta, "mean": mean, "var": var},
                      {"epsilon": float(a.get("epsilon", 1e-5)), "momentum": float(a.get("momentum", 0.9))},
                      _sources(graph, *node.input[1:5]), input=node.input[0], output=node.output[0])


@extractor("LayerNormalization")
def _layernorm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    gamma = _float_const(graph, node.input[1])
    if gamma is None:
        return None
    bias_name = node.input[2] if len(node.input) > 2 else ""
    beta = _float_const(graph, bias_name)
    a = attrs_of(node)
    return ParamGroup("layernorm", [node_name(node)],
                      {"gamma": _f32(gamma.reshape(-1)),
                       "beta": _f32(beta.reshape(-1)) if beta is not None else np.zeros(gamma.size, np.float32)},
                      {"epsilon": float(a.get("epsilon", 1e-5)), "axis": int(a.get("axis", -1))},
                      _sources(graph, node.input[1], bias_name), input=node.input[0], output=node.output[0])


@extractor("InstanceNormalization")
def _groupnorm_torch(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """torch's GroupNorm: Reshape -> InstanceNormalization(ones, zeros) -> Reshape -> Mul -> Add."""
    scale, bias = _float_const(graph, node.input[1]), _float_const(graph, node.input[2])
    if scale is None or bias is None:
        return None
    nodes, sources = [node_name(node)], _sources(graph, node.input[1], node.input[2])
    tensor = node.output[0]
    reshape = graph.only_consumer(tensor)
    if reshape is not None and reshape.op_type == "Reshape":
        tensor = reshape.output[0]
    mul = graph.only_consumer(tensor)
    gamma = _per_channel(graph, mul, tensor) if mul is not None and mul.op_type == "Mul" else None
    if gamma is None or not (np.all(scale == 1) and np.all(bias == 0)):
        return ParamGroup("instancenorm", nodes, {"gamma": _f32(scale), "beta": _f32(bias)},
                          {"epsilon": float(attrs_of(node).get("epsilon", 1e-5))}, sources,
                          input=node.input[0], output=node.output[0])
    claimed.add(node_name(mul))
    nodes.append(node_name(mul))
    sources |= _sources(graph, gamma[1])
    add = graph.only_consumer(mul.output[0])
    beta = _per_channel(graph, add, mul.output[0]) if add is not None and add.op_type == "Add" else None
    output = mul.output[0]
    if beta is not None:
        claimed.add(node_name(add))
        nodes.append(node_name(add))
        sources |= _sources(graph, beta[1])
        output = add.output[0]
    c = gamma[0].shape[0]
    return ParamGroup("groupnorm", nodes,
                      {"gamma": gamma[0], "beta": beta[0] if beta is not None else np.zeros(c, np.float32)},
                      {"epsilon": float(attrs_of(node).get("epsilon", 1e-5)), "groups": int(scale.size)},
                      sources, input=node.input[0], output=output)


@extractor("Gather")
def _embedding(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    table = _float_const(graph, node.input[0])
    if table is None or table.ndim != 2 or int(attrs_of(node).get("axis", 0)) != 0:
        return None
    return ParamGroup("embedding", [node_name(node)], {"table": _f32(table)}, {}, _sources(graph, node.input[0]),
                      input=node.input[1], output=node.output[0])


def _rnn(kind: str, graph: Graph, node: Any) -> ParamGroup | None:
    w, r = _float_const(graph, node.input[1]), _float_const(graph, node.input[2])
    if w is None or r is None:
        return None
    b_name = node.input[3] if len(node.input) > 3 else ""
    b = _float_const(graph, b_name)
    gates = 4 if kind == "lstm" else 3
    dirs, hidden = w.shape[0], r.shape[2]
    if b is None:
        b = np.zeros((dirs, 2 * gates * hidden), np.float32)
    a = attrs_of(node)
    if kind == "lstm" and len(node.input) > 7 and node.input[7]:
        raise UnsupportedLayerError(f"LSTM node {node_name(node)} has peephole weights; not supported")
    acts = [s.lower() for s in a.get("activations", [])]
    attrs = {"direction": a.get("direction", "forward"), "hidden": int(hidden), "activations": acts,
             "linear_before_reset": int(a.get("linear_before_reset", 0)), "layout": int(a.get("layout", 0)),
             "sequence_lens": len(node.input) > 4 and bool(node.input[4])}  # masking; weights unaffected
    return ParamGroup(kind, [node_name(node)], {"W": _f32(w), "R": _f32(r), "B": _f32(b)}, attrs,
                      _sources(graph, node.input[1], node.input[2], b_name), input=node.input[0],
                      output=node.output[0])


@extractor("LSTM")
def _lstm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _rnn("lstm", graph, node)


@extractor("GRU")
def _gru(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _rnn("gru", graph, node)


def _rnn_loop_weights(graph: Graph, node: Any) -> dict[int, np.ndarray]:
    """Float weight constants a Loop node carries (loop input index -> value)."""
    return {i: graph.consts[name] for i, name in enumerate(node.input) if name in graph.consts
            and np.issubdtype(graph.consts[name].dtype, np.floating) and graph.consts[name].size > 1}


def _is_rnn_loop(node: Any, graph: Graph) -> bool:
    body = next((a.g for a in node.attribute if a.name == "body"), None)
    ops = {n.op_type for n in body.node} if body is not None else set()
    return {"Sigmoid", "Tanh"} <= ops and len(_rnn_loop_weights(graph, node)) == 3


@extractor("Loop")
def _keras_rnn_loop(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """A Keras LSTM or GRU (reset_after=True) that tf2onnx wrote as a while-loop (masked
    or GRU layers). The kernel (I, gH), recurrent kernel (H, gH) and bias are loop inputs
    in Keras layout (LSTM gates i,f,c,o; GRU z,r,h); the body tells which matmul
    multiplies the input. Returned in canonical ONNX layout, one direction."""
    consts = _rnn_loop_weights(graph, node)
    if not consts:
        return None
    if not _is_rnn_loop(node, graph):
        raise UnsupportedLayerError(
            f"Loop node {node_name(node)} carries parameters {[v.shape for v in consts.values()]} but is not a "
            "recognised recurrent cell (Keras LSTM, or GRU with reset_after=True)"
        )
    body = next(a.g for a in node.attribute if a.name == "body")
    body_inputs = [i.name for i in body.input]  # iteration, condition, carried...
    to_outer = {body_inputs[k]: k for k in range(2, len(body_inputs))}  # body name -> loop input index
    producers = {o: n for n in body.node for o in n.output}
    kernel_idx = recurrent_idx = None
    for n in body.node:
        if n.op_type != "MatMul" or n.input[1] not in to_outer:
            continue
        src = n.input[0]
        while src in producers and producers[src].op_type in ("Identity", "Cast", "Squeeze", "Reshape"):
            src = producers[src].input[0]
        if src in producers and producers[src].op_type == "Gather":
            kernel_idx = to_outer[n.input[1]]
        else:
            recurrent_idx = to_outer[n.input[1]]
    bias_idx = next((i for i in consts if i not in (kernel_idx, recurrent_idx)), None)
    if kernel_idx is None or recurrent_idx is None or bias_idx is None:
        raise UnsupportedLayerError(f"Loop node {node_name(node)}: could not tell the recurrent cell's kernel from "
                                    f"its recurrent kernel; shapes {[v.shape for v in consts.values()]}")
    kernel, recurrent, bias = consts[kernel_idx], consts[recurrent_idx], consts[bias_idx]
    h = recurrent.shape[0]
    sources = _sources(graph, node.input[kernel_idx], node.input[recurrent_idx], node.input[bias_idx])
    if kernel.shape[1] == 4 * h:  # LSTM, Keras i,f,c,o -> ONNX i,o,f,c; the whole bias goes in Wb
        order = (0, 3, 1, 2)
        w = layouts.reorder_gates(kernel.T, order)
        r = layouts.reorder_gates(recurrent.T, order)
        b = np.concatenate([layouts.reorder_gates(bias.reshape(-1), order), np.zeros(4 * h, np.float32)])
        return ParamGroup("lstm", [node_name(node)], {"W": _f32(w[None]), "R": _f32(r[None]), "B": _f32(b[None])},
                          {"direction": "forward", "hidden": int(h), "from_loop": True}, sources,
                          input="", output=node.output[-1])
    if bias.shape != (2, 3 * h):
        raise UnsupportedLayerError(f"Loop node {node_name(node)}: GRU bias of shape {bias.shape}; only Keras "
                                    "reset_after=True (bias (2, 3H), PyTorch semantics) is supported")
    return ParamGroup("gru", [node_name(node)],
                      {"W": _f32(kernel.T[None]), "R": _f32(recurrent.T[None]), "B": _f32(bias.reshape(1, 6 * h))},
                      {"direction": "forward", "hidden": int(h), "activations": ["sigmoid", "tanh"],
                       "linear_before_reset": 1, "layout": 0, "from_loop": True},
                      sources, input="", output=node.output[-1])


def _merge_bidirectional(graph: Graph, groups: list[ParamGroup]) -> list[ParamGroup]:
    """Two loop-written directions concatenated by a Bidirectional wrapper become one
    group with dirs = 2; Concat input 0 is the forward direction."""
    by_loop = {g.nodes[0]: g for g in groups if g.attrs.get("from_loop")}
    if len(by_loop) < 2:
        return groups
    loop_of = {o: node_name(n) for n in graph.nodes if n.op_type == "Loop" for o in n.output}
    merged: dict[int, ParamGroup] = {}
    drop: set[int] = set()
    for node in graph.nodes:
        if node.op_type != "Concat" or len(node.input) != 2:
            continue
        found = []
        for tensor in node.input:
            for _ in range(8):
                if tensor in loop_of:
                    break
                producer = graph.producer(tensor)
                if producer is None or producer.op_type not in ("Transpose", "ReverseSequence", "Squeeze",
                                                                "Reshape", "Identity", "Cast", "Slice"):
                    break
                tensor = producer.input[0]
            found.append(by_loop.get(loop_of.get(tensor, "")))
        fwd, bwd = found
        if fwd is None or bwd is None or fwd.kind != bwd.kind:
            continue
        i, j = groups.index(fwd), groups.index(bwd)
        merged[min(i, j)] = ParamGroup(
            fwd.kind, fwd.nodes + bwd.nodes,
            {k: np.concatenate([fwd.tensors[k], bwd.tensors[k]]) for k in ("W", "R", "B")},  # type: ignore[list-item]
            {**fwd.attrs, "direction": "bidirectional"}, fwd.sources | bwd.sources, output=node.output[0])
        drop |= {i, j}
    return [merged[i] if i in merged else g for i, g in enumerate(groups) if i in merged or i not in drop]


def _per_channel(graph: Graph, node: Any, tensor: str) -> tuple[np.ndarray, str] | None:
    """The float per-channel constant operand of a binary op whose other operand is ``tensor``."""
    other = _other_input(node, tensor)
    value = _float_const(graph, other)
    if value is None or value.size < 2 or sum(d > 1 for d in value.shape) != 1:
        return None
    return _f32(value.reshape(-1)), other


def _decomposed_norm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """Keras LayerNormalization / GroupNormalization as tf2onnx writes them:
    inv = Reciprocal(Sqrt(var + eps)) * gamma; y = x * inv + (beta - mean * inv)."""
    data = next((i for i in node.input if graph.const(i) is None), None)
    gamma_name = _other_input(node, data) if data else ""
    gamma = _float_const(graph, gamma_name)
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
                    value = _float_const(graph, _other_input(user, t))
                    if value is not None and value.size == channels:
                        beta, beta_name, beta_node = value, _other_input(user, t), user
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
    return ParamGroup(kind, nodes, {"gamma": _f32(gamma.reshape(-1)),
                                    "beta": _f32(beta.reshape(-1)) if beta is not None else np.zeros(channels, np.float32)},
                      attrs, _sources(graph, gamma_name, beta_name), input="", output="")


@extractor("Mul")
def _mul(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _decomposed_norm(graph, node, claimed) or _channel_affine(graph, node, claimed)


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
    claimed.add(node_name(add))
    c = scale[0].shape[0]
    return ParamGroup("batchnorm", [node_name(node), node_name(add)],
                      {"gamma": scale[0], "beta": shift[0], "mean": np.zeros(c, np.float32), "var": None},
                      {"folded_statistics": True}, _sources(graph, scale[1], shift[1]), input=data,
                      output=add.output[0])


def forward_order(graph: Graph) -> list[Any]:
    """Nodes in a canonical forward order: depth-first from the outputs, each node's inputs
    in their order. An exporter's own node order can put a residual's shortcut before its
    main branch (tf2onnx does); this order follows the data flow, as the source code's
    forward pass does (main branch, then shortcut, for ``Add(main, shortcut)``)."""
    order: list[Any] = []
    done: set[int] = set()
    for out in graph.outputs:
        stack: list[tuple[Any, int]] = []
        root = graph.producer(out)
        if root is not None and id(root) not in done:
            stack.append((root, 0))
        while stack:
            node, k = stack.pop()
            if id(node) in done:
                continue
            inputs = [i for i in node.input if i]
            while k < len(inputs):
                parent = graph.producer(inputs[k])
                k += 1
                if parent is not None and id(parent) not in done:
                    stack.append((node, k))
                    stack.append((parent, 0))
                    break
            else:
                done.add(id(node))
                order.append(node)
    order.extend(n for n in graph.nodes if id(n) not in done)  # not reachable from an output
    return order


def param_groups(graph: Graph) -> list[ParamGroup]:
    """Parametric layers of ``graph`` in topological (forward) order."""
    groups: list[ParamGroup] = []
    claimed: set[str] = set()  # nodes absorbed into an earlier group (bias Adds, affine tails)
    # Weights of recurrent loops: tf2onnx also peels the first step out of the loop,
    # as MatMul/Add nodes on the same constants; those belong to the loop's group.
    loop_weights = {node.input[i] for node in graph.nodes if node.op_type == "Loop" and _is_rnn_loop(node, graph)
                    for i in _rnn_loop_weights(graph, node)}
    for node in forward_order(graph):
        name = node_name(node)
        if name in claimed:
            continue
        weights = [i for i in node.input if is_weight(graph, i)]
        if node.op_type != "Loop" and weights and set(weights) <= loop_weights:
            continue
        fn = _EXTRACTORS.get(node.op_type)
        group = fn(graph, node, claimed) if fn else None
        if group is not None:
            groups.append(group)
            continue
        raw = _raw_tensor(graph, node, claimed) if node.op_type in _RAW_OPS else None
        if raw is not None:
            groups.append(raw)
            continue
        if weights:
            shapes = {w: tuple(graph.consts[w].shape) for w in weights}
            raise UnsupportedLayerError(
                f"ONNX node {name!r} ({node.op_type}) takes parameters {shapes} that no rule handles; "
                f"supported parametric ops: {', '.join(supported_ops())}"
            )
    groups = _merge_bidirectional(graph, _fuse_attention(graph, groups))
    _mark_followed_by_norm(groups)
    return groups


_LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast", "Gather", "Split", "Slice",
               "Mul", "Div", "Expand"}
_SCORE_OPS = {"Add", "Mul", "Div", "Where", "Cast", "Identity", "Reshape", "Sub", "Squeeze", "Unsqueeze"}


def _is_scalar_tensor(graph: Graph, name: str) -> bool:
    shape = graph.shapes.get(name)
    return shape is not None and all(d == 1 for d in shape)


def _trace_to_group(graph: Graph, tensor: str, outputs: dict[str, ParamGroup]) -> tuple[ParamGroup | None, bool]:
    """Follow ``tensor`` upstream through layout ops to a dense group's output.
    Returns the group and whether a scalar scaling (1/sqrt(d)) was passed on the way."""
    scaled = False
    for _ in range(16):
        if tensor in outputs:
            return outputs[tensor], scaled
        node = graph.producer(tensor)
        if node is None or node.op_type not in _LAYOUT_OPS:
            return None, scaled
        data = [i for i in node.input if i and graph.const(i) is None]
        if node.op_type in ("Mul", "Div"):
            # a scaling by 1/sqrt(d): a scalar constant, or a scalar computed from shapes at run time
            scalars = [i for i in node.input if i and (graph.const(i) is not None and graph.const(i).size == 1  # type: ignore[union-attr]
                                                       or _is_scalar_tensor(graph, i))]
            if not scalars or len(node.input) - len(scalars) != 1:
                return None, scaled
            scaled = True
            data = [i for i in node.input if i not in scalars]
        if not data:
            return None, scaled
        tensor = data[0]
    return None, scaled


def _score_matmul(graph: Graph, tensor: str, depth: int = 10) -> tuple[Any, bool] | None:
    """The Q K^T MatMul feeding a Softmax over its last axis, and whether a Transpose on
    the way swapped its last two axes (then its second operand is the query side).
    Searches every non-constant operand, since a mask is added on the way."""
    node = graph.producer(tensor)
    if node is None or depth == 0:
        return None
    if node.op_type == "MatMul" and all(graph.const(i) is None for i in node.input):
        return node, False
    if node.op_type == "Transpose":
        perm = list(attrs_of(node).get("perm", []))
        found = _score_matmul(graph, node.input[0], depth - 1)
        if found is not None and len(perm) >= 2 and perm[-2:] == [len(perm) - 1, len(perm) - 2]:
            return found[0], not found[1]
        return found
    if node.op_type not in _SCORE_OPS:
        return None
    for inp in node.input:
        if inp and graph.const(inp) is None:
            found = _score_matmul(graph, inp, depth - 1)
            if found is not None:
                return found
    return None


def _context_matmul(graph: Graph, tensor: str) -> tuple[Any, str] | None:
    """The MatMul applying attention probabilities, and its other (value) operand."""
    for _ in range(10):
        users = [u for u in graph.consumers.get(tensor, []) if u.op_type != "Shape"]
        if len(users) != 1:
            return None
        node = users[0]
        if node.op_type == "MatMul":
            return node, _other_input(node, tensor)
        if node.op_type not in ("Cast", "Identity", "Dropout", "Where", "Mul", "Reshape", "Transpose", "Squeeze",
                                "Unsqueeze"):
            return None
        tensor = node.output[0]
    return None


def _output_projection(graph: Graph, tensor: str, inputs: dict[str, ParamGroup]) -> ParamGroup | None:
    for _ in range(6):
        if tensor in inputs:
            return inputs[tensor]
        users = [u for u in graph.consumers.get(tensor, []) if u.op_type != "Shape"]
        if len(users) != 1 or users[0].op_type not in ("Transpose", "Reshape", "Identity", "Squeeze", "Cast"):
            return None
        tensor = users[0].output[0]
    return None


def _fuse_attention(graph: Graph, groups: list[ParamGroup]) -> list[ParamGroup]:
    """Replace the projections around each Softmax(Q K^T) V by one attention group.

    torch packs Q, K and V into one (E, 3E) projection (in that order); Keras has
    three. Which one is the query is read from the score MatMul: its first operand's
    rows are query positions, since the Softmax normalises over the last axis (keys).
    """
    outputs = {g.output: g for g in groups if g.kind == "dense"}
    inputs = {g.input: g for g in groups if g.kind == "dense"}
    fused: dict[int, ParamGroup] = {}
    used: set[int] = set()
    for node in graph.nodes:
        if node.op_type != "Softmax":
            continue
        axis = int(attrs_of(node).get("axis", -1))
        rank = len(graph.shapes.get(node.input[0]) or ())
        if axis != -1 and (rank == 0 or axis != rank - 1):
            continue  # attention normalises over keys, the last axis
        score, context = _score_matmul(graph, node.input[0]), _context_matmul(graph, node.output[0])
        if score is None or context is None:
            continue
        (m1, swapped), (m2, value) = score, context
        # in A @ B the rows of A are query positions and the columns of B key positions
        (a, _), (b, _) = (_trace_to_group(graph, t, outputs) for t in m1.input[:2])
        if swapped:
            a, b = b, a
        v, _ = _trace_to_group(graph, value, outputs)
        out = _output_projection(graph, m2.output[0], inputs)
        if a is None or b is None or v is None or out is None:
            continue
        if a is b is v:  # packed in-projection (E, 3E): torch's q; k; v order
            kernel, bias = a.tensors["kernel"], a.tensors["bias"]
            e = kernel.shape[1] // 3  # type: ignore[union-attr]
            parts = [(kernel[:, i * e:(i + 1) * e], None if bias is None else bias[i * e:(i + 1) * e])  # type: ignore[index]
                     for i in range(3)]
            members = [a]
        else:
            q, k = a, b
            parts = [(g.tensors["kernel"], g.tensors["bias"]) for g in (q, k, v)]
            members = [q, k, v]
        members.append(out)
        e_out = out.tensors["kernel"].shape[1]  # type: ignore[union-attr]
        tensors: dict[str, np.ndarray | None] = {}
        for name, (kern, bias) in zip("qkv", parts, strict=True):
            tensors[f"{name}_kernel"] = kern
            tensors[f"{name}_bias"] = bias if bias is not None else np.zeros(kern.shape[1], np.float32)  # type: ignore[union-attr]
        tensors["out_kernel"] = out.tensors["kernel"]
        tensors["out_bias"] = out.tensors["bias"] if out.tensors["bias"] is not None else np.zeros(e_out, np.float32)
        ids = [groups.index(g) for g in members]
        if used & set(ids):
            continue
        used |= set(ids)
        fused[min(ids)] = ParamGroup(
            "attention", [n for g in members for n in g.nodes], tensors,
            {"packed": len(members) == 2, "members": members},
            frozenset().union(*(g.sources for g in members)), input=members[0].input, output=out.output)
    if not fused:
        return groups
    result = []
    for i, g in enumerate(groups):
        if i in fused:
            result.append(fused[i])
        elif i not in used:
            result.append(g)
    return result


def unfuse_attention(groups: list[ParamGroup]) -> list[ParamGroup]:
    """Back to separate projections (in q, k, v, output order), for targets that spell
    attention out with dense layers."""
    out: list[ParamGroup] = []
    for g in groups:
        out.extend(g.attrs["members"] if g.kind == "attention" else [g])
    return out


_RAW_OPS = {"Add", "Concat", "Expand", "Tile", "Sub", "Mul", "Where"}


def _raw_tensor(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """A learned tensor used as is (class token, position table): copied with its shape."""
    weights = [i for i in node.input if is_weight(graph, i)]
    if len(weights) != 1:
        return None
    value = graph.consts[weights[0]]
    if node.op_type in ("Add", "Sub", "Mul", "Where") and sum(d > 1 for d in value.shape) < 2:
        return None  # a per-channel constant on an Add/Mul is a bias or scale no rule claimed
    data = next((i for i in node.input if i and i not in graph.consts), "")
    return ParamGroup("tensor", [node_name(node)], {"value": _f32(value)}, {"op": node.op_type},
                      _sources(graph, weights[0]), input=data, output=node.output[0])


def _mark_followed_by_norm(groups: list[ParamGroup]) -> None:
    norm_inputs = {g.input for g in groups if g.kind == "batchnorm" and g.input}
    for g in groups:
        if g.kind in ("conv", "dense", "convtranspose"):
            g.attrs["norm_follows"] = g.output in norm_inputs


def is_weight(graph: Graph, name: str) -> bool:
    """A float constant with more than one element: a learned tensor, not a shape or scalar."""
    value = graph.const(name)
    return value is not None and np.issubdtype(value.dtype, np.floating) and value.size > 1
