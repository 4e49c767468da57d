"""Transformer layers of a torch source in its Keras twin: ``MultiHeadAttention`` called with the
padding mask (``converters.codegen.attention``), GELU as ``Activation("gelu")``, and the learned
tensors no Keras layer holds (a class token, a position embedding) as two short ``keras.layers.Layer``
subclasses written into ``model.py``, whose weights the porter fills by shape (``keras_target._raw``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.codegen import layout as lay
from converters.codegen.attention import attention_core
from converters.codegen.handlers import GROUP_HANDLERS, group
from converters.codegen.keras_patterns import gelu
from converters.codegen.lower import Lowering, group_input
from converters.codegen.naming import torch_module, torch_scope_of
from converters.codegen.program import Op, Program
from converters.codegen.text import literal
from converters.errors import UnsupportedLayerError
from converters.graph import Graph
from converters.params import ParamGroup
from converters.rules.base import attrs_of, node_name


def torch_patterns(graph: Graph, groups: list[ParamGroup]) -> list[ParamGroup]:
    """``groups`` with what a torch graph spells out found again for its Keras twin: each GELU
    (``keras_patterns.gelu``, recognised by its values) as a step, and each class token's Concat."""
    class_tokens(graph, groups)
    taken = {g.output for g in groups}
    found = [p for n in graph.nodes if n.op_type in ("Erf", "Tanh") and (p := gelu(graph, n, taken))]
    found += [p for n in graph.nodes if n.op_type == "Gather" and (p := _select(graph, n))]
    return groups + found


def _select(graph: Graph, n: Any) -> ParamGroup | None:
    """``x[:, i]``: a Gather of one constant index along an axis after the batch (BERT's first token)."""
    index = graph.const(n.input[1])
    rank = len(graph.shapes.get(n.input[0]) or ())
    axis = int(attrs_of(n).get("axis", 0)) % max(rank, 1)
    if graph.const(n.input[0]) is not None or index is None or index.ndim != 0 or rank < 2 or axis == 0:
        return None
    return ParamGroup("select", [node_name(n)], {}, {"axis": axis, "index": int(index)}, input=str(n.input[0]),
                      output=str(n.output[0]))


@group("select", target="tf")
def _take(low: Lowering, g: ParamGroup) -> None:
    var, p = low.vars[g.input]
    axis = p[g.attrs["axis"]]
    index: list[int | None] = [None] * len(p)
    index[axis] = g.attrs["index"]
    kept = tuple(i for i in range(len(p)) if i != g.attrs["axis"])  # the tensor's axes left, in order
    q = tuple(sorted(p[i] for i in kept))
    perm = tuple(q.index(p[i]) for i in kept)
    low.vars[g.output] = (low.emit("select", [var], {"index": tuple(index)}, low.label(_first(low, g))), perm)


def _first(low: Lowering, g: ParamGroup) -> Any:
    return next(n for n in low.graph.nodes if node_name(n) == g.nodes[0])


def class_tokens(graph: Graph, groups: list[ParamGroup]) -> None:
    """A class token (a learned (1, 1, E) tensor Expanded to the batch, then Concatenated before the
    sequence) becomes one step from the sequence to the Concat's output, so the shape arithmetic that
    feeds the Expand is not walked: the twin's layer broadcasts the token itself."""
    for g in groups:
        if g.kind != "tensor" or g.attrs.get("op") != "Expand":
            continue
        users = graph.consumers.get(g.output, [])
        value = g.tensors["value"]
        if len(users) != 1 or users[0].op_type != "Concat" or value is None or value.ndim != 3 or \
                value.shape[:2] != (1, 1):
            continue
        cat = users[0]
        axis = int(attrs_of(cat).get("axis", 0))
        if len(cat.input) != 2 or cat.input[0] != g.output or axis not in (1, -2):
            continue
        g.attrs["class_token"] = True
        g.input, g.output = str(cat.input[1]), str(cat.output[0])
        g.nodes = [*g.nodes, node_name(cat)]


def _weight_name(g: ParamGroup) -> str:
    source = sorted(g.sources)[0] if g.sources else "value"
    return source.rsplit(".", 1)[-1]


