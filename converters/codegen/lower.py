"""Lower a folded ONNX graph to a ``Program``: parametric layers (converters.params) and
parameter-free ops in forward order, each operand in the layout the target framework wants.

Layout: every ONNX tensor is held by a variable ``v`` with ``t = v.transpose(p)``
(``converters.codegen.layout``). Graph Transposes only change ``p``; an op that needs its
operand in another layout gets one explicit transpose. Spatial layers take channels-last
variables in Keras and channels-first ones in torch, so a CNN's generated twin has no
interior transposes in either framework.
"""

from __future__ import annotations

from typing import Any

from converters.codegen import layout as lay
from converters.codegen.naming import Unique, node_label, tf_layer, torch_module
from converters.codegen.program import Op
from converters.errors import UnsupportedLayerError
from converters.graph import Graph
from converters.params import ParamGroup
from converters.rules.base import node_name

# Where a node's data comes in (the rest are shapes, pads, axes: constants read as attributes).
DATA_INPUTS = {"Reshape": 1, "Pad": 1, "Slice": 1, "Squeeze": 1, "Unsqueeze": 1, "ReduceMean": 1, "ReduceMax": 1,
               "ReduceSum": 1, "Expand": 1, "Tile": 1, "Resize": 1, "Clip": 1, "Flatten": 1,
               "Gather": 1}
LAYER_KINDS = ("dense", "conv", "batchnorm", "layernorm", "embedding")


class Lowering:
    """The state of one lowering: the variable (and its ``p``) of each ONNX tensor."""

    def __init__(self, graph: Graph, target: str, source: str) -> None:
        self.graph, self.target, self.source = graph, target, source
        self.channels_last = target == "tf"
        self.vars: dict[str, tuple[str, lay.Perm]] = {}
        self.ops: list[Op] = []
        self.names = Unique()
        self.groups: list[ParamGroup] = []
        self.reserved: set[str] = set()  # the layers' names
        self.hints: dict[str, dict[str, Any]] = {}  # per layer name: what the graph lost (a folded BN's epsilon)
        self.done: set[str] = set()  # nodes a layer's handler already accounted for (no code of their own)
        self.memo: dict[Any, str] = {}  # variables shared between layers (one mask for several RNNs)
        self._count = 0

    # -- variables -------------------------------------------------------------------------
    def new_var(self) -> str:
        self._count += 1
        return f"v{self._count}"

    def emit(self, kind: str, args: list[str], attrs: dict[str, Any] | None = None, name: str = "",
             group: ParamGroup | None = None) -> str:
        out = self.new_var()
        if name and kind != "layer" and name in self.reserved:
            name = f"{name}_{kind}"  # a layer's name is the layer's, not that of an op in its scope
        self.ops.append(Op(kind, out, list(args), attrs or {}, self.names(name) if name else "", group))
        return out

    def native(self, rank: int) -> lay.Perm:
        """``p`` of a variable in the target's layout for a channels-first (ONNX) spatial tensor."""
        return lay.channels_last(rank) if self.channels_last else lay.identity(rank)

    def get(self, tensor: str, want: lay.Perm | None = None, label: str = "") -> str:
        """The variable holding ``tensor``, transposed first when ``want`` is another layout."""
        var, p = self.vars[tensor]
        if want is None or p == want:
            return var
        perm = lay.to_reach(p, want)
        out = self.emit("transpose", [var], {"perm": perm}, name=f"{label or 'permute'}_perm")
        self.vars[tensor] = (out, want)  # later users take the transposed variable too
        return out

    def perm(self, tensor: str) -> lay.Perm:
        return self.vars[tensor][1]

    def shape(self, tensor: str) -> tuple[int | None, ...] | None:
        return self.graph.shapes.get(tensor)

    def label(self, node: Any) -> str:
        return node_label(node_name(node), self.source)

    def layer_name(self, group: ParamGroup) -> str:
        """The source's own name of a layer: its torch module path or its Keras layer name."""
        folded = "/batchnorm/"  # a BatchNorm's constants folded into a conv's: the conv's own name comes first
        sources = sorted(group.sources, key=lambda n: (group.kind != "batchnorm" and folded in n, n))
        for name in [*sources, *group.nodes]:
            found = tf_layer(name) if self.source == "tf" else torch_module(name)
            if found:
                return found
        return group.kind


    def folded_batchnorm(self, group: ParamGroup) -> str:
        """The name of the Keras BatchNormalization that tf2onnx folded into this conv (its node or
        folded constants are scoped by it), so that the twin keeps it as a layer; '' if none was."""
        if self.source != "tf" or group.kind != "conv":
            return ""
        for name in [*group.nodes, *sorted(group.sources)]:
            if "/batchnorm/" in name:
                return tf_layer(name.split("/batchnorm/")[0] + "/x")
        return ""


