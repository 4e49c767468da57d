"""Recurrent layers: an ONNX LSTM or GRU node becomes ``keras.layers.LSTM/GRU`` (in a
``Bidirectional`` when it runs both ways) or ``nn.LSTM/GRU(batch_first=True)``.

ONNX's recurrent output ``Y`` is time-major with a directions axis, ``(T, D, B, H)``; both
frameworks' layers give ``(B, T, D*H)``. The exporters' Transpose / Reshape / Squeeze chain from
``Y`` to such a tensor is followed here (and written as no code), so the layer's variable stands
for the chain's end. ``sequence_lens`` (torch's packed sequences, legacy exporter) becomes a
Keras mask: masked steps keep the state, as a packed sequence's end does.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from converters.codegen import layout as lay
from converters.codegen.handlers import group, node
from converters.codegen.lower import Lowering, group_input
from converters.codegen.masked_rnn import check_backward, loop_mask, outer_reads, split_directions
from converters.errors import UnsupportedLayerError
from converters.params import ParamGroup
from converters.rules.base import attrs_of, node_name

_DEFAULT_ACTS = {"lstm": ["sigmoid", "tanh", "tanh"], "gru": ["sigmoid", "tanh"]}
_LAYER_SUFFIX = re.compile(r"_l(\d+)(_reverse)?$")


def _refuse(g: ParamGroup, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"cannot generate the {g.kind.upper()} layer of ONNX node {g.nodes[0]!r}: {why}")


def _node(low: Lowering, g: ParamGroup) -> Any:
    return next(n for n in low.graph.nodes if node_name(n) == g.nodes[0])


def _zeros(low: Lowering, tensor: str) -> bool:
    """Whether ``tensor`` is all zeros: a constant, or an Expand/Slice/Reshape of a zero constant."""
    for _ in range(8):
        value = low.graph.const(tensor)
        if value is not None:
            return not np.any(value)
        node = low.graph.producer(tensor)
        if node is not None and node.op_type == "ConstantOfShape":
            from onnx import numpy_helper

            value = next((numpy_helper.to_array(x.t) for x in node.attribute if x.name == "value"), None)
            return value is None or not np.any(value)  # its default fill is 0
        if node is not None and node.op_type == "Concat":  # tf2onnx: one zero state per direction
            return all(_zeros(low, i) for i in node.input if i)
        if node is None or node.op_type not in ("Expand", "Slice", "Reshape", "Unsqueeze", "Squeeze", "Identity"):
            return False
        tensor = node.input[0]
    return False


def rnn_name(low: Lowering, g: ParamGroup) -> str:
    """The torch module's name (``gru``), or for one layer of a stacked module, ``lstm.l1``
    (the zoo's Keras naming); a Keras source's own layer name."""
    name = low.layer_name(g)
    split = split_directions(low.graph, g.output) if low.source == "tf" and name == g.kind else None
    if split is not None:  # tf2onnx's bidirectional LSTM node is unscoped; its Concat keeps the layer's name
        from converters.codegen.naming import tf_layer

        name = tf_layer(split[1][-1]) or name
    if low.source != "torch":
        return name
    layers = set()
    for other in low.groups:
        if other.kind == g.kind and low.layer_name(other) == name:
            for s in other.sources:
                m = _LAYER_SUFFIX.search(s)
                if m:
                    layers.add(int(m.group(1)))
    mine = {int(m.group(1)) for s in g.sources if (m := _LAYER_SUFFIX.search(s))}
    if len(layers) > 1 and len(mine) == 1:
        return f"{name}.l{min(mine)}"
    same = [other for other in low.groups if other.kind == g.kind and low.layer_name(other) == name]
    # parameter names lost (a non-lossless export): the stacked layers are the module's nodes in order
    return f"{name}.l{[id(o) for o in same].index(id(g))}" if len(same) > 1 else name


def sequence_lens_input(graph: Any, g: ParamGroup) -> str:
    """The ONNX name of a recurrent group's ``sequence_lens`` input, or ''. Lengths that torch's
    ``pack_padded_sequence`` sorted (TopK) are taken unsorted: see ``_batch_sort``."""
    if g.kind not in ("lstm", "gru") or not g.attrs.get("sequence_lens"):
        return ""
    head = next(n for n in graph.nodes if node_name(n) == g.nodes[0])
    tensor = str(head.input[4])
    node = graph.producer(tensor)
    while node is not None and node.op_type == "Cast":
        node = graph.producer(node.input[0])
    if node is not None and node.op_type == "TopK" and _sorted_by(graph, tensor) is not None:
        return str(node.input[0])
    return tensor


def _sorted_by(graph: Any, tensor: str) -> Any | None:
    """The TopK node whose values or indices ``tensor`` is (behind Casts), or None."""
    node = graph.producer(tensor)
    while node is not None and node.op_type == "Cast":
        node = graph.producer(node.input[0])
    return node if node is not None and node.op_type == "TopK" else None


@node("Gather")
def _batch_sort(low: Lowering, n: Any) -> None:
    """torch's ``pack_padded_sequence(enforce_sorted=False)`` sorts the batch by length (a Gather
    by TopK's indices) and ``pad_packed_sequence`` restores its order (a Gather by their inverse,
    a ScatterElements). Between them run per-sample layers only, so the pair is no code: each
    Gather passes its data on, and the recurrent layers take the unsorted lengths."""
    if int(attrs_of(n).get("axis", 0)) == 0:
        indices = n.input[1]
        node = low.graph.producer(indices)
        if node is not None and node.op_type == "ScatterElements":  # the inverse permutation
            indices = node.input[1]
        while (node := low.graph.producer(indices)) is not None and node.op_type == "Cast":
            indices = node.input[0]
        if node is not None and node.op_type == "TopK" and indices == node.output[1]:
            low.vars[n.output[0]] = low.vars[n.input[0]]
            return
    raise UnsupportedLayerError(f"cannot generate code for ONNX node {node_name(n)!r} (Gather): only an embedding "
                                "lookup or the batch sort of a packed sequence is generated")


def loop_sequence(graph: Any, g: ParamGroup) -> str:
    """The sequence a Keras cell's while-loop reads from the outer graph: (T, B, E), or ''."""
    if not g.attrs.get("from_loop"):
        return ""
    head = next(n for n in graph.nodes if node_name(n) == g.nodes[0])
    mask = loop_mask(graph, g)
    found = [t for t in outer_reads(graph, head) if t != mask]
    if len(found) != 1:
        raise UnsupportedLayerError(f"cannot generate the recurrent layer of Loop node {g.nodes[0]!r}: it reads "
                                    f"{found} from the outer graph, not one (time, batch, features) sequence")
    return found[0]