def _tensor_layer_name(g: ParamGroup) -> str:
    source = sorted(g.sources)[0] if g.sources else ""
    return torch_module(source) or source or "tensor"


@group("tensor", target="tf")
def _tensor(low: Lowering, g: ParamGroup) -> None:
    value = g.tensors["value"]
    shape = low.shape(g.input) or ()
    name = _tensor_layer_name(g)
    if g.attrs.get("class_token"):
        kind = "class_token"
    elif g.attrs.get("op") == "Add" and value is not None and value.ndim == 3 and value.shape[0] == 1 \
            and tuple(shape[1:]) == tuple(value.shape[1:]):
        kind = "position_embedding"
    else:
        raise UnsupportedLayerError(
            f"cannot generate layer {name!r} (ONNX {'+'.join(g.nodes)}): a learned tensor of shape "
            f"{None if value is None else value.shape} used by {g.attrs.get('op')}; only a class token "
            "(Expand + Concat before the sequence) and a position embedding (Add of (1, L, E)) are generated")
    rank = len(low.perm(g.input))
    var = low.get(g.input, lay.identity(rank), name)
    out = low.emit("layer", [var], {"token": kind, "weight": _weight_name(g)}, name, g)
    low.vars[g.output] = (out, lay.identity(rank))


@group("attention", target="tf")
def _attention(low: Lowering, g: ParamGroup) -> None:
    layers = {n for other in low.groups if other is not g for n in other.nodes}
    core = attention_core(low.graph, g, layers)
    src = group_input(low.graph, g)
    want = lay.identity(len(low.perm(src)))
    var = low.get(src, want, core.name)
    args = [var, var]  # self-attention: the query and the value are the same sequence
    if core.mask:
        key = ("attention_mask", core.mask)
        if key not in low.memo:  # (B, L) ids mask -> (B, 1, L) booleans: every query sees the same keys
            low.memo[key] = low.emit("attention_mask", [low.get(core.mask, lay.identity(2))], {}, "attention_mask")
        args.append(low.memo[key])
    attrs = {"heads": core.heads, "key_dim": core.key_dim}
    low.vars[g.output] = (low.emit("layer", args, attrs, core.name, g), want)


@group("embedding", target="tf")
def _embedding(low: Lowering, g: ParamGroup) -> None:
    """An Embedding looked up at constant positions (``arange(L)``, as a torch model computes its
    position ids) reads them from a sequence input instead: ``cumsum(ones_like(ids)) - 1``, as the
    hand-written Keras twins do (a constant in a functional model would be no layer's input)."""
    positions = low.graph.const(g.input)
    if positions is None:
        GROUP_HANDLERS["embedding"](low, g)
        return
    flat = np.asarray(positions).reshape(-1)
    length = flat.size
    name = low.layer_name(g)
    if positions.ndim != 2 or positions.shape[0] != 1 or not np.array_equal(flat, np.arange(length) + flat[0]):
        raise UnsupportedLayerError(f"cannot generate layer {name!r} (ONNX {'+'.join(g.nodes)}): an Embedding "
                                    f"looked up at constant ids {positions.shape} other than positions 0..L-1")
    ints = {vi.name for vi in low.graph.model.graph.input if vi.type.tensor_type.elem_type in (6, 7)}  # int32/64
    ids = next((i for i in low.graph.inputs if i in ints and tuple((low.shape(i) or ())[1:]) == (length,)), None)
    if ids is None:
        raise UnsupportedLayerError(f"cannot generate layer {name!r}: its positions 0..{length - 1} need a "
                                    f"(batch, {length}) input to be computed from")
    steps = low.emit("step_numbers", [low.get(ids, lay.identity(2))], {}, f"{name}_positions")
    first = int(flat[0])
    if first != 1:  # step_numbers counts from 1
        steps = low.emit("sub", [steps], {"scalar": 1 - first, "scalar_first": False}, f"{name}_positions")
    low.vars[g.output] = (low.emit("layer", [steps], {}, name, g), lay.identity(3))