def data_inputs(graph: Graph, node: Any) -> list[str]:
    """The inputs of ``node`` that carry data (not constants read as attributes)."""
    keep = DATA_INPUTS.get(node.op_type)
    ins = [i for i in node.input if i]
    return ins[:keep] if keep else [i for i in ins if i not in graph.consts]


def group_input(graph: Graph, group: ParamGroup) -> str:
    if group.input:
        return group.input
    if group.attrs.get("sequence_input"):  # a Keras RNN's while-loop reads it from the outer graph
        return str(group.attrs["sequence_input"])
    first = next(n for n in graph.nodes if node_name(n) == group.nodes[0])
    return next(i for i in first.input if i and i not in graph.consts)


def tensordot_input(graph: Graph, group: ParamGroup) -> str:
    """A Keras Dense on a sequence (tf2onnx's Tensordot: Reshape to 2-D, MatMul, Reshape back): the
    sequence it reads, which the generated Dense takes as it is; '' for any other layer."""
    if group.kind != "dense" or not group.input:
        return ""
    node = graph.producer(group.input)
    if node is None or node.op_type != "Reshape" or "Tensordot" not in node_name(node):
        return ""
    rank_in, rank_out = len(graph.shapes.get(node.input[0]) or ()), len(graph.shapes.get(group.output) or ())
    return str(node.input[0]) if rank_in == rank_out > 2 else ""


def walk(graph: Graph, groups: list[ParamGroup]) -> list[Any]:
    """Steps (ONNX nodes and parameter groups) the outputs depend on, in forward order: depth-first
    from the outputs, each step's inputs in their order (the main branch of a residual first)."""
    by_output = {g.output: g for g in groups}
    inside = {n for g in groups for n in g.nodes}

    def step_of(tensor: str) -> Any | None:
        if tensor in by_output:
            return by_output[tensor]
        node = graph.producer(tensor)
        if node is None:
            return None
        if node_name(node) in inside:
            raise UnsupportedLayerError(f"tensor {tensor!r} inside the layer of ONNX node {node_name(node)!r} is "
                                        "read by another node; such a graph has no layer-by-layer twin")
        return node

    def inputs_of(step: Any) -> list[str]:
        if isinstance(step, ParamGroup):
            extra = step.attrs.get("extra_inputs", ())  # e.g. an RNN's sequence_lens
            return [group_input(graph, step), *extra]
        return data_inputs(graph, step)

    order: list[Any] = []
    done: set[int] = set()
    for out in graph.outputs:
        root = step_of(out)
        stack = [(root, 0)] if root is not None and id(root) not in done else []
        while stack:
            step, k = stack.pop()
            if id(step) in done:
                continue
            ins = inputs_of(step)
            while k < len(ins):
                parent = step_of(ins[k])
                k += 1
                if parent is not None and id(parent) not in done:
                    stack += [(step, k), (parent, 0)]
                    break
            else:
                done.add(id(step))
                order.append(step)
    return order
