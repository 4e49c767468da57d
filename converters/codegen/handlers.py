"""One handler per ONNX op type and per parameter-group kind: each turns a step of the graph
into ops of the ``Program`` (``converters.codegen.lower``), resolving axes and pads to the
generated model's own layout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from converters.codegen import layout as lay
from converters.codegen.lower import Lowering
from converters.codegen.regroup import regroup
from converters.errors import UnsupportedLayerError
from converters.params import ParamGroup
from converters.rules.base import attrs_of, node_name

NodeHandler = Callable[[Lowering, Any], None]
GroupHandler = Callable[[Lowering, ParamGroup], None]
NODE_HANDLERS: dict[str, NodeHandler] = {}
GROUP_HANDLERS: dict[str, GroupHandler] = {}
TARGET_GROUP_HANDLERS: dict[tuple[str, str], GroupHandler] = {}  # (kind, target): one target's own handler


def node(*op_types: str) -> Callable[[NodeHandler], NodeHandler]:
    def decorate(fn: NodeHandler) -> NodeHandler:
        for op in op_types:
            if op in NODE_HANDLERS:
                raise ValueError(f"a generator for ONNX op {op!r} is registered twice")
            NODE_HANDLERS[op] = fn
        return fn
    return decorate


def group(*kinds: str, target: str = "") -> Callable[[GroupHandler], GroupHandler]:
    """Register the handler of groups of ``kinds``; with ``target`` ('tf' or 'torch') for twins in that
    framework only, ahead of a handler for every target."""
    def decorate(fn: GroupHandler) -> GroupHandler:
        if target:
            TARGET_GROUP_HANDLERS.update({(kind, target): fn for kind in kinds})
        else:
            GROUP_HANDLERS.update(dict.fromkeys(kinds, fn))
        return fn
    return decorate


def group_handler(kind: str, target: str) -> GroupHandler | None:
    """The handler of a group of ``kind`` in a twin for ``target``, or None."""
    return TARGET_GROUP_HANDLERS.get((kind, target)) or GROUP_HANDLERS.get(kind)


def _unsupported(n: Any, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"cannot generate code for ONNX node {node_name(n)!r} ({n.op_type}): {why}")


def _scalar(low: Lowering, name: str) -> float | None:
    value = low.graph.const(name)
    return float(np.asarray(value).reshape(-1)[0]) if value is not None and np.asarray(value).size == 1 else None


# -- layout only ---------------------------------------------------------------------------
@node("Identity", "Dropout")
def _alias(low: Lowering, n: Any) -> None:
    low.vars[n.output[0]] = low.vars[n.input[0]]


@node("Transpose")
def _transpose(low: Lowering, n: Any) -> None:
    var, p = low.vars[n.input[0]]
    perm = tuple(attrs_of(n).get("perm", tuple(reversed(range(len(p))))))
    low.vars[n.output[0]] = (var, lay.compose(p, perm))


@node("Cast")
def _cast(low: Lowering, n: Any) -> None:
    from onnx import helper

    var, p = low.vars[n.input[0]]
    to = int(attrs_of(n)["to"])
    dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(to)))
    before = low.graph.producer(n.input[0])
    if before is not None and before.op_type == "Cast" and int(attrs_of(before)["to"]) == to:
        low.vars[n.output[0]] = (var, p)  # a cast to the type it has: no code
        return
    low.vars[n.output[0]] = (low.emit("cast", [var], {"dtype": dtype}, low.label(n)), p)


# -- element-wise --------------------------------------------------------------------------
_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Elu": "elu", "Softplus": "softplus",
          "Exp": "exp", "Sqrt": "sqrt", "Neg": "neg", "Abs": "abs", "Erf": "erf", "HardSwish": "hard_swish"}


@node(*_UNARY)
def _unary(low: Lowering, n: Any) -> None:
    var, p = low.vars[n.input[0]]
    attrs = {"alpha": float(attrs_of(n)["alpha"])} if n.op_type == "Elu" and "alpha" in attrs_of(n) else {}
    low.vars[n.output[0]] = (low.emit(_UNARY[n.op_type], [var], attrs, low.label(n)), p)


@node("LeakyRelu")
def _leaky(low: Lowering, n: Any) -> None:
    var, p = low.vars[n.input[0]]
    alpha = float(attrs_of(n).get("alpha", 0.01))
    low.vars[n.output[0]] = (low.emit("leaky_relu", [var], {"alpha": alpha}, low.label(n)), p)


@node("Clip")
def _clip(low: Lowering, n: Any) -> None:
    var, p = low.vars[n.input[0]]
    lo = _scalar(low, n.input[1]) if len(n.input) > 1 and n.input[1] else None
    hi = _scalar(low, n.input[2]) if len(n.input) > 2 and n.input[2] else None
    kind = "relu6" if (lo, hi) == (0.0, 6.0) else "clip"
    low.vars[n.output[0]] = (low.emit(kind, [var], {"min": lo, "max": hi}, low.label(n)), p)


_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "maximum", "Min": "minimum", "Pow": "pow"}


@node(*_BINARY)
def _binary(low: Lowering, n: Any) -> None:
    kind = _BINARY[n.op_type]
    data = [i for i in n.input if i not in low.graph.consts]
    if len(data) == 2:
        a, p = low.vars[data[0]]
        b = low.get(data[1], p, low.label(n))
        low.vars[n.output[0]] = (low.emit(kind, [a, b], {}, low.label(n)), p)
        return
    const = next(i for i in n.input if i in low.graph.consts)
    value = _scalar(low, const)
    if value is None or len(data) != 1:
        raise _unsupported(n, f"a constant operand of shape {low.graph.consts[const].shape}; only scalars are "
                              "written into the code")
    var, p = low.vars[data[0]]
    if np.issubdtype(low.graph.consts[const].dtype, np.integer):
        value = int(value)  # an integer tensor stays one (ids, positions)
    attrs = {"scalar": value, "scalar_first": n.input[0] == const}
    low.vars[n.output[0]] = (low.emit(kind, [var], attrs, low.label(n)), p)


@node("Concat")
def _concat(low: Lowering, n: Any) -> None:
    data = [i for i in n.input if i]
    if any(i in low.graph.consts for i in data):
        raise _unsupported(n, "a constant operand")
    first, p = low.vars[data[0]]
    args = [first] + [low.get(i, p, low.label(n)) for i in data[1:]]
    axis = lay.var_axis(p, int(attrs_of(n).get("axis", 1)))
    low.vars[n.output[0]] = (low.emit("concat", args, {"axis": axis}, low.label(n)), p)


@node("Softmax")
def _softmax(low: Lowering, n: Any) -> None:
    var, p = low.vars[n.input[0]]
    axis = lay.var_axis(p, int(attrs_of(n).get("axis", -1)))
    low.vars[n.output[0]] = (low.emit("softmax", [var], {"axis": axis}, low.label(n)), p)


@node("Slice")
def _slice(low: Lowering, n: Any) -> None:
    var, p = low.vars[n.input[0]]
    rank = len(p)
    given = [low.graph.const(i) if i else None for i in [*n.input[1:], "", "", ""][:4]]
    starts, ends, axes, steps = given
    if starts is None or ends is None or any(i and v is None for i, v in zip(n.input[3:5], given[2:], strict=False)):
        raise _unsupported(n, "starts, ends, axes or steps computed at run time; only constant slices are generated")
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in np.asarray(axes).reshape(-1)]
    steps = [1] * len(axes) if steps is None else [int(s) for s in np.asarray(steps).reshape(-1)]
    by_var: list[tuple[int | None, int | None, int]] = [(None, None, 1)] * rank
    big = 10**9  # ONNX writes "to the end" as a huge number (tf2onnx: int32's largest, or 1e9)
    shape = low.shape(n.input[0]) or (None,) * rank
    for a, b, e, st in zip(axes, np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1), steps, strict=True):
        begin = None if int(b) == 0 and st > 0 else int(b)
        end = None if abs(int(e)) >= big or (st > 0 and shape[a] is not None and int(e) >= shape[a]) else int(e)
        by_var[p[a]] = (begin, end, st)
    if all(s == (None, None, 1) for s in by_var):  # the whole tensor (torch's x[:, 0] starts with x[:]): no code
        low.vars[n.output[0]] = (var, p)
        return
    low.vars[n.output[0]] = (low.emit("slice", [var], {"slices": tuple(by_var)}, low.label(n)), p)


# -- pads, pooling, reductions -------------------------------------------------------------
@node("Pad")
def _pad(low: Lowering, n: Any) -> None:
    var, p = low.vars[n.input[0]]
    pads = low.graph.const(n.input[1])
    mode = attrs_of(n).get("mode", "constant")
    if pads is None or mode != "constant" or (len(n.input) > 3 and n.input[3]):
        raise _unsupported(n, f"mode {mode!r} or pads computed at run time; only constant pads are supported")
    rank = len(p)
    pads = [int(v) for v in np.asarray(pads).reshape(-1)]
    value = _scalar(low, n.input[2]) if len(n.input) > 2 and n.input[2] else 0.0
    by_var = [(0, 0)] * rank
    for i in range(rank):
        by_var[p[i]] = (pads[i], pads[i + rank])
    low.vars[n.output[0]] = (low.emit("pad", [var], {"pads": tuple(by_var), "value": value or 0.0},
                                      low.label(n)), p)


def same_pads(size: int | None, k: int, s: int, d: int) -> tuple[int, int] | None:
    """TensorFlow's 'same' padding of one spatial dim (the extra pixel at the end)."""
    if size is None:
        return None
    total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def spatial_pads(low: Lowering, n_or_attrs: dict[str, Any], tensor: str, kernel: tuple[int, ...]) -> list[tuple[int, int]]:
    """Per spatial dim (begin, end) of a conv or pool, with auto_pad resolved from the input's shape."""
    a = n_or_attrs
    spatial = len(kernel)
    strides = tuple(a.get("strides") or (1,) * spatial)
    dil = tuple(a.get("dilations") or (1,) * spatial)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        shape = low.shape(tensor) or (None,) * (spatial + 2)
        found = [same_pads(shape[2 + i], kernel[i], strides[i], dil[i]) for i in range(spatial)]
        if any(f is None for f in found):
            raise UnsupportedLayerError(f"auto_pad {auto} on {tensor!r} of unknown spatial size")
        return [(e, b) if auto == "SAME_LOWER" else (b, e) for b, e in found]  # type: ignore[misc]
    pads = tuple(a.get("pads") or (0,) * (2 * spatial))
    return [(int(pads[i]), int(pads[i + spatial])) for i in range(spatial)]