@group("gelu", target="tf")
def _gelu(low: Lowering, g: ParamGroup) -> None:
    var, p = low.vars[group_input(low.graph, g)]
    first = next((n for n in low.graph.nodes if node_name(n) == g.nodes[0]), None)
    name = (torch_scope_of(first) if first is not None else "") or "gelu"
    low.vars[g.output] = (low.emit("gelu", [var], {"approximate": g.attrs["approximate"]}, name), p)


# -- rendering (keras_emit) ----------------------------------------------------------------
def keras_layer(op: Op) -> str | None:
    """The constructor of an attention or learned-tensor layer; None for another layer."""
    g = op.group
    if g is None or g.kind not in ("attention", "tensor"):
        return None
    name = literal(op.name)
    if g.kind == "attention":
        return f"layers.MultiHeadAttention(num_heads={op.attrs['heads']}, key_dim={op.attrs['key_dim']}, name={name})"
    cls = "ClassToken" if op.attrs["token"] == "class_token" else "PositionEmbedding"
    return f"{cls}(weight_name={literal(op.attrs['weight'])}, name={name})"


def keras_call(op: Op, ctor: str, args: list[str]) -> str | None:
    """The call of an attention layer (query, value and the boolean mask); None for any other op."""
    if op.group is None or op.group.kind != "attention":
        return None
    mask = f", attention_mask={args[2]}" if len(args) > 2 else ""
    return f"{ctor}({args[0]}, {args[1]}{mask})"


def keras_expression(op: Op, args: list[str]) -> str | None:
    """The right-hand side of the ops this module adds: a GELU and the attention mask."""
    if op.kind == "gelu":
        if op.attrs["approximate"] == "none":
            return f"layers.Activation({literal('gelu')}, name={literal(op.name)})({args[0]})"
        return f"keras.activations.gelu({args[0]}, approximate=True)"
    if op.kind == "select":  # x[:, i]
        index = list(op.attrs["index"])
        while index and index[-1] is None:
            index.pop()
        return f"{args[0]}[{', '.join(':' if i is None else str(i) for i in index)}]"
    if op.kind == "attention_mask":
        return f"keras.ops.expand_dims(keras.ops.cast({args[0]}, {literal('bool')}), 1)"
    return None


_CLASSES = {
    "ClassToken": '''
class ClassToken(layers.Layer):
    """Prepends a learned token (weight of shape (1, 1, dim)) to a (batch, length, dim) sequence."""

    def __init__(self, weight_name="token", **kwargs):
        super().__init__(**kwargs)
        self.weight_name = weight_name

    def build(self, input_shape):
        shape = (1, 1, input_shape[-1])
        self.token = self.add_weight(name=self.weight_name, shape=shape, initializer="zeros")

    def call(self, x):
        token = keras.ops.broadcast_to(self.token, (keras.ops.shape(x)[0], 1, keras.ops.shape(x)[-1]))
        return keras.ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "weight_name": self.weight_name}
''',
    "PositionEmbedding": '''
class PositionEmbedding(layers.Layer):
    """Adds a learned (1, length, dim) table to a (batch, length, dim) sequence."""

    def __init__(self, weight_name="embedding", **kwargs):
        super().__init__(**kwargs)
        self.weight_name = weight_name

    def build(self, input_shape):
        shape = (1, input_shape[1], input_shape[2])
        self.embedding = self.add_weight(name=self.weight_name, shape=shape, initializer="zeros")

    def call(self, x):
        return x + self.embedding

    def get_config(self):
        return {**super().get_config(), "weight_name": self.weight_name}
''',
}


def keras_classes(program: Program) -> list[str]:
    """The layer classes ``model.py`` defines before ``build_model`` (none for most models)."""
    used = {("ClassToken" if op.attrs["token"] == "class_token" else "PositionEmbedding")
            for op in program.ops if op.kind == "layer" and op.group is not None and op.group.kind == "tensor"}
    out: list[str] = []
    for cls in ("ClassToken", "PositionEmbedding"):
        if cls in used:
            out += [*_CLASSES[cls].strip("\n").split("\n"), "", ""]
    return out

