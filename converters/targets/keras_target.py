"""Keras 3 targets: one describer per layer type, each with its layout transform."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from converters import layouts
from converters.errors import UnsupportedLayerError, WeightMappingError
from converters.targets import TargetLayer

Tensors = dict[str, np.ndarray | None]


def _set(var: Any, value: np.ndarray) -> None:
    value = np.ascontiguousarray(value, dtype=np.float32)
    shape = tuple(int(d) for d in var.shape)
    if value.size != int(np.prod(shape)):
        raise WeightMappingError(f"cannot write an array of shape {value.shape} into {var.path} of shape {shape}")
    var.assign(value.reshape(shape))


def _set_bias(layer: Any, value: np.ndarray | None, attr: str = "bias") -> None:
    var = getattr(layer, attr, None)
    if getattr(layer, "use_bias", True) and var is not None:
        _set(var, value if value is not None else np.zeros(tuple(var.shape), np.float32))


def _shape(var: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in var.shape)


def _dense(layer: Any) -> TargetLayer:
    n_in, n_out = _shape(layer.kernel)

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        kernel, how = t["kernel"], "copy"
        flat = attrs.get("flatten")
        if flat is not None and flat[0] != "HWC":
            kernel = layouts.reorder_flatten_rows(kernel, flat[0], flat[1], "HWC")  # type: ignore[arg-type]
            how = f"rows {flat[0]}->HWC"
        bias = t["bias"]
        grid = attrs.get("unflatten")
        if grid is not None and grid[0] != "HWC":
            kernel, bias = layouts.reorder_unflatten_columns(kernel, bias, grid[0], grid[1], "HWC")  # type: ignore[arg-type]
            how += f", columns {grid[0]}->HWC"
        _set(layer.kernel, kernel)  # type: ignore[arg-type]
        _set_bias(layer, bias)
        return how

    return TargetLayer(layer.name, "dense", "tf", layer, {"kernel": (n_in, n_out),
                       "bias": (n_out,) if layer.use_bias else None}, {"use_bias": layer.use_bias}, write)


def _conv(layer: Any) -> TargetLayer:
    canonical = layouts.conv_from_keras(np.empty(_shape(layer.kernel), np.float32)).shape

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(layer.kernel, layouts.conv_to_keras(t["weight"]))  # type: ignore[arg-type]
        _set_bias(layer, t["bias"])
        return f"weight.transpose{(*range(2, len(canonical)), 1, 0)}"

    return TargetLayer(layer.name, "conv", "tf", layer, {"weight": canonical,
                       "bias": (canonical[0],) if layer.use_bias else None},
                       {"use_bias": layer.use_bias, "groups": getattr(layer, "groups", 1),
                        "stride": tuple(layer.strides), "dilation": tuple(layer.dilation_rate),
                        "padding": layer.padding, "padding_mode": "zeros"}, write)


def _depthwise(layer: Any) -> TargetLayer:
    kh, kw, c, m = _shape(layer.kernel)

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(layer.kernel, layouts.depthwise_to_keras(t["weight"], c))  # type: ignore[arg-type]
        _set_bias(layer, t["bias"])
        return "weight.reshape(C, m, kh, kw).transpose(2, 3, 0, 1)"

    return TargetLayer(layer.name, "conv", "tf", layer, {"weight": (c * m, 1, kh, kw),
                       "bias": (c * m,) if layer.use_bias else None},
                       {"use_bias": layer.use_bias, "groups": c, "stride": tuple(layer.strides),
                        "padding": layer.padding}, write)


def _conv_transpose(layer: Any) -> TargetLayer:
    canonical = layouts.conv_transpose_from_keras(np.empty(_shape(layer.kernel), np.float32)).shape

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(layer.kernel, layouts.conv_transpose_to_keras(t["weight"]))  # type: ignore[arg-type]
        _set_bias(layer, t["bias"])
        return f"weight.transpose{(*range(2, len(canonical)), 1, 0)}"

    return TargetLayer(layer.name, "convtranspose", "tf", layer, {"weight": canonical,
                       "bias": (canonical[1],) if layer.use_bias else None},
                       {"use_bias": layer.use_bias, "stride": tuple(layer.strides), "padding": layer.padding}, write)


def _batchnorm(layer: Any) -> TargetLayer:
    if not (layer.center and layer.scale):
        raise UnsupportedLayerError(f"Keras layer {layer.name!r}: BatchNormalization needs center=True and scale=True")
    c = _shape(layer.gamma)[0]

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        for var, key in ((layer.gamma, "gamma"), (layer.beta, "beta"), (layer.moving_mean, "mean"),
                         (layer.moving_variance, "var")):
            _set(var, t[key])  # type: ignore[arg-type]
        return "copy"

    return TargetLayer(layer.name, "batchnorm", "tf", layer, {"gamma": (c,), "beta": (c,), "mean": (c,), "var": (c,)},
                       {"epsilon": layer.epsilon, "momentum": layer.momentum}, write)


def _norm_affine(kind: str, layer: Any, hyper: dict[str, Any]) -> TargetLayer:
    if getattr(layer, "gamma", None) is None:
        raise UnsupportedLayerError(f"Keras layer {layer.name!r}: {type(layer).__name__} without scale has nothing "
                                    "to port; use scale=True and center=True")
    c = int(np.prod(_shape(layer.gamma)))

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(layer.gamma, t["gamma"])  # type: ignore[arg-type]
        if getattr(layer, "beta", None) is not None:
            _set(layer.beta, t["beta"])  # type: ignore[arg-type]
        return "copy"

    return TargetLayer(layer.name, kind, "tf", layer, {"gamma": (c,), "beta": (c,)}, hyper, write)


def _embedding(layer: Any) -> TargetLayer:
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(layer.embeddings, t["table"])  # type: ignore[arg-type]
        return "copy"

    return TargetLayer(layer.name, "embedding", "tf", layer, {"table": _shape(layer.embeddings)}, {}, write)


def _rnn(layer: Any) -> TargetLayer:
    bidirectional = isinstance(layer, keras.layers.Bidirectional)
    cells = [layer.forward_layer, layer.backward_layer] if bidirectional else [layer]
    if getattr(cells[0], "go_backwards", False):
        raise UnsupportedLayerError(f"Keras layer {layer.name!r}: go_backwards outside Bidirectional is not supported")
    kind = "lstm" if isinstance(cells[0], keras.layers.LSTM) else "gru"
    gates = 4 if kind == "lstm" else 3
    order = layouts.LSTM_ONNX_TO_KERAS if kind == "lstm" else layouts.GRU_ONNX_TO_KERAS
    cell = cells[0].cell
    in_size, gh = _shape(cell.kernel)
    h = gh // gates
    reset_after = bool(getattr(cell, "reset_after", True))
    if bidirectional and layer.merge_mode != "concat":
        raise UnsupportedLayerError(f"Keras layer {layer.name!r}: Bidirectional merge_mode={layer.merge_mode!r}; "
                                    "only 'concat' matches the ONNX layout")

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        if kind == "gru" and int(attrs.get("linear_before_reset", 1)) != int(reset_after):
            raise WeightMappingError(
                f"{layer.name}: the source GRU has linear_before_reset={attrs.get('linear_before_reset')} but this "
                f"Keras GRU has reset_after={reset_after}; build it with reset_after=True for PyTorch semantics")
        for d, sub in enumerate(cells):
            c = sub.cell
            w, r, b = t["W"][d], t["R"][d], t["B"][d]  # type: ignore[index]
            _set(c.kernel, layouts.reorder_gates(w, order).T)
            _set(c.recurrent_kernel, layouts.reorder_gates(r, order).T)
            if c.use_bias:
                wb, rb = b[: gates * h], b[gates * h:]
                if kind == "gru" and reset_after:
                    _set(c.bias, np.stack([layouts.reorder_gates(wb, order), layouts.reorder_gates(rb, order)]))
                else:
                    _set(c.bias, layouts.reorder_gates(wb + rb, order))
        return "gates iofc->ifco, transpose, bias = Wb + Rb" if kind == "lstm" else "transpose, bias = [Wb; Rb]"

    return TargetLayer(layer.name, kind, "tf", layer,
                       {"W": (len(cells), gates * h, in_size), "R": (len(cells), gates * h, h),
                        "B": (len(cells), 2 * gates * h)},
                       {"bidirectional": bidirectional, "reset_after": reset_after, "use_bias": cell.use_bias}, write)


def _attention(layer: Any) -> TargetLayer:
    parts = {"q": layer.query_dense, "k": layer.key_dense, "v": layer.value_dense}
    e_q = _shape(parts["q"].kernel)[0]
    shapes: dict[str, tuple[int, ...] | None] = {}
    for name, dense in parts.items():
        kshape = _shape(dense.kernel)  # (E_in, heads, head_dim)
        shapes[f"{name}_kernel"] = (kshape[0], int(np.prod(kshape[1:])))
        shapes[f"{name}_bias"] = (int(np.prod(kshape[1:])),) if dense.bias is not None else None
    out_shape = _shape(layer.output_dense.kernel)  # (heads, head_dim, E)
    shapes["out_kernel"] = (int(np.prod(out_shape[:-1])), out_shape[-1])
    shapes["out_bias"] = (out_shape[-1],) if layer.output_dense.bias is not None else None

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        for name, dense in parts.items():
            _set(dense.kernel, t[f"{name}_kernel"])  # type: ignore[arg-type]  # (E, heads*hd) -> (E, heads, hd)
            if dense.bias is not None:
                _set(dense.bias, t[f"{name}_bias"])  # type: ignore[arg-type]
        _set(layer.output_dense.kernel, t["out_kernel"])  # type: ignore[arg-type]
        if layer.output_dense.bias is not None:
            _set(layer.output_dense.bias, t["out_bias"])  # type: ignore[arg-type]
        return "kernels reshaped (E, heads, head_dim); output (heads, head_dim, E)"

    return TargetLayer(layer.name, "attention", "tf", layer, shapes,
                       {"heads": layer.num_heads, "key_dim": layer.key_dim, "embed": e_q}, write)


def _describe(layer: Any) -> TargetLayer | None:
    L = keras.layers
    t = type(layer)
    if t is L.MultiHeadAttention:
        return _attention(layer)
    if t is L.Dense:
        return _dense(layer)
    if t is L.DepthwiseConv2D:
        return _depthwise(layer)
    if t in (L.Conv1D, L.Conv2D):
        return _conv(layer)
    if t in (L.Conv1DTranspose, L.Conv2DTranspose):
        return _conv_transpose(layer)
    if t is L.BatchNormalization:
        return _batchnorm(layer)
    if t is L.LayerNormalization:
        if layer.rms_scaling:
            raise UnsupportedLayerError(f"Keras layer {layer.name!r}: RMS-scaled LayerNormalization is not supported")
        return _norm_affine("layernorm", layer, {"epsilon": layer.epsilon})
    if t is L.GroupNormalization:
        return _norm_affine("groupnorm", layer, {"epsilon": layer.epsilon, "groups": layer.groups})
    if t is L.Embedding:
        return _embedding(layer)
    if t in (L.LSTM, L.GRU) or (t is L.Bidirectional and type(layer.forward_layer) in (L.LSTM, L.GRU)):
        return _rnn(layer)
    return None


SUPPORTED = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "Conv1DTranspose", "Conv2DTranspose",
             "BatchNormalization", "LayerNormalization", "GroupNormalization", "Embedding", "LSTM", "GRU",
             "Bidirectional(LSTM|GRU)", "MultiHeadAttention")


def _flatten(layers: list[Any]) -> list[Any]:
    out = []
    for layer in layers:
        if isinstance(layer, keras.Model):
            out.extend(_flatten(layer.layers))
        else:
            out.append(layer)
    return out


def keras_layers(model: Any) -> list[TargetLayer]:
    """Parametric layers in forward (topological) order."""
    layers = []
    for layer in _flatten(model.layers):
        described = _describe(layer)
        if described is not None:
            layers.append(described)
        else:
            layers.extend(_raw(layer, w) for w in layer.trainable_weights)
    return layers


def _raw(layer: Any, var: Any) -> TargetLayer:
    """A weight of a layer no rule knows (class token, position table): copied as is,
    so the source must hold a tensor of exactly this shape at this point of the graph."""
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(var, t["value"])  # type: ignore[arg-type]
        return "copy (raw tensor)"

    return TargetLayer(f"{layer.name}.{var.name}", "tensor", "tf", var, {"value": _shape(var)}, {}, write)
