"""Load and check an ONNX model, fold its constants, and walk it into ParamGroups.

Weights are found by following the graph, never by initializer name: exporters
rename, transpose, deduplicate (Identity) and slice them. Every constant carries the
set of initializers it was computed from, so the port can account for each one.

Folding runs each constant node through ONNX's reference evaluator. A node the
evaluator cannot run (no implementation, or numpy refuses the values) stays in the
graph and its reason is recorded in ``Graph.unfolded`` (the port report carries it);
any other exception is a bug and propagates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import ConversionError
from converters.safety import check_external_data, check_opset, fold_budget, folded_size

# Ops that never get folded even when their inputs are constant.
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                 "Bernoulli", "Loop", "If", "Scan", "Dropout"}
# What ONNX's reference evaluator raises when it cannot run a node (NotImplementedError is a
# RuntimeError): the node is left unfolded, with the reason. Anything else is our bug.
_REFERENCE_ERRORS = (RuntimeError, ValueError)
# Layout-neutral element-wise ops we look through when tracing a tensor's origin.
_PASS_THROUGH = {"Relu", "Identity", "Cast", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "Elu", "Gelu", "Erf"}


@dataclass
class Graph:
    """A constant-folded view of an ONNX graph."""

    model: Any  # onnx.ModelProto, shape-inferred
    nodes: list[Any]  # the nodes left after folding, in topological order
    consts: dict[str, np.ndarray]
    provenance: dict[str, frozenset[str]]  # constant name -> initializers it came from
    initializers: list[str]
    producers: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list[Any]] = field(default_factory=dict)
    shapes: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    unfolded: dict[str, str] = field(default_factory=dict)  # node -> why its constant inputs were not folded
    notes: list[str] = field(default_factory=list)  # e.g. shape inference that failed (shapes then unknown)

    def index(self) -> Graph:
        """Fill ``producers`` and ``consumers`` from ``nodes``; returns the graph."""
        self.producers, self.consumers = {}, {}
        for node in self.nodes:
            for out in node.output:
                self.producers[out] = node
            for i in node.input:
                if i:
                    self.consumers.setdefault(i, []).append(node)
        return self

    def producer(self, name: str) -> Any | None:
        return self.producers.get(name)

    def only_consumer(self, name: str) -> Any | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def trace_back(self, name: str) -> tuple[str, Any | None]:
        """Follow ``name`` up through layout-neutral element-wise ops; return the tensor and its producer."""
        node = self.producer(name)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            name = node.input[0]
            node = self.producer(name)
        return name, node


def load_onnx(path: str | Path) -> Any:
    """Load and check an ONNX file with errors that name the file and the fix.

    External data is only read from inside the model's own folder.
    """
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    path = Path(path)
    if not path.exists():
        raise ConversionError(f"ONNX file not found: {path}")
    if path.is_dir():
        raise ConversionError(f"expected an .onnx file, got a directory: {path}")
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise ConversionError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); "
            "it may be truncated or not ONNX at all: export it again"
        ) from exc
    if not model.graph.node:
        raise ConversionError(f"{path} holds no graph nodes: it is empty or not an ONNX model; export it again")
    check_opset(model, path)
    base = path.resolve().parent
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            check_external_data(tensor, base, path)
    if any(uses_external_data(t) for t in _get_all_tensors(model)):
        onnx.load_external_data_for_model(model, str(base))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"{path}: onnx.checker rejected the model: {exc}") from exc
    return model


def fold(model: Any) -> Graph:
    """Constant-fold ``model`` (evaluating nodes whose inputs are all constant) and index it."""
    import onnx
    from onnx import numpy_helper, shape_inference

    notes: list[str] = []
    try:
        twin = _with_shape_proxies(model)
        inferred = shape_inference.infer_shapes(twin, data_prop=True)
        if twin is not model:  # keep the real nodes, take the shapes
            model = _copy_model(model)
            del model.graph.value_info[:]
            model.graph.value_info.extend(inferred.graph.value_info)
        else:
            model = inferred
    except (shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        # shapes are a help for tracing, not a requirement
        notes.append(f"shape inference failed ({type(exc).__name__}: {exc}); only declared shapes are known")
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    consts: dict[str, np.ndarray] = {}
    provenance: dict[str, frozenset[str]] = {}
    for init in g.initializer:
        consts[init.name] = numpy_helper.to_array(init)
        provenance[init.name] = frozenset([init.name])
    graph_inputs = [i.name for i in g.input if i.name not in consts]
    known = {vi.name: _dims(vi) for vi in [*g.value_info, *g.input]}
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input]}
    remaining: list[Any] = []
    unfolded: dict[str, str] = {}
    budget = fold_budget(consts)
    sequences: dict[str, list[np.ndarray]] = {}  # folded sequences (torch splits packed weights with them)
    consumers: dict[str, list[Any]] = {}
    producers = {out: n for n in g.node for out in n.output}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for node in g.node:
        if node.op_type == "SequenceAt" and node.input[0] in sequences and node.input[1] in consts:
            consts[node.output[0]] = sequences[node.input[0]][int(consts[node.input[1]])]
            provenance[node.output[0]] = provenance[node.input[0]]
            continue
        if node.op_type == "Shape" and node.input[0] not in consts:
            value = _static_shape(node, known.get(node.input[0]))
            if value is not None:  # the dims asked for are static although the batch is not
                consts[node.output[0]] = value
                provenance[node.output[0]] = frozenset()
                continue
        if node.op_type == "CastLike" and node.input[0] in consts and node.input[1] not in consts \
                and elem.get(node.input[1]):
            # only the second input's type matters, and shape inference knows it
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem[node.input[1]])
            consts[node.output[0]] = consts[node.input[0]].astype(dtype)
            provenance[node.output[0]] = provenance[node.input[0]]
            continue
        if node.op_type == "Constant":
            value = _constant_value(node)
            if value is not None:
                consts[node.output[0]] = value
                provenance[node.output[0]] = frozenset()
                continue
        ins = [i for i in node.input if i]
        if node.op_type not in _NOT_FOLDABLE and node.domain in ("", "ai.onnx") and ins and all(
            i in consts for i in ins
        ) and not _is_table_lookup(node, consts):
            size = folded_size(node, consts)
            values, why = (None, f"not folded: its output would take {size:,} bytes, over the folding budget of "
                                 f"{budget:,}") if size is not None and size > budget else \
                _evaluate(node, consts, onnx, opset)
            if values is not None and not all(_foldable_value(v, consumers.get(out, []), consts, producers)
                                              for out, v in zip(node.output, values, strict=False)):
                values, why = None, "its output is a sequence read other than by SequenceAt at a constant position"
            if values is None:
                unfolded[node.name or f"{node.op_type}({node.output[0]})"] = why
            else:
                origin = frozenset().union(*(provenance[i] for i in ins))
                for out, value in zip(node.output, values, strict=False):
                    if isinstance(value, list | tuple):
                        sequences[out] = [np.asarray(v) for v in value]
                    else:
                        consts[out] = np.asarray(value)
                    provenance[out] = origin
                continue
        remaining.append(node)
    shapes = {}
    for vi in [*g.value_info, *_infer_folded_shapes(model, remaining, consts, notes), *g.input, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    graph = Graph(model=model, nodes=remaining, consts=consts, provenance=provenance,
                  initializers=[i.name for i in g.initializer], shapes=shapes, inputs=graph_inputs,
                  outputs=[o.name for o in g.output], unfolded=unfolded, notes=notes)
    return graph.index()


def _dims(vi: Any) -> tuple[int | None, ...] | None:
    if not vi.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim)


def _static_shape(node: Any, dims: tuple[int | None, ...] | None) -> np.ndarray | None:
    """Fold Shape(x)[start:end] when those dims of x are known."""
    if dims is None:
        return None
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(dims)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else end)
    part = dims[max(0, start):min(rank, end)]
    if not part or any(d is None for d in part):
        return None
    return np.asarray(part, dtype=np.int64)


def _is_table_lookup(node: Any, consts: dict[str, np.ndarray]) -> bool:
    """Gather from a float table (an embedding looked up at constant positions) stays a
    node: folding it would keep only the rows used at export time, not the table."""
    if node.op_type != "Gather":
        return False
    table = consts[node.input[0]]
    return bool(np.issubdtype(table.dtype, np.floating) and table.ndim == 2 and table.shape[0] > 1)


def _infer_folded_shapes(model: Any, nodes: list[Any], consts: dict[str, np.ndarray], notes: list[str]) -> list[Any]:
    """Shape inference again on the folded graph: shapes computed at run time (pads, reshape
    targets) are constants now, so more of the graph gets static shapes."""
    from onnx import checker, helper, numpy_helper, shape_inference

    used = {i for n in nodes for i in n.input if i in consts}
    g = model.graph
    nodes = [p for n in nodes for p in _shape_proxy(n)]
    graph = helper.make_graph(nodes, g.name, list(g.input), list(g.output),
                              [numpy_helper.from_array(np.asarray(consts[n]), n) for n in sorted(used)])
    folded = helper.make_model(graph, opset_imports=list(model.opset_import))
    try:
        return list(shape_inference.infer_shapes(folded, data_prop=True).graph.value_info)
    except (shape_inference.InferenceError, checker.ValidationError) as exc:
        notes.append(f"shape inference on the folded graph failed ({type(exc).__name__}: {exc})")
        return []


# ONNX Runtime's contrib ops (com.microsoft) that its offline optimiser writes, which ONNX's shape
# inference does not know: a standard op with the same output shape stands in for shape inference.
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_PROXIES: dict[str, tuple[str, int, tuple[str, ...]]] = {  # op -> (standard op, inputs kept, attributes kept)
    "FusedConv": ("Conv", 3, _CONV_ATTRS),
    "FusedGemm": ("Gemm", 3, ("alpha", "beta", "transA", "transB")),
    "SkipLayerNormalization": ("Add", 2, ()),
    "BiasGelu": ("Add", 2, ()),
    "FastGelu": ("Identity", 1, ()),
    "Gelu": ("Identity", 1, ()),
    "QuickGelu": ("Identity", 1, ()),
}


def _shape_proxy(node: Any) -> list[Any]:
    """``node``, or for a contrib op in ``_PROXIES`` a standard node with the same first output shape."""
    from onnx import helper

    proxy = _PROXIES.get(node.op_type) if node.domain == "com.microsoft" else None
    if node.op_type == "FusedMatMul" and node.domain == "com.microsoft" and not any(
            a.i for a in node.attribute if a.name.startswith("trans")):
        proxy = ("MatMul", 2, ())
    if proxy is None:
        return [node]
    op, n_in, keep = proxy
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in keep}
    return [helper.make_node(op, list(node.input[:n_in]), [node.output[0]], name=node.name, **attrs)]


def _with_shape_proxies(model: Any) -> Any:
    """``model`` itself, or a copy whose contrib nodes are replaced by their shape proxies."""
    if not any(n.domain == "com.microsoft" and (n.op_type in _PROXIES or n.op_type == "FusedMatMul")
               for n in model.graph.node):
        return model
    twin = _copy_model(model)
    nodes = [p for n in model.graph.node for p in _shape_proxy(n)]
    del twin.graph.node[:]
    twin.graph.node.extend(nodes)
    return twin


def _copy_model(model: Any) -> Any:
    copy = type(model)()
    copy.CopyFrom(model)
    return copy


def _constant_value(node: Any) -> np.ndarray | None:
    from onnx import helper, numpy_helper

    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(helper.get_attribute_value(attr),
                              dtype=np.float32 if "float" in attr.name else np.int64)
    return None


def _foldable_value(value: Any, readers: list[Any], consts: dict[str, np.ndarray], producers: dict[str, Any]) -> bool:
    """A tensor always folds; a sequence only when every reader is a SequenceAt at a constant position,
    so that no node left in the graph reads a sequence that is no longer produced."""
    if not isinstance(value, list | tuple):
        return True
    return bool(readers) and all(
        r.op_type == "SequenceAt" and (r.input[1] in consts or getattr(producers.get(r.input[1]), "op_type", "")
                                      == "Constant") for r in readers)


def _evaluate(node: Any, consts: dict[str, np.ndarray], onnx: Any, opset: int) -> tuple[list[np.ndarray] | None, str]:
    """The node's outputs from ONNX's reference evaluator, or None and why it cannot run the node."""
    from onnx.reference import ReferenceEvaluator

    inputs = [i for i in node.input if i]
    clone = onnx.helper.make_node(node.op_type, list(node.input), list(node.output), domain=node.domain)
    clone.attribute.extend(node.attribute)
    model = _single_node_model(clone, inputs, consts, onnx, opset)
    feeds = {i: consts[i] for i in inputs}
    try:
        values = list(ReferenceEvaluator(model).run(None, feeds))
    except _REFERENCE_ERRORS as exc:  # the node stays in the graph; ONNX Runtime computes it
        return None, f"the reference evaluator cannot run it ({type(exc).__name__}: {exc})"
    return values, ""


def _single_node_model(node: Any, inputs: Iterable[str], consts: dict[str, np.ndarray], onnx: Any, opset: int) -> Any:
    from onnx import helper

    vis = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(consts[i].dtype), consts[i].shape)
           for i in inputs]
    outs = [helper.make_value_info(o, onnx.TypeProto()) for o in node.output]
    graph = helper.make_graph([node], "fold", vis, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
