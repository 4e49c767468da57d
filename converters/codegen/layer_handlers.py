"""Parametric layers: one handler per parameter-group kind (``converters.params``), each placing
the layer in the target's layout and resolving its padding."""

from __future__ import annotations

from typing import Any

from converters.codegen import layout as lay
from converters.codegen.handlers import group, padding_for, prepad, spatial_pads
from converters.codegen.lower import Lowering, group_input
from converters.params import ParamGroup
from converters.rules.base import attrs_of, node_name


# -- parametric layers ---------------------------------------------------------------------
@group("dense")
def _dense(low: Lowering, g: ParamGroup) -> None:
    src = group_input(low.graph, g)
    var, p = low.vars[src]
    rank = len(p)
    if p[-1] != rank - 1:
        var = low.get(src, lay.identity(rank), low.layer_name(g))
        p = lay.identity(rank)
    low.vars[g.output] = (low.emit("layer", [var], {}, low.layer_name(g), g), p)


@group("conv", "batchnorm")
def _spatial(low: Lowering, g: ParamGroup) -> None:
    src = group_input(low.graph, g)
    rank = len(low.perm(src))
    native = low.native(rank)
    name = low.layer_name(g)
    out_rank = len(low.shape(g.output) or ()) or rank
    if out_rank != rank:
        from converters.errors import UnsupportedLayerError

        raise UnsupportedLayerError(
            f"cannot generate layer {name!r} (ONNX {'+'.join(g.nodes)}): a rank-{out_rank} layer computed as a "
            f"rank-{rank} {g.kind} between Unsqueeze and Squeeze (how tf2onnx writes a Keras Conv1D) has no "
            "generator yet; export a torch Conv1d, or convert to Keras from the torch side")
    var = low.get(src, native, name)
    attrs: dict[str, Any] = {"rank": rank}
    if g.kind == "batchnorm" and g.attrs.get("epsilon") is None:
        attrs.update(low.hints.get(name, {}))  # statistics folded into a scale: epsilon from the source
    if g.kind == "conv":
        w = g.tensors["weight"]
        kernel = tuple(int(k) for k in w.shape[2:])  # type: ignore[union-attr]
        spatial = len(kernel)
        strides = tuple(int(s) for s in g.attrs["strides"])
        dil = tuple(int(d) for d in g.attrs["dilations"])
        pads = spatial_pads(low, {**g.attrs, "pads": g.attrs["pads"] or (0,) * 2 * spatial}, src, kernel)
        padding = padding_for(low, src, kernel, strides, dil, pads)
        if padding is None:
            var, padding = prepad(low, var, rank, pads, 0.0, name), "valid"
        attrs["padding"] = padding
        folded = low.folded_batchnorm(g)
        if folded:
            attrs["use_bias"] = False
            conv = low.emit("layer", [var], attrs, name, g)
            bn = {"restored_batchnorm": True, "channels": int(w.shape[0]), **low.hints.get(folded, {})}  # type: ignore[union-attr]
            out = low.emit("layer", [conv], bn, folded, None)
            low.vars[g.output] = (out, native)
            return
    low.vars[g.output] = (low.emit("layer", [var], attrs, name, g), native)


@group("layernorm")
def _layernorm(low: Lowering, g: ParamGroup) -> None:
    src = group_input(low.graph, g)
    var, p = low.vars[src]
    if p[-1] != len(p) - 1:
        var, p = low.get(src, lay.identity(len(p)), low.layer_name(g)), lay.identity(len(p))
    low.vars[g.output] = (low.emit("layer", [var], {}, low.layer_name(g), g), p)


@group("embedding")
def _embedding(low: Lowering, g: ParamGroup) -> None:
    var = low.get(g.input, lay.identity(len(low.perm(g.input))), low.layer_name(g))
    low.vars[g.output] = (low.emit("layer", [var], {}, low.layer_name(g), g), lay.identity(len(low.perm(g.input)) + 1))


@group("convtranspose")
def _conv_transpose(low: Lowering, g: ParamGroup) -> None:
    """A transposed conv: the framework's layer unpadded (or TF's 'same'), then a crop of ONNX's pads."""
    src = group_input(low.graph, g)
    rank = len(low.perm(src))
    native = low.native(rank)
    name = low.layer_name(g)
    var = low.get(src, native, name)
    head = next(n for n in low.graph.nodes if node_name(n) == g.nodes[0])
    a = attrs_of(head)
    w = g.tensors["weight"]
    kernel = tuple(int(k) for k in w.shape[2:])  # type: ignore[union-attr]
    spatial = len(kernel)
    strides = tuple(int(s) for s in g.attrs["strides"])
    out_pad = tuple(int(v) for v in a.get("output_padding") or (0,) * spatial)
    if a.get("output_shape") or g.attrs["auto_pad"] not in ("NOTSET", "VALID") or int(g.attrs["group"]) != 1 \
            or any(int(d) != 1 for d in g.attrs["dilations"]):
        from converters.errors import UnsupportedLayerError

        raise UnsupportedLayerError(f"ConvTranspose node {g.nodes[0]!r}: output_shape, auto_pad, groups or dilations "
                                    "are not supported by the generator")
    raw = tuple(g.attrs["pads"] or (0,) * 2 * spatial)
    pads = [(int(raw[i]), int(raw[i + spatial])) for i in range(spatial)]
    tf_same = [((k - s) // 2, (k - s) - (k - s) // 2) for k, s in zip(kernel, strides, strict=True)]
    attrs: dict[str, Any] = {"rank": rank, "output_padding": out_pad, "padding": "valid"}
    crop = pads
    if low.channels_last and pads == tf_same and not any(out_pad):
        attrs["padding"], crop = "same", [(0, 0)] * spatial
    elif not low.channels_last and all(b == e for b, e in pads):
        attrs["padding"], crop = tuple(b for b, _ in pads), [(0, 0)] * spatial
    out = low.emit("layer", [var], attrs, name, g)
    if any(c != (0, 0) for c in crop):
        by_var = [(0, 0)] * rank
        for i, c in enumerate(crop):
            by_var[native[2 + i]] = c
        shape = low.shape(g.output) or ()
        sizes = [0] * rank
        for i, d in enumerate(shape):
            sizes[native[i]] = d or 0
        out = low.emit("crop", [out], {"crop": tuple(by_var), "sizes": tuple(sizes)}, f"{name}_crop")
    low.vars[g.output] = (out, native)
