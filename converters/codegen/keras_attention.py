"""Attention and learned tensors from a Keras source, for a PyTorch twin.

The porter's attention group (``converters.rules.attention``) holds the query, key, value and
output Dense layers; between them tf2onnx writes the heads' split (Reshape, Transpose), the score
MatMul, its scaling, the additive mask, the Softmax, the context MatMul and the merge of the
heads (a Keras ``MultiHeadAttention``: its einsums as MatMuls between 5-D reshapes).
``analyse`` runs that subgraph (ONNX's reference evaluator, seeded inputs) and accepts it only
when it computes scaled dot-product attention for some head count and scale; the twin gets
``nn.Linear`` q, k, v and output layers around one call of ``attention(q, k, v, mask,
heads=...)`` (``F.scaled_dot_product_attention``). The mask is the tensor the source adds to the
scores, computed by the generated code as the source computes it.

A learned tensor used as is (a ``tensor`` group: ViT's class token, broadcast over the batch and
concatenated; a position table added) becomes an ``nn.Parameter`` of the generated module.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from converters.codegen import layout as lay
from converters.codegen.handlers import group
from converters.codegen.lower import Lowering, group_input, tensordot_input
from converters.errors import UnsupportedLayerError
from converters.graph import Graph
from converters.params import ParamGroup
from converters.rules.base import node_name

_SHAPE_OPS = {"Shape", "Cast", "Concat", "Slice", "Gather", "Unsqueeze", "Squeeze"}
_CALL_SUFFIX = re.compile(r"_\d+$")  # tf2onnx scopes a Keras layer's ops "<layer>_1/...", numbered per call
_BATCH, _SEED = 2, 0  # the seeded inputs the attention's ops are run on
_ATOL = 1e-4  # float32 ops against a float64 reference on N(0, 1) inputs: ~1e-6; another head count or scale: ~0.1


def _refuse(g: ParamGroup, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"cannot generate the attention layer of ONNX nodes {'+'.join(g.nodes[:2])}...: "
                                 f"{why}; only scaled dot-product attention over separate query, key and value "
                                 "Dense layers is generated from a Keras source")


def prepare(graph: Graph, groups: list[ParamGroup]) -> None:
    """Give each attention group the sequences it reads and its mask, and each broadcast tensor
    the tensor whose batch it takes, so that the walk reaches them (``lower.walk``)."""
    for g in groups:
        if g.kind == "attention":
            found = analyse(graph, g)
            g.input = found["inputs"][0]
            extra = [*found["inputs"][1:], *([found["mask"]] if found["mask"] else [])]
            g.attrs["extra_inputs"] = tuple(dict.fromkeys(t for t in extra if t != g.input))
            g.attrs["sdpa"] = found
            g.attrs["layer_names"] = _names(g.attrs["members"])
        elif g.kind == "tensor" and g.attrs.get("op") == "Expand":
            g.input = _batch_source(graph, g.input) or g.input


def analyse(graph: Graph, g: ParamGroup) -> dict[str, Any]:
    """The attention's inputs (query, key, value sequences), mask ('' if none), heads and scale
    (None: 1/sqrt(head size), as ``scaled_dot_product_attention`` scales by default)."""
    members = g.attrs.get("members") or []
    if g.attrs.get("packed") or len(members) != 4 or len({id(m) for m in members}) != 4:
        raise _refuse(g, "a packed query/key/value projection")
    q, k, v, out = members
    inputs = tuple(_sequence(graph, m) for m in (q, k, v))
    merged = _sequence(graph, out)  # the heads' context, (B, L, E)
    if len(graph.shapes.get(merged) or ()) != 3:
        raise _refuse(g, f"its output projection reads a rank-{len(graph.shapes.get(merged) or ())} tensor, not "
                         "(batch, length, features)")
    stops = [q.output, k.output, v.output]
    nodes, masks, shaped = _core(graph, g, stops, merged)
    _check_closed(graph, g, nodes, merged, stops)
    return {"inputs": inputs, **_match(graph, g, nodes, stops, masks, shaped, merged, inputs)}


def _sequence(graph: Graph, dense: ParamGroup) -> str:
    """The (B, L, E) sequence a projection reads: behind tf2onnx's Tensordot reshape to (B*L, E) if any
    (without a bias, tf2onnx merges the reshape back into the heads' split)."""
    tensor = tensordot_input(graph, dense) or group_input(graph, dense)
    n = graph.producer(tensor)
    if n is not None and n.op_type == "Reshape" and "Tensordot" in node_name(n) and \
            len(graph.shapes.get(n.input[0]) or ()) == 3:
        return str(n.input[0])
    return tensor


def _core(graph: Graph, g: ParamGroup, stops: list[str], end: str) -> tuple[list[Any], list[str], list[str]]:
    """The nodes computing ``end`` from the projections' outputs (in graph order), the mask they read
    (a tensor that does not depend on the projections, computed by the twin: at most one) and the
    tensors they read only the shape of."""
    down, stack = set(stops), list(stops)
    while stack:
        for user in graph.consumers.get(stack.pop(), []):
            fresh = [o for o in user.output if o and o not in down]
            down.update(fresh)
            stack += fresh
    found: dict[str, Any] = {}
    outside: dict[str, None] = {}
    stack = [end]
    while stack:
        n = graph.producer(stack.pop())
        if n is None or node_name(n) in found:
            continue
        found[node_name(n)] = n
        for i in n.input:
            if i and i not in stops and graph.const(i) is None:
                if i in down:
                    stack.append(i)
                else:
                    outside[i] = None
    shaped = [t for t in outside if all(u.op_type == "Shape" for u in graph.consumers.get(t, [])
                                        if node_name(u) in found)]
    masks = [t for t in outside if t not in shaped]
    if len(masks) > 1:
        raise _refuse(g, f"the ops between its projections read {len(masks)} other tensors ({', '.join(masks)})")
    order = {node_name(n): k for k, n in enumerate(graph.nodes)}
    return sorted(found.values(), key=lambda n: order[node_name(n)]), masks, shaped


def _check_closed(graph: Graph, g: ParamGroup, inside: list[Any], end: str, starts: list[str]) -> None:
    """No tensor of the attention (its projections' outputs and the ops between) is read elsewhere."""
    names = {node_name(n) for n in inside}
    for tensor in [*starts, *(o for n in inside for o in n.output if o != end)]:
        users = [u for u in graph.consumers.get(tensor, []) if u.op_type != "Shape"]
        if any(node_name(u) not in names for u in users) or tensor in graph.outputs:
            raise _refuse(g, f"its tensor {tensor!r} is also read outside the attention")


def _match(graph: Graph, g: ParamGroup, nodes: list[Any], stops: list[str], masks: list[str], shaped: list[str],
           end: str, inputs: tuple[str, ...]) -> dict[str, Any]:
    """Heads, scale and mask of the subgraph, found by running it (ONNX's reference evaluator, seeded
    inputs) and comparing it with scaled dot-product attention: nothing else is generated. A mask is
    boolean (True: attend) or added to the scores."""
    rng = np.random.default_rng(_SEED)
    embed = int(g.tensors["q_kernel"].shape[1])  # type: ignore[union-attr]
    lengths = [_dim(graph, t, 1, 5) for t in inputs]
    qkv = [rng.standard_normal((_BATCH, n, embed)) for n in lengths]
    # a projection's output may be split into heads already (Keras's EinsumDense: (B, L, heads, size)),
    # or still flat (a Tensordot without a bias: (B * L, E))
    feeds = {s: x.reshape([-1 if d is None else int(d) for d in graph.shapes.get(s) or (None, None, embed)])
             .astype(np.float32) for s, x in zip(stops, qkv, strict=True)}
    for t in [*masks, *shaped]:
        shape = [_BATCH, *(_dim(graph, t, i, lengths[1]) for i in range(1, len(graph.shapes.get(t) or ())))]
        dtype = _dtype(graph, t)
        if t in shaped:
            feeds[t] = np.zeros(shape, dtype)
        elif dtype == np.bool_:  # some keys padding, never all of a row
            feeds[t] = rng.random(shape) > 0.3
            feeds[t][..., 0] = True
        elif dtype.kind == "f":  # large negatives where padded, as real masks are, and small values elsewhere
            feeds[t] = np.where(rng.random(shape) < 0.3, -1e9, rng.standard_normal(shape)).astype(dtype)
        else:
            raise _refuse(g, f"it reads {t!r} of type {dtype} as a mask; a boolean or an additive float mask is "
                             "generated")
    try:
        got = _run(graph, nodes, feeds, end)
    except Exception as exc:  # noqa: BLE001  (a subgraph the evaluator cannot run is not recognised)
        raise _refuse(g, f"its ops could not be run to check them ({type(exc).__name__}: {str(exc)[:80]})") from exc
    factors = [f for n in nodes if (f := _scalar(graph, n)) is not None]
    for heads in _head_counts(graph, nodes, embed):
        size = embed // heads
        for scale in dict.fromkeys([1 / math.sqrt(size), math.prod(factors), *factors]):
            want = _reference(*qkv, heads, scale, feeds[masks[0]] if masks else None)
            if got.shape == want.shape and np.allclose(got, want, atol=_ATOL, rtol=_ATOL):
                default = abs(scale * math.sqrt(size) - 1.0) < 1e-6
                return {"mask": masks[0] if masks else "", "heads": heads, "scale": None if default else scale}
    raise _refuse(g, "the ops between its projections do not compute softmax(q k^T * scale + mask) v over heads")


def _dtype(graph: Graph, tensor: str) -> np.dtype:
    from onnx import helper

    g = graph.model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.name == tensor and vi.type.tensor_type.elem_type:
            return np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    return np.dtype(np.float32)


def _dim(graph: Graph, tensor: str, axis: int, default: int) -> int:
    shape = graph.shapes.get(tensor) or ()
    return int(shape[axis]) if axis < len(shape) and shape[axis] else default


def _scalar(graph: Graph, n: Any) -> float | None:
    """The factor of a Mul or Div by a scalar constant, else None."""
    consts = [i for i in n.input if graph.const(i) is not None]
    if n.op_type not in ("Mul", "Div") or len(consts) != 1 or graph.consts[consts[0]].size != 1:
        return None
    value = float(np.asarray(graph.consts[consts[0]]).reshape(-1)[0])
    if n.op_type == "Div":
        return 1.0 / value if n.input[1] == consts[0] and value else None
    return value


def _run(graph: Graph, nodes: list[Any], feeds: dict[str, np.ndarray], out: str) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    used = {i for n in nodes for i in n.input if i}
    inits = [numpy_helper.from_array(np.asarray(graph.consts[c]), c) for c in sorted(used) if c in graph.consts]
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in feeds.items() if k in used]
    model = helper.make_model(helper.make_graph(nodes, "attention", ins,
                                                [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits),
                              opset_imports=list(graph.model.opset_import))
    return np.asarray(ReferenceEvaluator(model).run(None, {k: v for k, v in feeds.items() if k in used})[0])


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, scale: float,
               mask: np.ndarray | None) -> np.ndarray:
    """softmax(q k^T * scale + mask) v per head, in float64."""
    b, length, e = q.shape

    def split(a: np.ndarray) -> np.ndarray:
        return a.reshape(b, -1, heads, e // heads).transpose(0, 2, 1, 3)

    scores = split(q) @ split(k).transpose(0, 1, 3, 2) * scale
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return (probs @ split(v)).transpose(0, 2, 1, 3).reshape(b, length, e)


def _head_counts(graph: Graph, nodes: list[Any], embed: int) -> list[int]:
    """Head counts to try: the ones the heads' reshapes name first, then every divisor of ``embed``."""
    named = [int(s[-2]) for n in nodes if n.op_type == "Reshape" and len(s := graph.shapes.get(n.output[0]) or ()) >= 4
             and s[-2] and s[-1] and s[-2] * s[-1] == embed]
    return list(dict.fromkeys([*named, *(h for h in range(1, embed + 1) if embed % h == 0)]))


def _batch_source(graph: Graph, shape: str) -> str:
    """The tensor whose Shape the broadcast shape ``shape`` is computed from, or ''."""
    found, stack, seen = set(), [shape], 0
    while stack and seen < 16:
        seen += 1
        n = graph.producer(stack.pop())
        if n is None or n.op_type not in _SHAPE_OPS:
            continue
        if n.op_type == "Shape":
            found.add(str(n.input[0]))
            continue
        stack += [i for i in n.input if i and graph.const(i) is None]
    return next(iter(found)) if len(found) == 1 else ""


# -- handlers (torch) --------------------------------------------------------------------
@group("attention", target="torch")
def _attention(low: Lowering, g: ParamGroup) -> None:
    found = g.attrs.get("sdpa") or analyse(low.graph, g)
    members = g.attrs["members"]
    names = g.attrs.get("layer_names") or _names(members)
    args = []
    for member, tensor, name in zip(members[:3], found["inputs"], names[:3], strict=True):
        x = low.get(tensor, lay.identity(len(low.perm(tensor))), name)
        args.append(low.emit("layer", [x], {}, name, member))
    if found["mask"]:
        args.append(low.get(found["mask"], lay.identity(len(low.perm(found["mask"]))), "mask"))
    ctx = low.emit("attention", args, {"heads": found["heads"], "scale": found["scale"]}, "attention")
    low.vars[g.output] = (low.emit("layer", [ctx], {}, names[3], members[3]), lay.identity(3))


def _names(members: list[ParamGroup]) -> list[str]:
    """The projections' names: each Dense layer's own (``encoder.layer.0.attention.self.query``); a Keras
    MultiHeadAttention's ``mha.query``, ``mha.key``, ``mha.value`` and, for the output projection, the
    layer's own name ``mha`` (its output is the layer's, so layer-by-layer diagnostics pair them)."""
    scopes = [[_CALL_SUFFIX.sub("", p) for p in m.nodes[0].split(":")[0].split("/")[1:-1] if p != "Tensordot"]
              for m in members]
    if all(len(s) >= 2 for s in scopes) and len({s[0] for s in scopes}) == 1:
        return [".".join(s) for s in scopes[:3]] + [scopes[0][0]]
    return [".".join(s) or m.kind for s, m in zip(scopes, members, strict=True)]


@group("tensor", target="torch")
def _tensor(low: Lowering, g: ParamGroup) -> None:
    value = g.tensors["value"]
    assert value is not None
    op, name = g.attrs.get("op"), low.layer_name(g)
    rank = value.ndim
    if op == "Expand":
        shape = low.shape(g.output) or ()
        if value.shape[0] != 1 or len(shape) != rank or tuple(shape[1:]) != value.shape[1:] or g.input not in low.vars:
            raise UnsupportedLayerError(f"cannot generate the learned tensor {name!r} (ONNX {g.nodes[0]}): only a "
                                        "broadcast over the batch of another tensor is generated")
        low.vars[g.output] = (low.emit("layer", [low.vars[g.input][0]], {"op": "expand"}, name, g),
                              lay.identity(rank))
        return
    if op not in ("Add", "Sub", "Mul"):
        raise UnsupportedLayerError(f"cannot generate the learned tensor {name!r} (ONNX {op} node {g.nodes[0]}): "
                                    "only one added, subtracted, multiplied or broadcast over the batch is generated")
    head = next(n for n in low.graph.nodes if node_name(n) == g.nodes[0])
    x = low.get(g.input, lay.identity(len(low.perm(g.input))), name)
    attrs = {"op": op.lower(), "param_first": head.input[0] != g.input}
    low.vars[g.output] = (low.emit("layer", [x], attrs, name, g), lay.identity(len(low.perm(g.input))))
