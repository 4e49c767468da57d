"""Lower a folded ONNX graph to the ``Program`` of its twin: walk it (``converters.codegen.lower``),
refuse what no handler generates (every such node listed at once), then run each step's handler."""

from __future__ import annotations

from typing import Any

import numpy as np

import converters.codegen.layer_handlers  # noqa: F401  (registers the layers' handlers)
import converters.codegen.rnn_handlers  # noqa: F401
from converters.codegen import layout as lay
from converters.codegen.attention_keras import torch_patterns
from converters.codegen.handlers import GROUP_HANDLERS, NODE_HANDLERS, group_handler
from converters.codegen.keras_patterns import keras_patterns
from converters.codegen.lower import Lowering, tensordot_input, walk
from converters.codegen.masked_rnn import loop_mask, stack_layers
from converters.codegen.program import Input, Program
from converters.codegen.rnn_handlers import keras_embedding_ids, loop_sequence, sequence_lens_input
from converters.codegen.unit_axis import squeeze_unit_axes
from converters.errors import UnsupportedLayerError
from converters.graph import Graph
from converters.params import ParamGroup, param_groups
from converters.rules.base import node_name


def lower_graph(graph: Graph, *, target: str, source: str, model: str,
          spatial_inputs: set[str] | None = None, hints: dict[str, dict[str, Any]] | None = None) -> Program:
    """The program of the twin of ``graph`` in ``target`` ('tf': Keras 3, 'torch').

    ``source``: which exporter wrote the graph ('torch' or 'tf'; its graph inputs are
    channels-first or channels-last). ``spatial_inputs``: the inputs that are images or
    signals (default: every float input of rank 4). ``hints``: per source layer name, what the
    graph does not keep (``{"bn1": {"epsilon": 1e-5, "momentum": 0.9}}`` for a BatchNorm that
    tf2onnx folded into its convolution).
    """
    if target not in ("tf", "torch"):
        raise ValueError(f"unknown target framework {target!r}; expected 'tf' or 'torch'")
    graph = squeeze_unit_axes(graph)  # Keras's 1-D layers: tf2onnx's 2-D ops on a size-1 axis
    groups = param_groups(graph)
    for g in groups:
        lens = sequence_lens_input(graph, g)
        if lens:
            g.attrs["extra_inputs"] = (lens,)
        if g.attrs.get("from_loop"):
            g.attrs["sequence_input"] = loop_sequence(graph, g)
            g.attrs["extra_inputs"] = tuple(t for t in [loop_mask(graph, g)] if t)  # a Keras mask
        if source == "tf" and tensordot_input(graph, g):
            g.input = tensordot_input(graph, g)
        if source == "tf" and keras_embedding_ids(graph, g):
            g.input = keras_embedding_ids(graph, g)
    if source == "tf":
        groups = keras_patterns(graph, groups, target, hints or {})
    if source == "torch" and target == "tf":
        groups = torch_patterns(graph, groups)  # a class token's Concat, GELU, x[:, i]
    steps = walk(graph, groups)
    unsupported = [f"{node_name(s)} ({s.op_type})" for s in steps
                   if not isinstance(s, ParamGroup) and s.op_type not in NODE_HANDLERS]
    unsupported += [f"{'+'.join(s.nodes)} ({s.kind} layer)" for s in steps
                    if isinstance(s, ParamGroup) and group_handler(s.kind, target) is None]
    if unsupported:
        raise UnsupportedLayerError(
            f"cannot generate a {'Keras' if target == 'tf' else 'PyTorch'} twin: {len(unsupported)} ONNX node(s) "
            f"have no generator: {'; '.join(unsupported)}. Supported ops: {', '.join(sorted(NODE_HANDLERS))}; "
            f"layers: {', '.join(sorted(GROUP_HANDLERS))}")
    low = Lowering(graph, target, source)
    low.groups = groups
    low.hints = dict(hints or {})
    low.reserved = {low.layer_name(g) for g in groups} | {low.folded_batchnorm(g) for g in groups}
    low.reserved |= {name for g in groups for name in g.attrs.get("layer_names", ())}  # a group of several layers
    inputs = [_input(low, name, spatial_inputs) for name in graph.inputs]
    perms = {name: low.perm(name) for name in graph.inputs}
    for step in steps:
        if isinstance(step, ParamGroup):
            group_handler(step.kind, target)(low, step)  # type: ignore[misc]  (refused above if None)
        elif node_name(step) not in low.done:
            NODE_HANDLERS[step.op_type](low, step)
    if target == "torch":
        stack_layers(low)  # Keras's lstm.l0, lstm.l1 ... as one nn.LSTM(num_layers=n), as torch stacks them
    outputs = []
    for name in graph.outputs:
        rank = len(low.shape(name) or ())
        # a feature map leaves in the twin's own layout, as the source's leaves in its own; the rest as is
        spatial = rank > 2 and low.perm(name) != lay.identity(rank)
        want = lay.identity(rank)
        if spatial:
            want = lay.channels_last(rank) if low.source == "torch" else lay.channels_first(rank)
        outputs.append((low.get(name, want, "output"), name))
    return Program(model, source, inputs, low.ops, outputs, low.channels_last,
                   [(i.name, perms[i.name]) for i in inputs], {var: low.perm(name) for var, name in outputs})


def _input(low: Lowering, name: str, spatial_inputs: set[str] | None) -> Input:
    vi = next(v for v in low.graph.model.graph.input if v.name == name)
    from onnx import helper

    dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)))
    shape = low.shape(name) or ()
    rank = len(shape)
    spatial = name in spatial_inputs if spatial_inputs is not None else (rank == 4 and dtype.startswith("float"))
    p = lay.identity(rank)
    if spatial and rank > 2:
        if low.source == "torch" and low.channels_last:
            p = lay.channels_last(rank)
        elif low.source == "tf" and not low.channels_last:
            p = lay.channels_first(rank)
    var = low.new_var()
    low.vars[name] = (var, p)
    v_shape = [None] * rank
    for i, d in enumerate(shape):
        v_shape[p[i]] = d
    return Input(name, var, tuple(v_shape[1:]), dtype)