def keras_embedding_ids(graph: Any, g: ParamGroup) -> str:
    """The ids a Keras Embedding (tf2onnx) looks up before its wrap of negative ids
    (``where(ids < 0, ids + vocab, ids)`` as Less/Not/Cast/Mul/Add in the layer's own scope): ids
    are never negative in a valid input, and torch's nn.Embedding takes them as they are. '' if
    the lookup has no such wrap."""
    from converters.codegen.naming import tf_layer

    if g.kind != "embedding" or not g.input or graph.producer(g.input) is None:
        return ""
    scope = tf_layer(g.nodes[0])
    frontier, seen, stack = set(), set(), [g.input]
    while stack:
        tensor = stack.pop()
        node = graph.producer(tensor)
        if node is None or node.op_type not in ("Add", "Mul", "Cast", "Less", "Not") or \
                tf_layer(node_name(node)) != scope:
            frontier.add(tensor)
            continue
        if node_name(node) not in seen:
            seen.add(node_name(node))
            stack += [i for i in node.input if i and i not in graph.consts]
    return next(iter(frontier)) if len(frontier) == 1 and seen and scope else ""


def _follow(low: Lowering, g: ParamGroup) -> tuple[str, lay.Perm]:
    """The end of the exporter's chain from ``Y`` (T, D, B, H) to a rank-3 tensor with axes
    T, B, D*H in some order, and that order as ``p`` of a (B, T, D*H) variable. The chain's
    nodes are marked done: no code is written for them."""
    tensor = g.output
    # a Keras cell's while-loop (one direction) scans out (T, B, H)
    axes: list[str] = ["T", "B", "F"] if g.attrs.get("from_loop") else ["T", "D", "B", "H"]
    skipped = []
    split = split_directions(low.graph, tensor)  # tf2onnx: one Slice + Squeeze per direction, a Concat
    if split is not None:
        tensor, axes, skipped = split[0], ["T", "B", "F"], split[1]
    while tensor not in low.graph.outputs:
        users = [u for u in low.graph.consumers.get(tensor, []) if u.op_type != "Shape"]  # shapes: no data
        n = users[0] if len(users) == 1 else None
        if n is None or n.op_type not in ("Transpose", "Reshape", "Squeeze"):
            break
        shape_in, shape_out = low.shape(n.input[0]) or (), low.shape(n.output[0]) or ()
        if n.op_type == "Transpose":
            axes = [axes[i] for i in attrs_of(n).get("perm", tuple(reversed(range(len(axes)))))]
        elif n.op_type == "Squeeze" and len(axes) == 4 and int(g.tensors["W"].shape[0]) == 1 and \
                [int(v) % 4 for v in np.asarray(low.graph.const(n.input[1]) if len(n.input) > 1 else
                                                attrs_of(n).get("axes", [])).reshape(-1)] == [axes.index("D")]:
            axes = ["F" if x == "H" else x for x in axes if x != "D"]  # one direction: (..., H, ...)
        elif len(axes) == 4 and len(shape_out) == 3 and "".join(axes).find("DH") >= 0:
            d = axes.index("D")  # (..., D, H, ...) -> (..., D*H, ...): the directions concatenated
            kept_in = [s for i, s in enumerate(shape_in) if i not in (d, d + 1)]
            kept_out = [s for i, s in enumerate(shape_out) if i != d]
            if any(o is not None and i is not None and o != i for o, i in zip(kept_out, kept_in, strict=False)):
                break
            axes = [*axes[:d], "F", *axes[d + 2:]]
        elif not (tuple(shape_in) == tuple(shape_out) and None not in shape_in):
            break
        skipped.append(node_name(n))
        tensor = n.output[0]
    if len(axes) != 3 or sorted(axes) != ["B", "F", "T"]:
        raise _refuse(g, f"its output reaches {tensor!r} as axes {axes}; only a (batch, time, directions * hidden) "
                         "sequence in some axis order (how the exporters write it) is generated")
    low.done.update(skipped)
    var_axes = ["B", "T", "F"]
    return tensor, tuple(var_axes.index(a) for a in axes)


