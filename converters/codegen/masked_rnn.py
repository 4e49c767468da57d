"""Keras Bidirectional recurrent layers as tf2onnx writes them: two while-loops (``Loop``), the
backward one reading its sequence (and its mask) reversed in time and its output reversed back.

A masked layer's loops read the Keras mask, a bool ``(T, B, 1)`` tensor: a masked step keeps the
state, and a Bidirectional layer writes zeros there (it forces ``zero_output_for_mask``). Keras's
backward direction reverses the whole padded sequence, so with right padding (each sequence's
valid steps first, as tokenizers pad) it starts at the last valid step; that is torch's packed
sequence, so the torch twin packs: ``pack_padded_sequence(x, lengths)`` with each sequence's
count of valid steps, the ``nn.LSTM``, ``pad_packed_sequence`` (zeros after the last valid step).
A mask with holes or left padding has no packed equivalent; the generated code assumes right padding.

Also here: tf2onnx's split of an unmasked bidirectional ONNX RNN's output per direction
(``split_directions``), and the stacking of Keras's ``lstm.l0``, ``lstm.l1`` ... into one torch
module (``stack_layers``), and the torch rendering of the packing ops (``torch_expression``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from converters.errors import UnsupportedLayerError
from converters.graph import Graph
from converters.params import ParamGroup
from converters.rules.base import attrs_of, node_name

# ops that compute a shape (a full-length reversal's lengths come from the tensor's own shape)
_SHAPE_OPS = {"Shape", "Gather", "Expand", "Cast", "Slice", "Concat", "Squeeze", "Unsqueeze", "Reshape",
              "ConstantOfShape", "Identity"}


def _loop(graph: Graph, name: str) -> Any:
    return next(n for n in graph.nodes if node_name(n) == name)


def outer_reads(graph: Graph, loop: Any) -> list[str]:
    """The rank-3 tensors a Loop's body reads from the outer graph (sorted by name)."""
    body = next(a.g for a in loop.attribute if a.name == "body")
    made = {o for n in body.node for o in n.output} | {i.name for i in body.input} | \
        {t.name for t in body.initializer}
    outer = sorted({i for n in body.node for i in n.input if i and i not in made and i not in graph.consts})
    return [t for t in outer if len(graph.shapes.get(t) or ()) == 3]


def is_bool(graph: Graph, tensor: str) -> bool:
    """Whether ``tensor`` is bool: by shape inference's type, else a Cast to bool behind layout ops."""
    from onnx import TensorProto

    g = graph.model.graph
    for vi in [*g.value_info, *g.input]:
        if vi.name == tensor:
            return vi.type.tensor_type.elem_type == TensorProto.BOOL
    node = graph.producer(tensor)
    while node is not None and node.op_type in ("Transpose", "Unsqueeze", "Reshape", "ReverseSequence"):
        node = graph.producer(node.input[0])
    return node is not None and node.op_type == "Cast" and int(attrs_of(node)["to"]) == TensorProto.BOOL


def loop_mask(graph: Graph, g: ParamGroup) -> str:
    """The Keras mask a recurrent group's (forward) while-loop reads, ``(T, B, 1)`` bool, or ''."""
    if not g.attrs.get("from_loop"):
        return ""
    found = [t for t in outer_reads(graph, _loop(graph, g.nodes[0])) if is_bool(graph, t)]
    if len(found) > 1:
        raise UnsupportedLayerError(f"cannot generate the recurrent layer of Loop node {g.nodes[0]!r}: it reads "
                                    f"{len(found)} bool tensors {found}, not one Keras mask")
    return found[0] if found else ""


def _full_reversal(graph: Graph, node: Any) -> bool:
    """Whether a ReverseSequence reverses every sequence over its whole length: (T, B, ...) with
    lengths computed from the tensor's shape alone (no data: Keras's ``reverse`` of the padded sequence)."""
    a = attrs_of(node)
    if int(a.get("time_axis", 0)) != 0 or int(a.get("batch_axis", 1)) != 1:
        return False
    stack, seen = [node.input[1]], set()
    while stack:
        tensor = stack.pop()
        if tensor in graph.consts or tensor in seen:
            continue
        seen.add(tensor)
        producer = graph.producer(tensor)
        if producer is None or producer.op_type not in _SHAPE_OPS:
            return False
        if producer.op_type != "Shape":
            stack += [i for i in producer.input if i]
    return True


