"""Self-attention from a torch source: the porter's attention group (``converters.rules.attention``:
the q, k, v and output projections) with everything between them, as one Keras
``MultiHeadAttention`` called with the source's padding mask.

The porter's group holds the four projections only; the heads' reshapes, the scores
``q k^T / sqrt(d)``, the mask added to them, the Softmax and ``probs @ v`` sit between them as
plain nodes. They are not transcribed: the subgraph from the projections' outputs to the output
projection's input is *run* (ONNX's reference evaluator, seeded inputs) and compared with
scaled dot-product attention over ``heads`` heads (``attention_core``). Only when it computes
exactly that is the layer generated; anything else (another scale, a bias added to the scores,
a causal mask) is refused with the reason. A mask the subgraph reads from a graph input is
checked the same way: padded keys (input 0) must get no weight, valid ones (input 1) must
all count, which is what Keras's boolean ``attention_mask`` (True: attend) does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters.errors import UnsupportedLayerError
from converters.graph import Graph
from converters.params import ParamGroup
from converters.rules.base import node_name

_ATOL = 1e-4  # float32 subgraph vs float64 reference on N(0, 1) inputs: measured ~1e-6; a wrong head count or scale is O(0.1)
_BATCH = 2
_SEED = 0


@dataclass(frozen=True)
class Core:
    """What the nodes between an attention group's projections compute."""

    heads: int
    key_dim: int
    mask: str  # the graph input holding the padding mask (1: a token, 0: padding), '' for none
    name: str  # the layer's name in the twin


def _module(sources: frozenset[str]) -> str:
    """The torch module owning a projection's parameters (``...self.query.weight`` -> ``...self.query``)."""
    paths = sorted({s.rsplit(".", 1)[0] for s in sources if "." in s and not s.startswith(("onnx::", "val_"))})
    return paths[0] if paths else ""


def _common(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths if p]
    common: list[str] = []
    for items in zip(*parts, strict=False):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return ".".join(common)


def layer_name(g: ParamGroup) -> str:
    """The twin's name of the attention layer, from the source's module names: the module holding all
    four projections when it computes nothing else (torchvision's ``self_attention``); else, where the
    output projection sits outside the q/k/v module (Hugging Face's ``attention.self`` and
    ``attention.output.dense``), ``<common module>.multi_head_attention``, a name no torch module has,
    so that layer-by-layer diagnostics pair it through the port's mapping with the output projection."""
    members = g.attrs.get("members", [])
    if not members:
        return "multi_head_attention"
    qkv = _common([_module(m.sources) for m in members[:-1]]) or _module(members[0].sources)
    out = _module(members[-1].sources)
    if qkv and out.startswith(qkv + "."):
        return qkv
    common = _common([qkv, out])
    return f"{common}.multi_head_attention" if common else "multi_head_attention"


def _inputs_of(g: ParamGroup) -> tuple[list[str], str]:
    """The projections' output tensors (q, k, v; or the packed one) and the output projection's input."""
    members = g.attrs["members"]
    if len(members) == 2:  # one packed (E, 3E) in-projection
        return [members[0].output], members[1].input
    if len(members) != 4:
        raise UnsupportedLayerError(f"attention layer {'+'.join(g.nodes)}: a packed key/value projection apart from "
                                    "the query is not generated yet")
    return [m.output for m in members[:3]], members[3].input


def _subgraph(graph: Graph, stops: set[str], out: str, layers: set[str]) -> list[Any]:
    """The nodes computing ``out`` from ``stops``, graph inputs and constants, in graph order."""
    found: dict[str, Any] = {}
    stack = [out]
    while stack:
        t = stack.pop()
        if t in stops or graph.const(t) is not None or t in graph.inputs or not t:
            continue
        n = graph.producer(t)
        if n is None:
            continue
        if node_name(n) in layers:
            raise UnsupportedLayerError(f"attention layer: the nodes between its projections read the parametric "
                                        f"layer of ONNX node {node_name(n)!r}; only scaled dot-product attention is "
                                        "generated")
        if node_name(n) in found:
            continue
        found[node_name(n)] = n
        stack += list(n.input)
    order = {node_name(n): k for k, n in enumerate(graph.nodes)}
    return sorted(found.values(), key=lambda n: order[node_name(n)])


