"""LSTM and GRU: ONNX recurrent nodes, and Keras cells that tf2onnx writes as while-loops."""

from __future__ import annotations

from typing import Any

import numpy as np

from converters import layouts
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
)


def _rnn(kind: str, graph: Graph, node: Any) -> ParamGroup | None:
    w, r = float_const(graph, node.input[1]), float_const(graph, node.input[2])
    if w is None or r is None:
        return None
    b_name = node.input[3] if len(node.input) > 3 else ""
    b = float_const(graph, b_name)
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
    return ParamGroup(kind, [node_name(node)], {"W": f32(w), "R": f32(r), "B": f32(b)}, attrs,
                      initializers_of(graph, node.input[1], node.input[2], b_name), input=node.input[0],
                      output=node.output[0])

@extractor("LSTM")
def _lstm(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _rnn("lstm", graph, node)

@extractor("GRU")
def _gru(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    return _rnn("gru", graph, node)

def rnn_loop_weights(graph: Graph, node: Any) -> dict[int, np.ndarray]:
    """Float weight constants a Loop node carries (loop input index -> value)."""
    return {i: graph.consts[name] for i, name in enumerate(node.input) if name in graph.consts
            and np.issubdtype(graph.consts[name].dtype, np.floating) and graph.consts[name].size > 1}

def is_rnn_loop(node: Any, graph: Graph) -> bool:
    body = next((a.g for a in node.attribute if a.name == "body"), None)
    ops = {n.op_type for n in body.node} if body is not None else set()
    return {"Sigmoid", "Tanh"} <= ops and len(rnn_loop_weights(graph, node)) == 3

@extractor("Loop")
def _keras_rnn_loop(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """A Keras LSTM or GRU (reset_after=True) that tf2onnx wrote as a while-loop (masked
    or GRU layers). The kernel (I, gH), recurrent kernel (H, gH) and bias are loop inputs
    in Keras layout (LSTM gates i,f,c,o; GRU z,r,h); the body tells which matmul
    multiplies the input. Returned in canonical ONNX layout, one direction."""
    consts = rnn_loop_weights(graph, node)
    if not consts:
        return None
    if not is_rnn_loop(node, graph):
        raise UnsupportedLayerError(
            f"Loop node {node_name(node)} carries parameters {[v.shape for v in consts.values()]} but is not a "
            "recognised recurrent cell (Keras LSTM, or GRU with reset_after=True)"
        )
    body = next(a.g for a in node.attribute if a.name == "body")
    body_inputs = [i.name for i in body.input]  # iteration, condition, carried...
    to_outer = {body_inputs[k]: k for k in range(2, len(body_inputs))}  # body name -> loop input index
    producers = {o: n for n in body.node for o in n.output}
    kernel_idx = recurrent_idx = None
    for n in body.node:  # ONNX Runtime's optimiser fuses the bias Add into a Gemm
        if n.op_type not in ("MatMul", "Gemm", "FusedGemm", "FusedMatMul") or n.input[1] not in to_outer:
            continue
        if any(a.name in ("transA", "transB") and a.i for a in n.attribute):
            raise UnsupportedLayerError(f"Loop node {node_name(node)}: its cell's {n.op_type} transposes an operand; "
                                        "only untransposed kernels (as tf2onnx writes them) are supported")
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
    sources = initializers_of(graph, node.input[kernel_idx], node.input[recurrent_idx], node.input[bias_idx])
    if kernel.shape[1] == 4 * h:  # LSTM, Keras i,f,c,o -> ONNX i,o,f,c; the whole bias goes in Wb
        order = (0, 3, 1, 2)
        w = layouts.reorder_gates(kernel.T, order)
        r = layouts.reorder_gates(recurrent.T, order)
        b = np.concatenate([layouts.reorder_gates(bias.reshape(-1), order), np.zeros(4 * h, np.float32)])
        return ParamGroup("lstm", [node_name(node)], {"W": f32(w[None]), "R": f32(r[None]), "B": f32(b[None])},
                          {"direction": "forward", "hidden": int(h), "from_loop": True}, sources,
                          input="", output=node.output[-1])
    if bias.shape != (2, 3 * h):
        raise UnsupportedLayerError(f"Loop node {node_name(node)}: GRU bias of shape {bias.shape}; only Keras "
                                    "reset_after=True (bias (2, 3H), PyTorch semantics) is supported")
    return ParamGroup("gru", [node_name(node)],
                      {"W": f32(kernel.T[None]), "R": f32(recurrent.T[None]), "B": f32(bias.reshape(1, 6 * h))},
                      {"direction": "forward", "hidden": int(h), "activations": ["sigmoid", "tanh"],
                       "linear_before_reset": 1, "layout": 0, "from_loop": True},
                      sources, input="", output=node.output[-1])

def merge_bidirectional(graph: Graph, groups: list[ParamGroup]) -> list[ParamGroup]:
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