def _reversed_of(graph: Graph, tensor: str) -> str:
    """The tensor that ``tensor`` fully reverses in time, or ''."""
    node = graph.producer(tensor)
    return str(node.input[0]) if node is not None and node.op_type == "ReverseSequence" and \
        _full_reversal(graph, node) else ""


def check_backward(graph: Graph, g: ParamGroup, sequence: str, mask: str) -> None:
    """Refuse unless the backward loop of a merged Bidirectional group reads ``sequence`` (and
    ``mask``) fully reversed in time and its output is reversed back into the Concat, in the
    forward's (T, B, H) order: what ``bidirectional=True`` computes."""
    back = _loop(graph, g.nodes[1])

    def refuse(why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"cannot generate the Bidirectional layer of Loop nodes {g.nodes}: {why}")

    reads = {_reversed_of(graph, t) for t in outer_reads(graph, back)}
    if reads != {sequence, mask} - {""}:
        raise refuse(f"the backward loop reads {sorted(outer_reads(graph, back))}, not the reversed sequence "
                     f"{sequence!r}{f' and mask {mask!r}' if mask else ''}")
    concat = graph.producer(g.output)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        raise refuse(f"its output {g.output!r} is not the Concat of both directions")
    labels, tensor, reversals = ["T", "B", "H"], concat.input[1], 0
    chain = []
    while (node := graph.producer(tensor)) is not None and node.op_type in ("Transpose", "ReverseSequence"):
        chain.append(node)
        tensor = node.input[0]
    if node is None or node_name(node) != node_name(back):
        raise refuse(f"the Concat's second input does not come from the backward loop {g.nodes[1]!r}")
    for node in reversed(chain):
        if node.op_type == "Transpose":
            labels = [labels[i] for i in attrs_of(node)["perm"]]
            continue
        a = attrs_of(node)
        if labels[int(a.get("time_axis", 0))] != "T" or labels[int(a.get("batch_axis", 1))] != "B" or \
                not _full_reversal(graph, node):
            raise refuse(f"its output is reversed by {node_name(node)!r}, not over the whole time axis")
        reversals += 1
    if labels != ["T", "B", "H"] or reversals != 1 or int(attrs_of(concat).get("axis", 0)) % 3 != 2:
        raise refuse("the backward output reaches the Concat as axes "
                     f"{labels} after {reversals} time reversals; expected (T, B, H) reversed once, joined on H")


def split_directions(graph: Graph, y: str) -> tuple[str, list[str]] | None:
    """tf2onnx's split of a bidirectional ONNX RNN's ``Y`` (T, 2, B, H): per direction a Slice of
    axis 1 and a Squeeze of it, joined by a Concat on H, forward first: (T, B, 2H). The Concat's
    output and the chain's node names, or None for any other use of ``Y``."""
    users = [u for u in graph.consumers.get(y, []) if u.op_type != "Shape"]
    if len(users) != 2 or any(u.op_type != "Slice" for u in users):
        return None
    parts: dict[int, tuple[str, list[str]]] = {}
    for s in users:
        given = [graph.const(i) if i else None for i in [*s.input[1:], "", ""][:4]]
        if any(v is None for v in given[:3]) or (given[3] is not None and int(np.asarray(given[3]).reshape(-1)[0]) != 1):
            return None
        start, end, axis = (int(np.asarray(v).reshape(-1)[0]) for v in given[:3])
        squeeze = graph.only_consumer(s.output[0])
        axes = (graph.const(squeeze.input[1]) if len(squeeze.input) > 1 else attrs_of(squeeze).get("axes")) \
            if squeeze is not None and squeeze.op_type == "Squeeze" else None
        if axis % 4 != 1 or end != start + 1 or axes is None or [int(a) % 4 for a in np.asarray(axes).reshape(-1)] != [1]:
            return None
        parts[start] = (str(squeeze.output[0]), [node_name(s), node_name(squeeze)])  # type: ignore[union-attr]
    if sorted(parts) != [0, 1]:
        return None
    concat = graph.only_consumer(parts[0][0])
    if concat is None or concat.op_type != "Concat" or list(concat.input) != [parts[0][0], parts[1][0]] or \
            int(attrs_of(concat).get("axis", 0)) % 3 != 2:
        return None
    return str(concat.output[0]), [*parts[0][1], *parts[1][1], node_name(concat)]