def _run(graph: Graph, nodes: list[Any], feeds: dict[str, np.ndarray], out: str) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    used = {i for n in nodes for i in n.input if i}
    inits = [numpy_helper.from_array(np.asarray(graph.consts[c]), c) for c in sorted(used) if c in graph.consts]
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()
           if k in used]
    outs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]
    model = helper.make_model(helper.make_graph(nodes, "attention_core", ins, outs, inits),
                              opset_imports=list(graph.model.opset_import))
    session = ReferenceEvaluator(model)
    return np.asarray(session.run(None, {k: v for k, v in feeds.items() if k in used})[0])


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, keep: np.ndarray | None) -> np.ndarray:
    """softmax(q k^T / sqrt(d)) v per head, in float64; ``keep`` (B, L): the keys that count."""
    b, length, e = q.shape
    d = e // heads

    def split(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float64).reshape(b, -1, heads, d).transpose(0, 2, 1, 3)

    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(d)
    if keep is not None:
        scores = np.where(keep[:, None, None, :] != 0, scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return (probs @ split(v)).transpose(0, 2, 1, 3).reshape(b, length, e)


def _feeds(graph: Graph, nodes: list[Any], length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded values for the graph inputs the subgraph reads (for their shapes, or as a mask)."""
    from onnx import helper

    used = {i for n in nodes for i in n.input}
    feeds = {}
    for vi in graph.model.graph.input:
        if vi.name not in used:
            continue
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shape = [_BATCH, *[(d or length) for d in dims[1:]]]
        feeds[vi.name] = (rng.integers(0, 2, shape) if dtype.kind in "iub" else rng.standard_normal(shape)).astype(dtype)
    return feeds


def attention_core(graph: Graph, g: ParamGroup, layers: set[str]) -> Core:
    """Heads, key_dim and padding mask of the attention group ``g``, proven by running its core."""
    stops, out = _inputs_of(g)
    if len(graph.shapes.get(out) or ()) != 3:
        raise UnsupportedLayerError(
            f"attention layer {layer_name(g)!r} (ONNX {'+'.join(g.nodes)}): its output projection reads a "
            f"rank-{len(graph.shapes.get(out) or ())} tensor (torch's nn.MultiheadAttention flattens the sequence "
            "and the batch into one axis first); only attention whose projections are applied to (batch, length, "
            "embed) sequences is generated: write q, k, v and the output projection as nn.Linear layers, as Hugging "
            "Face's BERT does")
    nodes = _subgraph(graph, set(stops), out, layers)
    embed = int(g.tensors["q_kernel"].shape[1])  # type: ignore[union-attr]
    length = int((graph.shapes.get(stops[0]) or (None, None))[1] or 5)
    rng = np.random.default_rng(_SEED)
    qkv = [rng.standard_normal((_BATCH, length, embed)).astype(np.float32) for _ in range(3)]
    feeds = _feeds(graph, nodes, length, rng)
    feeds.update(dict(zip(stops, [np.concatenate(qkv, axis=-1)] if len(stops) == 1 else qkv, strict=True)))
    masks = [name for name, value in feeds.items() if name in graph.inputs and value.ndim == 2
             and value.dtype.kind in "iub" and value.shape[1] == length]
    for name in masks:  # a padding pattern of its own per input: some keys of each row padding, never all
        keep = rng.integers(0, 2, (_BATCH, length))
        keep[:, 0] = 1
        feeds[name] = keep.astype(feeds[name].dtype)
    try:
        got = _run(graph, nodes, feeds, out)
    except Exception as exc:  # noqa: BLE001  (e.g. an op the reference evaluator lacks: refuse, naming it)
        raise UnsupportedLayerError(
            f"attention layer {layer_name(g)!r} (ONNX {'+'.join(g.nodes)}): the nodes between its projections could "
            f"not be run on (batch, length, embed) inputs to check what they compute ({type(exc).__name__}: "
            f"{str(exc)[:200]})") from exc
    tried = []
    for heads in _head_counts(graph, nodes, embed):
        for mask in [*masks, ""]:
            want = _reference(*qkv, heads, feeds[mask] if mask else None)
            if got.shape == want.shape and np.allclose(got, want, atol=_ATOL, rtol=_ATOL):
                return Core(heads, embed // heads, mask, layer_name(g))
            tried.append(f"{heads} heads{', mask ' + mask if mask else ''}")
    raise UnsupportedLayerError(
        f"attention layer {layer_name(g)!r} (ONNX {'+'.join(g.nodes)}): the nodes between its projections do not "
        f"compute softmax(q k^T / sqrt(d) [+ padding mask]) v (tried {'; '.join(tried)}); other scores (a bias "
        "added to them, another scale, a causal mask) have no Keras MultiHeadAttention twin yet")


def _head_counts(graph: Graph, nodes: list[Any], embed: int) -> list[int]:
    """Head counts to try: the ones the heads' reshapes name first, then every divisor of ``embed``."""
    named = []
    for n in nodes:
        shape = graph.shapes.get(n.output[0]) or ()
        if n.op_type == "Reshape" and len(shape) == 4 and shape[2] and shape[3] and shape[2] * shape[3] == embed:
            named.append(int(shape[2]))
    divisors = [h for h in range(1, embed + 1) if embed % h == 0]
    return list(dict.fromkeys([*named, *divisors]))
