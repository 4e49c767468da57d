"""Walk a folded ONNX graph into ParamGroups: one per parametric layer, canonical layout.

One extractor per ONNX op type, registered with ``@extractor`` (converters.rules.base) by
the modules of converters.rules, which this module imports; a parametric node that no
extractor handles raises UnsupportedLayerError listing the supported ops.

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

from typing import Any

import numpy as np

import converters.rules  # noqa: F401  (registers every extractor)
from converters.errors import UnsupportedLayerError
from converters.graph import Graph
from converters.rules.attention import fuse_attention
from converters.rules.base import ParamGroup, extractor_for, f32, initializers_of, node_name, registered_ops
from converters.rules.recurrent import is_rnn_loop, merge_bidirectional, rnn_loop_weights

__all__ = ["ParamGroup", "forward_order", "is_weight", "param_groups", "supported_ops", "upstream_groups"]


def supported_ops() -> list[str]:
    """The parametric ONNX ops a rule handles."""
    return registered_ops()


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
    loop_weights = {node.input[i] for node in graph.nodes if node.op_type == "Loop" and is_rnn_loop(node, graph)
                    for i in rnn_loop_weights(graph, node)}
    order = forward_order(graph)
    position = {id(n): k for k, n in enumerate(order)}
    for node in order:
        name = node_name(node)
        if name in claimed:
            continue
        weights = parameter_inputs(graph, node)
        if node.op_type != "Loop" and weights and set(weights) <= loop_weights:
            continue
        fn = extractor_for(node.op_type)
        group = fn(graph, node, claimed) if fn else None
        if isinstance(group, list):  # one node, several layers: in the order their outputs are used
            groups.extend(sorted(group, key=lambda g: _first_use(graph, g.output, position)))
            continue
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
    groups = _attach_moved_biases(graph, groups)
    return merge_bidirectional(graph, fuse_attention(graph, groups))

def _attach_moved_biases(graph: Graph, groups: list[ParamGroup]) -> list[ParamGroup]:
    """Give a bias that an optimiser moved into a later node (ONNX Runtime's SkipLayerNormalization,
    BiasGelu) back to the dense or conv layer whose output that node reads."""
    by_output: dict[str, ParamGroup] = {}
    for g in groups:
        if g.kind in ("dense", "conv"):
            by_output[g.output] = g
            user = graph.only_consumer(g.output)
            if user is not None and user.op_type in ("Reshape", "Squeeze", "Unsqueeze"):
                by_output[user.output[0]] = g  # behind one layout op
    for g in groups:
        moved = g.attrs.pop("moved_bias", None)
        if moved is None:
            continue
        bias, sources, inputs = moved
        owner = next((by_output[i] for i in inputs if i in by_output and by_output[i].tensors.get("bias") is None
                      and _out_features(by_output[i]) == bias.size), None)
        if owner is None:
            raise UnsupportedLayerError(
                f"ONNX node {g.nodes[0]!r} adds a bias of shape {bias.shape} that an optimiser moved out of a "
                "dense or conv layer, but no such layer without a bias feeds it; port from the file before "
                "ONNX Runtime's extended optimisations (ORT_ENABLE_BASIC keeps the bias in place)")
        owner.tensors["bias"] = bias
        owner.sources = owner.sources | sources
        owner.nodes.append(f"{g.nodes[0]} (bias)")
    return [g for g in groups if g.kind != "moved_bias"]

def _out_features(group: ParamGroup) -> int:
    w = group.tensors["kernel" if group.kind == "dense" else "weight"]
    return int(w.shape[1] if group.kind == "dense" else w.shape[0])  # type: ignore[union-attr]


def _first_use(graph: Graph, tensor: str, position: dict[int, int]) -> int:
    """Where the first node reading ``tensor`` stands in the forward order."""
    return min((position.get(id(n), len(position)) for n in graph.consumers.get(tensor, [])), default=len(position))

_RAW_OPS = {"Add", "Concat", "Expand", "Tile", "Sub", "Mul", "Where"}

def _raw_tensor(graph: Graph, node: Any, claimed: set[str]) -> ParamGroup | None:
    """A learned tensor used as is (class token, position table): copied with its shape."""
    weights = parameter_inputs(graph, node)
    if len(weights) != 1:
        return None
    value = graph.consts[weights[0]]
    if node.op_type in ("Add", "Sub", "Mul", "Where") and sum(d > 1 for d in value.shape) < 2:
        return None  # a per-channel constant on an Add/Mul is a bias or scale no rule claimed
    data = next((i for i in node.input if i and i not in graph.consts), "")
    return ParamGroup("tensor", [node_name(node)], {"value": f32(value)}, {"op": node.op_type},
                      initializers_of(graph, weights[0]), input=data, output=node.output[0])

def upstream_groups(graph: Graph, groups: list[ParamGroup], kinds: tuple[str, ...] = ("batchnorm",)) -> dict[int, set[int]]:
    """For each group of ``kinds`` (by index into ``groups``): the indexes of the nearest
    parametric groups upstream of its input.

    Walks back from the tensor flowing into the group through every node that belongs to
    no group (activations, pooling, a residual Add, layout ops) and stops at the first node
    of each path that does. A BatchNorm after ``conv -> ReLU`` has the conv upstream; one
    after a residual Add has both branches' last layers; one on a graph input has none.
    """
    owner = {name: k for k, g in enumerate(groups) for name in g.nodes}
    by_name = {node_name(n): n for n in graph.nodes}
    out: dict[int, set[int]] = {}
    for k, group in enumerate(groups):
        if group.kind not in kinds:
            continue
        first = by_name.get(group.nodes[0])
        todo = [group.input] if group.input else list(first.input) if first is not None else []
        found: set[int] = set()
        seen: set[str] = set()
        while todo:
            tensor = todo.pop()
            if not tensor or tensor in seen:
                continue
            seen.add(tensor)
            node = graph.producer(tensor)
            if node is None:
                continue  # a graph input or a constant
            if node_name(node) in owner:
                found.add(owner[node_name(node)])
            else:
                todo.extend(i for i in node.input if i and i not in graph.consts)
        out[k] = found
    return out

def is_weight(graph: Graph, name: str) -> bool:
    """A float constant with more than one element: a learned tensor, not a shape, a scalar or a mask."""
    value = graph.const(name)
    return (value is not None and np.issubdtype(value.dtype, np.floating) and value.size > 1
            and not is_additive_mask(value))


# Inputs that are settings of the op, never learned: Resize's roi, scales and sizes, Pad's pads and value,
# Clip's bounds, the shape of Reshape/Expand/Tile, Slice's starts..steps (by input position).
_SETTING_INPUTS: dict[str, frozenset[int]] = {
    "Resize": frozenset({1, 2, 3}), "Upsample": frozenset({1}), "Pad": frozenset({1, 2, 3}),
    "Clip": frozenset({1, 2}), "Reshape": frozenset({1}), "Expand": frozenset({1}), "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}), "ConstantOfShape": frozenset({0}),
}
MASK_MAGNITUDE = 1e4  # additive masks use -1e4 (older BERTs), -1e9 or finfo.min; no learned value is that far out


def parameter_inputs(graph: Graph, node: Any) -> list[str]:
    """The inputs of ``node`` that are learned tensors (``is_weight``), leaving out its setting inputs."""
    settings = _SETTING_INPUTS.get(node.op_type, frozenset())
    return [name for k, name in enumerate(node.input) if name and k not in settings and is_weight(graph, name)]


def is_additive_mask(value: np.ndarray) -> bool:
    """A constant of zeros and huge negatives only (a causal mask built from constants, folded into one
    tensor, e.g. ``triu(ones(L, L), 1) * finfo.min``): it is added to attention scores, never learned."""
    v = np.asarray(value, dtype=np.float64)
    zero = v == 0
    masked = v <= -MASK_MAGNITUDE  # -inf included
    return bool(np.all(zero | masked) and np.any(zero) and np.any(masked))