_STACKED = re.compile(r"^(.+)\.l(\d+)$")


def _rnn_layer(op: Any) -> bool:
    return op is not None and op.kind == "layer" and op.group is not None and op.group.kind in ("lstm", "gru")


def stack_layers(low: Any) -> None:
    """torch only, once every step is lowered: recurrent layers named ``base.l0``, ``base.l1`` ...
    (how a stacked torch RNN's Keras twin names its layers), each reading only the previous one's
    output (under the same packing), become one ``nn.LSTM/GRU(num_layers=n)`` named ``base``, as
    a stacked torch module is: one pack and one unpack around it."""
    while True:
        by_out = {op.out: op for op in low.ops}
        uses: dict[str, int] = {}
        for var in [a for op in low.ops for a in op.args] + [low.vars[t][0] for t in low.graph.outputs]:
            uses[var] = uses.get(var, 0) + 1
        found = None
        for upper in filter(_rnn_layer, low.ops):
            below = by_out.get(upper.args[0])
            between: list[Any] = []
            if below is not None and below.kind == "pack":  # lower -> unpack -> pack -> upper
                unpack = by_out.get(below.args[0])
                lower = by_out.get(unpack.args[0]) if unpack is not None and unpack.kind == "unpack" else None
                pack = by_out.get(lower.args[0]) if _rnn_layer(lower) else None
                if pack is None or pack.kind != "pack" or pack.args[1] != below.args[1]:
                    continue
                between = [unpack, below]
            else:
                lower = below
            if _same_stack(lower, upper) and all(uses.get(op.out) == 1 for op in [lower, *between]):
                found = lower, upper, between
                break
        if found is None:
            return
        lower, upper, between = found
        first = _STACKED.match(lower.name)
        if int(lower.attrs.get("num_layers", 1)) == 1 and first:
            lower.name = first.group(1)
        lower.attrs["num_layers"] = int(lower.attrs.get("num_layers", 1)) + 1
        low.ops = [op for op in low.ops if op is not upper and all(op is not b for b in between)]
        for op in low.ops:
            op.args = [lower.out if a == upper.out else a for a in op.args]
        low.vars = {t: (lower.out if v == upper.out else v, p) for t, (v, p) in low.vars.items()}


def _same_stack(lower: Any, upper: Any) -> bool:
    """Whether ``upper`` is the next layer of ``lower``'s stack: same kind, direction and size, named
    ``base.l{k}`` with k the stack's current depth (``lower`` was ``base.l0``)."""
    if not _rnn_layer(lower) or lower.group.kind != upper.group.kind:
        return False
    if any(lower.attrs.get(k) != upper.attrs.get(k) for k in ("direction", "hidden", "reset_after")):
        return False
    depth = int(lower.attrs.get("num_layers", 1))
    m = _STACKED.match(upper.name or "")
    first = _STACKED.match(lower.name or "") if depth == 1 else None
    base = first.group(1) if first and first.group(2) == "0" else (lower.name if depth > 1 else None)
    return bool(m and base and m.group(1) == base and int(m.group(2)) == depth)


def torch_expression(op: Any, args: list[str]) -> str | None:
    """The torch rendering of the packing ops, or None for any other op."""
    x = args[0]
    if op.kind == "mask_lengths":  # (B, T, 1) bool -> the valid steps per sequence
        return f"{x}.sum((1, 2)).cpu()"  # pack_padded_sequence takes the lengths on the CPU
    if op.kind == "pack":
        return f"nn.utils.rnn.pack_padded_sequence({x}, {args[1]}, batch_first=True, enforce_sorted=False)"
    if op.kind == "unpack":
        return f"nn.utils.rnn.pad_packed_sequence({x}, batch_first=True, total_length={op.attrs['steps']})[0]"
    return None
