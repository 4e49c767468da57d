"""Self-attention: the projections around each Softmax(Q K^T) V become one group."""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.graph import Graph
from converters.rules.base import (
    ParamGroup,
    attrs_of,
    other_input,
)
from converters.rules.linear import column_parts

_LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast", "Gather", "Split", "Slice",
               "Mul", "Div", "Expand"}

_SCORE_OPS = {"Add", "Mul", "Div", "Where", "Cast", "Identity", "Reshape", "Sub", "Squeeze", "Unsqueeze"}

def _is_scalar_tensor(graph: Graph, name: str) -> bool:
    shape = graph.shapes.get(name)
    return shape is not None and all(d == 1 for d in shape)

def _trace_to_group(graph: Graph, tensor: str, outputs: dict[str, ParamGroup],
                    picks: list[int] | None = None) -> tuple[ParamGroup | None, bool]:
    """Follow ``tensor`` upstream through layout ops to a dense group's output.
    Returns the group and whether a scalar scaling (1/sqrt(d)) was passed on the way;
    ``picks`` collects the constant scalar indices of the Gathers passed (which part of a
    packed projection the tensor is)."""
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
        index = graph.const(node.input[1]) if node.op_type == "Gather" else None
        if picks is not None and index is not None and index.size == 1:
            picks.append(int(index.reshape(-1)[0]))
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
            return node, other_input(node, tensor)
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

def fuse_attention(graph: Graph, groups: list[ParamGroup]) -> list[ParamGroup]:
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
        picked: list[list[int]] = [[], [], []]
        (a, _), (b, _) = (_trace_to_group(graph, t, outputs, p) for t, p in zip(m1.input[:2], picked[:2], strict=True))
        if swapped:
            a, b = b, a
            picked[:2] = picked[1::-1]
        v, _ = _trace_to_group(graph, value, outputs, picked[2])
        out = _output_projection(graph, m2.output[0], inputs)
        if a is None or b is None or v is None or out is None:
            continue
        owners = [a, b, v, out]  # the groups the attention group replaces
        if a is b is v:  # packed in-projection (E, 3E): torch's q; k; v order
            kernel, bias = a.tensors["kernel"], a.tensors["bias"]
            e = kernel.shape[1] // 3  # type: ignore[union-attr]
            parts = [(kernel[:, i * e:(i + 1) * e], None if bias is None else bias[i * e:(i + 1) * e])  # type: ignore[index]
                     for i in range(3)]
            members = [a, out]
        elif b is v and a is not b and b.tensors["kernel"].shape[1] == 2 * a.tensors["kernel"].shape[1]:  # type: ignore[union-attr]
            # query apart, key is value: torch packs k; v into one (E, 2E) projection
            swap = picked[1][-1:] == [1] and picked[2][-1:] == [0]  # the Gathers read v first
            k_part, v_part = column_parts(b, 2)[::-1 if swap else 1]
            parts = [(g.tensors["kernel"], g.tensors["bias"]) for g in (a, k_part, v_part)]
            members = [a, k_part, v_part, out]
        else:
            parts = [(g.tensors["kernel"], g.tensors["bias"]) for g in (a, b, v)]
            members = [a, b, v, out]
        e_out = out.tensors["kernel"].shape[1]  # type: ignore[union-attr]
        tensors: dict[str, np.ndarray | None] = {}
        for name, (kern, bias) in zip("qkv", parts, strict=True):
            tensors[f"{name}_kernel"] = kern
            tensors[f"{name}_bias"] = bias if bias is not None else np.zeros(kern.shape[1], np.float32)  # type: ignore[union-attr]
        tensors["out_kernel"] = out.tensors["kernel"]
        tensors["out_bias"] = out.tensors["bias"] if out.tensors["bias"] is not None else np.zeros(e_out, np.float32)
        ids = sorted({i for i, g in enumerate(groups) if any(g is o for o in owners)})
        if used & set(ids):
            continue
        used |= set(ids)
        unique = list({id(g): g for g in owners}.values())
        fused[ids[0]] = ParamGroup(
            "attention", [n for g in unique for n in g.nodes], tensors,
            {"packed": len(members) == 2, "members": members},
            frozenset().union(*(g.sources for g in unique)), input=a.input, output=out.output)
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