@group("lstm", "gru")
def _rnn(low: Lowering, g: ParamGroup) -> None:
    head = _node(low, g)
    a = g.attrs
    mask = loop_mask(low.graph, g)
    if a.get("from_loop") and int(g.tensors["W"].shape[0]) == 2:  # type: ignore[union-attr]
        check_backward(low.graph, g, group_input(low.graph, g), mask)
    elif mask:
        raise _refuse(g, "a masked one-direction Keras RNN writes its last output again at masked steps "
                         "(zero_output_for_mask=False), which a packed nn.LSTM/GRU does not; not generated")
    if a.get("layout", 0) != 0:
        raise _refuse(g, "layout=1 (batch-major ONNX RNN) is not generated; export with the default layout")
    if a["direction"] not in ("forward", "bidirectional"):
        raise _refuse(g, f"direction {a['direction']!r}; forward and bidirectional are generated")
    acts = [x.decode() if isinstance(x, bytes) else str(x) for x in a.get("activations") or []]  # tf2onnx: bytes
    default = _DEFAULT_ACTS[g.kind]
    if acts and acts != default * (len(acts) // len(default)):
        raise _refuse(g, f"activations {acts}; only the default sigmoid/tanh are generated")
    loops = [n for n in low.graph.nodes if node_name(n) in g.nodes] if head.op_type == "Loop" else []
    states = [i for n in loops for i in n.input[2:] if i and i not in low.graph.consts] if loops else \
        [head.input[k] for k in (5, 6) if len(head.input) > k and head.input[k]]
    for state in states:
        if not _zeros(low, state):
            raise _refuse(g, f"a non-zero initial state {state!r}; only zero initial states are generated")
    # a Loop's scan output (its last) is the sequence (a Bidirectional's: one per loop, joined in g.output)
    for out in [o for n in loops for o in n.output[:-1]] if loops else head.output[1:]:
        if out and (low.graph.consumers.get(out) or out in low.graph.outputs):
            raise _refuse(g, f"its final state {out!r} is used; only the output sequence is generated")
    lens = sequence_lens_input(low.graph, g)
    if lens and not low.channels_last:
        raise _refuse(g, "sequence_lens (a masked sequence) in a PyTorch twin; pack the sequence in your own code")
    name = rnn_name(low, g)
    x = low.get(group_input(low.graph, g), (1, 0, 2), name)  # ONNX X is (T, B, E): a (B, T, E) variable
    args = [x]
    if lens:
        steps = (low.shape(group_input(low.graph, g)) or (None,))[0]
        if steps is None:
            raise _refuse(g, "sequence_lens over a sequence of unknown length")
        key = ("mask", lens)
        if key not in low.memo:
            lens_var = low.get(lens, lay.identity(1), name)
            # 1, 2, ... T per sequence, built from the lengths alone (a constant would be captured as an input)
            rows = low.emit("repeat_steps", [lens_var], {"steps": int(steps)}, f"{name}_rows")
            numbers = low.emit("step_numbers", [rows], {}, f"{name}_steps")
            low.memo[key] = low.emit("sequence_mask", [numbers, lens_var], {}, f"{name}_mask")
        args.append(low.memo[key])
    attrs = {"direction": a["direction"], "hidden": a["hidden"], "reset_after": bool(a.get("linear_before_reset", 1)),
             "input_size": int(g.tensors["W"].shape[2])}  # type: ignore[union-attr]
    out = _masked(low, g, mask, args, attrs, name) if mask else low.emit("layer", args, attrs, name, g)
    end, p = _follow(low, g)
    low.vars[end] = (out, p)


def _masked(low: Lowering, g: ParamGroup, mask: str, args: list[str], attrs: dict[str, Any], name: str) -> str:
    """A layer under a Keras mask (``masked_rnn``): Keras takes it as ``mask=`` (B, T); the torch
    twin packs the sequence by each one's count of valid steps (right padding) and pads it back."""
    steps = (low.shape(mask) or (None,))[0]
    if steps is None:
        raise _refuse(g, "a mask over a sequence of unknown length")
    m = low.get(mask, (1, 0, 2), name)  # (T, B, 1) -> a (B, T, 1) variable
    if low.channels_last:
        if ("keras_mask", mask) not in low.memo:
            low.memo["keras_mask", mask] = low.emit("reshape", [m], {"shape": (int(steps),)}, f"{name}_mask")
        return low.emit("layer", [*args, low.memo["keras_mask", mask]], attrs, name, g)
    if ("lengths", mask) not in low.memo:
        low.memo["lengths", mask] = low.emit("mask_lengths", [m], {}, f"{name}_lengths")
    packed = low.emit("pack", [args[0], low.memo["lengths", mask]], {}, f"{name}_packed")
    out = low.emit("layer", [packed], attrs, name, g)
    return low.emit("unpack", [out], {"steps": int(steps)}, f"{name}_unpacked")