def padding_for(low: Lowering, tensor: str, kernel: tuple[int, ...], strides: tuple[int, ...],
                dil: tuple[int, ...], pads: list[tuple[int, int]]) -> str | tuple[int, ...] | None:
    """How the target's layer pads: 'valid', 'same' (TF's), symmetric pads (torch), or None: pad first."""
    if all(b == e == 0 for b, e in pads):
        return "valid"
    shape = low.shape(tensor) or (None,) * (len(kernel) + 2)
    same = [same_pads(shape[2 + i], kernel[i], strides[i], dil[i]) for i in range(len(kernel))]
    if low.channels_last and same == pads:
        return "same"
    if not low.channels_last and all(b == e for b, e in pads):
        return tuple(b for b, _ in pads)
    return None


def prepad(low: Lowering, var: str, rank: int, pads: list[tuple[int, int]], value: float, label: str) -> str:
    """An explicit pad of the spatial dims of a native-layout variable."""
    by_var = [(0, 0)] * rank
    p = low.native(rank)
    for i, pad in enumerate(pads):
        by_var[p[2 + i]] = pad
    return low.emit("pad", [var], {"pads": tuple(by_var), "value": value}, f"{label}_pad")


@node("MaxPool", "AveragePool")
def _pool(low: Lowering, n: Any) -> None:
    a = attrs_of(n)
    kernel = tuple(int(k) for k in a["kernel_shape"])
    spatial = len(kernel)
    rank = spatial + 2
    if int(a.get("ceil_mode", 0)) or any(int(d) != 1 for d in a.get("dilations", ())) or a.get("storage_order", 0):
        raise _unsupported(n, "ceil_mode, dilations or storage_order are not supported")
    strides = tuple(int(s) for s in a.get("strides") or (1,) * spatial)
    pads = spatial_pads(low, a, n.input[0], kernel)
    var = low.get(n.input[0], low.native(rank), low.label(n))
    kind = "maxpool" if n.op_type == "MaxPool" else "avgpool"
    padding = padding_for(low, n.input[0], kernel, strides, (1,) * spatial, pads)
    if kind == "avgpool" and padding != "valid":
        if int(a.get("count_include_pad", 0)):  # pads count: Keras's 'same' would not count them, pad first
            padding = None if low.channels_last else padding
        elif not (low.channels_last and padding == "same"):  # torch's pooling and a zero pad both count them
            raise _unsupported(n, "average pooling that excludes its pads from the count")
    if padding is None:
        value = float("-inf") if kind == "maxpool" else 0.0
        var, padding = prepad(low, var, rank, pads, value, low.label(n)), "valid"
    out = low.emit(kind, [var], {"kernel": kernel, "strides": strides, "padding": padding}, low.label(n))
    low.vars[n.output[0]] = (out, low.native(rank))


@node("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(low: Lowering, n: Any) -> None:
    rank = len(low.perm(n.input[0]))
    var = low.get(n.input[0], low.native(rank), low.label(n))
    kind = "gap" if n.op_type == "GlobalAveragePool" else "gmp"
    low.vars[n.output[0]] = (low.emit(kind, [var], {"keepdims": True, "rank": rank}, low.label(n)),
                             low.native(rank))


@node("ReduceMean", "ReduceMax", "ReduceSum")
def _reduce(low: Lowering, n: Any) -> None:
    var, p = low.vars[n.input[0]]
    a = attrs_of(n)
    axes_value = low.graph.const(n.input[1]) if len(n.input) > 1 and n.input[1] else a.get("axes")
    if axes_value is None:
        raise _unsupported(n, "axes computed at run time")
    rank = len(p)
    axes = sorted(int(x) % rank for x in np.asarray(axes_value).reshape(-1))
    keep = bool(a.get("keepdims", 1))
    v_axes = tuple(sorted(p[x] for x in axes))
    native = low.native(rank)
    if n.op_type == "ReduceMean" and rank > 2 and p == native and v_axes == tuple(native[2:]) and \
            sorted(axes) == list(range(2, rank)):
        out = low.emit("gap", [var], {"keepdims": keep, "rank": rank}, low.label(n))
    else:
        kind = {"ReduceMean": "mean", "ReduceMax": "max", "ReduceSum": "sum"}[n.op_type]
        out = low.emit(kind, [var], {"axes": v_axes, "keepdims": keep}, low.label(n))
    low.vars[n.output[0]] = (out, p if keep else lay.drop_axes(p, axes))


# -- reshapes ------------------------------------------------------------------------------
@node("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(low: Lowering, n: Any) -> None:
    var, p = low.vars[n.input[0]]
    out_shape = low.shape(n.output[0])
    in_shape = low.shape(n.input[0])
    if out_shape is None or in_shape is None or any(d is None for d in out_shape[1:]):
        raise _unsupported(n, "an output shape that shape inference could not tell")
    if tuple(in_shape) == tuple(out_shape) and None not in in_shape[1:]:
        low.vars[n.output[0]] = (var, p)  # to the shape it has: nothing to do
        return
    moved = _unit_transpose(in_shape, out_shape, p, low.native(len(p)))
    if moved is not None:  # only size-1 axes move (tf2onnx's Transpose on a 1x1 map): a layout change
        low.vars[n.output[0]] = (var, lay.compose(p, moved))
        return
    flat = len(out_shape) == 2 and len(in_shape) > 2 and in_shape[0] in (None, out_shape[0])
    if flat and p != lay.identity(len(p)):
        inner = [d for i, d in enumerate(in_shape) if i >= 1]
        channel_only = sum(d != 1 for d in inner) <= 1  # e.g. (C, 1, 1): the order cannot differ
        if channel_only or _feeds_flatten_dense(low, n.output[0]):
            # a Dense/Linear fed by it takes its rows in this framework's flatten order (the porter permutes them)
            low.vars[n.output[0]] = (low.emit("flatten", [var], {}, low.label(n)), lay.identity(2))
            return
    if len(in_shape) == 2 and len(out_shape) > 2 and _unflattens_dense(low, n.input[0]):
        # a Dense/Linear's features become a feature map: reshape straight into the target's layout
        # (Keras (H, W, C), torch (C, H, W)); the porter orders the layer's columns to match
        rank = len(out_shape)
        q = lay.channels_last(rank) if low.source == "torch" else lay.channels_first(rank)
        v_shape = [0] * rank
        for i, d in enumerate(out_shape):
            v_shape[q[i]] = d
        var = low.get(n.input[0], lay.identity(2), low.label(n))
        out = low.emit("reshape", [var], {"shape": tuple(int(d) for d in v_shape[1:])}, low.label(n))
        low.vars[n.output[0]] = (out, q)
        return
    moved = regroup(tuple(in_shape), tuple(out_shape), p) if p != lay.identity(len(p)) and not flat else None
    if moved is not None:  # neighbouring axes merged or split in the variable's own layout: no transpose
        low.vars[n.output[0]] = (low.emit("reshape", [var], {"shape": moved[0]}, low.label(n)), moved[1])
        return
    var = low.get(n.input[0], lay.identity(len(p)), low.label(n))
    kind = "flatten" if flat else "reshape"
    attrs = {} if flat else {"shape": tuple(int(d) for d in out_shape[1:])}
    low.vars[n.output[0]] = (low.emit(kind, [var], attrs, low.label(n)), lay.identity(len(out_shape)))


def _unit_transpose(shape_in: tuple[Any, ...], shape_out: tuple[Any, ...], p: lay.Perm,
                    native: lay.Perm) -> lay.Perm | None:
    """The permutation a reshape amounts to when it only moves size-1 axes, preferring one that
    leaves the variable in the identity or native layout; None for a real reshape."""
    import itertools

    if len(shape_in) != len(shape_out) or tuple(shape_in) == tuple(shape_out):
        return None
    big_in = [i for i, d in enumerate(shape_in) if d != 1]
    big_out = [i for i, d in enumerate(shape_out) if d != 1]
    if [shape_in[i] for i in big_in] != [shape_out[i] for i in big_out]:
        return None
    ones_in = [i for i, d in enumerate(shape_in) if d == 1]
    ones_out = [i for i, d in enumerate(shape_out) if d == 1]
    found = []
    for order in itertools.permutations(ones_in):
        perm = [0] * len(shape_out)
        for o, i in zip(big_out, big_in, strict=True):
            perm[o] = i
        for o, i in zip(ones_out, order, strict=True):
            perm[o] = i
        found.append(tuple(perm))
    return next((q for q in found if lay.compose(p, q) in (lay.identity(len(p)), native)), found[0])


def _unflattens_dense(low: Lowering, tensor: str) -> bool:
    """Whether ``tensor`` is a dense layer's output (behind element-wise ops) that the porter
    knows is reshaped into a feature map (its group's ``unflatten``)."""
    name, _ = low.graph.trace_back(tensor)
    return any(g.kind == "dense" and g.output == name and g.attrs.get("unflatten") for g in low.groups)


def _feeds_flatten_dense(low: Lowering, tensor: str) -> bool:
    users = low.graph.consumers.get(tensor, [])
    if len(users) != 1:
        return False
    name = node_name(users[0])
    return any(name in g.nodes and g.kind == "dense" and g.attrs.get("flatten") for g in low.groups)
