"""Keras 3 targets: one registered describer per layer class, each with its layout transform and its inverse."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from converters import layouts
from converters.errors import UnsupportedLayerError, WeightMappingError
from converters.targets.base import REGISTRIES, Fetch, Reader, TargetLayer, Tensors

KERAS = REGISTRIES["tf"]
L = keras.layers


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


def _bias_of(layer: Any) -> dict[str, list[Any]]:
    return {"bias": [layer.bias]} if layer.use_bias and getattr(layer, "bias", None) is not None else {}


@KERAS.kind(L.Dense)
def _dense(name: str, layer: Any) -> list[TargetLayer]:
    n_in, n_out = _shape(layer.kernel)

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        kernel, bias, how = layouts.dense_to_native(t["kernel"], t["bias"], attrs, "HWC")  # type: ignore[arg-type]
        _set(layer.kernel, kernel)
        _set_bias(layer, bias)
        return ", ".join(how) or "copy"

    variables = {"kernel": [layer.kernel], **_bias_of(layer)}

    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        kernel, bias = layouts.dense_from_native(fetch(layer.kernel),
                                                 fetch(layer.bias) if "bias" in variables else None, attrs, "HWC")
        return {"kernel": kernel, **({"bias": bias} if bias is not None else {})}

    return [TargetLayer(name, "dense", "tf", layer, {"kernel": (n_in, n_out),
                        "bias": (n_out,) if layer.use_bias else None}, {"use_bias": layer.use_bias}, write, read,
                        variables)]


def _kernel_layer(name: str, layer: Any, kind: str, canonical: tuple[int, ...], bias: int, hyper: dict[str, Any],
                  to_keras: Any, from_keras: Any, how: str) -> list[TargetLayer]:
    """A layer with a kernel in a Keras layout (``to_keras`` / ``from_keras``) and an optional bias."""
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(layer.kernel, to_keras(t["weight"]))
        _set_bias(layer, t["bias"])
        return how

    variables = {"weight": [layer.kernel], **_bias_of(layer)}

    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = {"weight": from_keras(fetch(layer.kernel))}
        if "bias" in variables:
            out["bias"] = fetch(layer.bias)
        return out

    return [TargetLayer(name, kind, "tf", layer, {"weight": canonical, "bias": (bias,) if layer.use_bias else None},
                        {"use_bias": layer.use_bias, **hyper}, write, read, variables)]


@KERAS.kind(L.Conv1D, L.Conv2D)
def _conv(name: str, layer: Any) -> list[TargetLayer]:
    canonical = layouts.conv_from_keras(np.empty(_shape(layer.kernel), np.float32)).shape
    return _kernel_layer(name, layer, "conv", canonical, canonical[0],
                         {"groups": getattr(layer, "groups", 1), "stride": tuple(layer.strides),
                          "dilation": tuple(layer.dilation_rate), "padding": layer.padding, "padding_mode": "zeros"},
                         layouts.conv_to_keras, layouts.conv_from_keras,
                         f"weight.transpose{(*range(2, len(canonical)), 1, 0)}")


@KERAS.kind(L.DepthwiseConv2D)
def _depthwise(name: str, layer: Any) -> list[TargetLayer]:
    kh, kw, c, m = _shape(layer.kernel)
    return _kernel_layer(name, layer, "conv", (c * m, 1, kh, kw), c * m,
                         {"groups": c, "stride": tuple(layer.strides), "padding": layer.padding},
                         lambda w: layouts.depthwise_to_keras(w, c), layouts.depthwise_from_keras,
                         "weight.reshape(C, m, kh, kw).transpose(2, 3, 0, 1)")


@KERAS.kind(L.Conv1DTranspose, L.Conv2DTranspose)
def _conv_transpose(name: str, layer: Any) -> list[TargetLayer]:
    canonical = layouts.conv_from_keras(np.empty(_shape(layer.kernel), np.float32)).shape
    return _kernel_layer(name, layer, "convtranspose", canonical, canonical[1],
                         {"stride": tuple(layer.strides), "padding": layer.padding},
                         layouts.conv_to_keras, layouts.conv_from_keras,
                         f"weight.transpose{(*range(2, len(canonical)), 1, 0)}")


def _copy_read(variables: dict[str, list[Any]]) -> Reader:
    """A reader for roles stored as is, one variable each."""
    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {role: fetch(handles[0]) for role, handles in variables.items()}
    return read


def _flat_read(variables: dict[str, list[Any]]) -> Reader:
    """A reader for roles stored as is (flattened to 1-D: a norm's gamma may span several axes)."""
    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {role: fetch(handles[0]).reshape(-1) for role, handles in variables.items()}
    return read


@KERAS.kind(L.BatchNormalization)
def _batchnorm(name: str, layer: Any) -> list[TargetLayer]:
    if not (layer.center and layer.scale):
        raise UnsupportedLayerError(f"Keras layer {name!r}: BatchNormalization needs center=True and scale=True")
    c = _shape(layer.gamma)[0]

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        for var, key in ((layer.gamma, "gamma"), (layer.beta, "beta"), (layer.moving_mean, "mean"),
                         (layer.moving_variance, "var")):
            _set(var, t[key])  # type: ignore[arg-type]
        return "copy"

    variables = {"gamma": [layer.gamma], "beta": [layer.beta], "mean": [layer.moving_mean],
                 "var": [layer.moving_variance]}
    return [TargetLayer(name, "batchnorm", "tf", layer, {"gamma": (c,), "beta": (c,), "mean": (c,), "var": (c,)},
                        {"epsilon": layer.epsilon, "momentum": layer.momentum}, write, _flat_read(variables),
                        variables, frozenset({"mean", "var"}))]


def _norm_affine(kind: str, name: str, layer: Any, hyper: dict[str, Any]) -> list[TargetLayer]:
    if getattr(layer, "gamma", None) is None:
        raise UnsupportedLayerError(f"Keras layer {name!r}: {type(layer).__name__} without scale has nothing "
                                    "to port; use scale=True and center=True")
    c = int(np.prod(_shape(layer.gamma)))

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(layer.gamma, t["gamma"])  # type: ignore[arg-type]
        if getattr(layer, "beta", None) is not None:
            _set(layer.beta, t["beta"])  # type: ignore[arg-type]
        return "copy"

    variables = {"gamma": [layer.gamma], **({"beta": [layer.beta]} if getattr(layer, "beta", None) is not None else {})}
    return [TargetLayer(name, kind, "tf", layer, {"gamma": (c,), "beta": (c,)}, hyper, write, _flat_read(variables),
                        variables)]


@KERAS.kind(L.LayerNormalization)
def _layernorm(name: str, layer: Any) -> list[TargetLayer]:
    if layer.rms_scaling:
        raise UnsupportedLayerError(f"Keras layer {name!r}: RMS-scaled LayerNormalization is not supported")
    return _norm_affine("layernorm", name, layer, {"epsilon": layer.epsilon})


@KERAS.kind(L.GroupNormalization)
def _groupnorm(name: str, layer: Any) -> list[TargetLayer]:
    return _norm_affine("groupnorm", name, layer, {"epsilon": layer.epsilon, "groups": layer.groups})


@KERAS.kind(L.Embedding)
def _embedding(name: str, layer: Any) -> list[TargetLayer]:
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(layer.embeddings, t["table"])  # type: ignore[arg-type]
        return "copy"

    variables = {"table": [layer.embeddings]}
    return [TargetLayer(name, "embedding", "tf", layer, {"table": _shape(layer.embeddings)}, {}, write,
                        _copy_read(variables), variables)]


@KERAS.kind(L.Bidirectional)
def _bidirectional(name: str, layer: Any) -> list[TargetLayer] | None:
    if not isinstance(layer.forward_layer, (L.LSTM, L.GRU)):
        return None  # not a recurrent layer the table knows: its weights are raw tensors
    return _rnn(name, layer)


@KERAS.kind(L.LSTM, L.GRU)
def _rnn(name: str, layer: Any) -> list[TargetLayer]:
    bidirectional = isinstance(layer, L.Bidirectional)
    cells = [layer.forward_layer, layer.backward_layer] if bidirectional else [layer]
    if getattr(cells[0], "go_backwards", False):
        raise UnsupportedLayerError(f"Keras layer {name!r}: go_backwards outside Bidirectional is not supported")
    kind = "lstm" if isinstance(cells[0], L.LSTM) else "gru"
    gates = 4 if kind == "lstm" else 3
    order = layouts.LSTM_ONNX_TO_KERAS if kind == "lstm" else layouts.GRU_ONNX_TO_KERAS
    cell = cells[0].cell
    in_size, gh = _shape(cell.kernel)
    h = gh // gates
    reset_after = bool(getattr(cell, "reset_after", True))
    if bidirectional and layer.merge_mode != "concat":
        raise UnsupportedLayerError(f"Keras layer {name!r}: Bidirectional merge_mode={layer.merge_mode!r}; "
                                    "only 'concat' matches the ONNX layout")

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        if kind == "gru" and int(attrs.get("linear_before_reset", 1)) != int(reset_after):
            raise WeightMappingError(
                f"{name}: the source GRU has linear_before_reset={attrs.get('linear_before_reset')} but this "
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

    variables = {"W": [sub.cell.kernel for sub in cells], "R": [sub.cell.recurrent_kernel for sub in cells]}
    if cell.use_bias:
        variables["B"] = [sub.cell.bias for sub in cells]

    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = {role: np.stack([layouts.gates_to_onnx(fetch(v).T, order) for v in variables[role]]) for role in "WR"}
        if "B" in variables:
            biases = [fetch(v) for v in variables["B"]]
            if kind == "lstm" or biases[0].ndim == 1:  # LSTM: one bias per gate, the sum Wb + Rb
                out["B"] = np.stack([layouts.gates_to_onnx(b, order) for b in biases])
            else:  # GRU reset_after: rows [Wb; Rb]
                out["B"] = np.stack([np.concatenate([layouts.gates_to_onnx(b[0], order),
                                                     layouts.gates_to_onnx(b[1], order)]) for b in biases])
        return out

    return [TargetLayer(name, kind, "tf", layer,
                        {"W": (len(cells), gates * h, in_size), "R": (len(cells), gates * h, h),
                         "B": (len(cells), 2 * gates * h)},
                        {"bidirectional": bidirectional, "reset_after": reset_after, "use_bias": cell.use_bias}, write,
                        read, variables)]


@KERAS.kind(L.MultiHeadAttention)
def _attention(name: str, layer: Any) -> list[TargetLayer]:
    parts = {"q": layer.query_dense, "k": layer.key_dense, "v": layer.value_dense}
    e_q = _shape(parts["q"].kernel)[0]
    shapes: dict[str, tuple[int, ...] | None] = {}
    variables: dict[str, list[Any]] = {}
    for part, dense in parts.items():
        kshape = _shape(dense.kernel)  # (E_in, heads, head_dim)
        shapes[f"{part}_kernel"] = (kshape[0], int(np.prod(kshape[1:])))
        shapes[f"{part}_bias"] = (int(np.prod(kshape[1:])),) if dense.bias is not None else None
        variables[f"{part}_kernel"] = [dense.kernel]
        if dense.bias is not None:
            variables[f"{part}_bias"] = [dense.bias]
    out_dense = layer.output_dense
    out_shape = _shape(out_dense.kernel)  # (heads, head_dim, E)
    shapes["out_kernel"] = (int(np.prod(out_shape[:-1])), out_shape[-1])
    shapes["out_bias"] = (out_shape[-1],) if out_dense.bias is not None else None
    variables["out_kernel"] = [out_dense.kernel]
    if out_dense.bias is not None:
        variables["out_bias"] = [out_dense.bias]

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        for part, dense in parts.items():
            _set(dense.kernel, t[f"{part}_kernel"])  # type: ignore[arg-type]  # (E, heads*hd) -> (E, heads, hd)
            if dense.bias is not None:
                _set(dense.bias, t[f"{part}_bias"])  # type: ignore[arg-type]
        _set(out_dense.kernel, t["out_kernel"])  # type: ignore[arg-type]
        if out_dense.bias is not None:
            _set(out_dense.bias, t["out_bias"])  # type: ignore[arg-type]
        return "kernels reshaped (E, heads, head_dim); output (heads, head_dim, E)"

    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        for role, (v,) in variables.items():
            a = fetch(v)
            out[role] = a.reshape(shapes[role])  # type: ignore[arg-type]  # row-major: the inverse of the write
        return out

    return [TargetLayer(name, "attention", "tf", layer, shapes,
                        {"heads": layer.num_heads, "key_dim": layer.key_dim, "embed": e_q}, write, read, variables)]


def _raw(layer: Any, var: Any) -> TargetLayer:
    """A weight of a layer no rule knows (class token, position table): copied as is,
    so the source must hold a tensor of exactly this shape at this point of the graph."""
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(var, t["value"])  # type: ignore[arg-type]
        return "copy (raw tensor)"

    variables = {"value": [var]}
    return TargetLayer(f"{layer.name}.{var.name}", "tensor", "tf", var, {"value": _shape(var)}, {}, write,
                       _copy_read(variables), variables)


def supported() -> list[str]:
    """The Keras layer classes with a registered describer (their subclasses count too)."""
    return KERAS.known()


def leaf_layers(model: Any) -> list[Any]:
    """The layers of ``model``, nested models opened up, in the model's order."""
    out = []
    for layer in model.layers:
        out.extend(leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def keras_layers(model: Any) -> list[TargetLayer]:
    """Parametric layers in forward (topological) order."""
    layers = []
    for layer in leaf_layers(model):
        described = KERAS.describe(layer.name, layer)
        if described is None:
            described = [_raw(layer, w) for w in layer.trainable_weights]
        layers.extend(described)
    return layers


def flatten_attrs(model: Any, channels_first_1d: bool = False) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """``read`` attrs for the Dense layers fed by a Flatten of a channels-last map or reshaped into one.

    Keras flattens (H, W, C) where a channels-first twin (torch) flattens (C, H, W): per such
    Dense layer (by name), ``{"flatten": ("CHW", (C, H, W))}`` (its rows) or ``{"unflatten": ...}``
    (its columns), so that ``read`` gives the channels-first canonical layout. A 1-D (L, C)
    map counts only when the twin is channels-first in 1-D too (``channels_first_1d``).
    """
    out_of, in_of = keras.Operation.output.fget, keras.Operation.input.fget
    layers = leaf_layers(model)
    found: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}

    def spatial(shape: tuple[int, ...]) -> bool:
        return len(shape) == 3 or (len(shape) == 2 and channels_first_1d)

    for layer in layers:
        try:
            if isinstance(layer, L.Flatten):
                dims = tuple(int(d) for d in in_of(layer).shape[1:])
                for dense in layers:
                    if isinstance(dense, L.Dense) and in_of(dense) is out_of(layer) and spatial(dims):
                        found[dense.name] = {"flatten": ("CHW", layouts.flatten_dims(dims, "HWC", "CHW"))}
            elif isinstance(layer, L.Reshape):
                dims = tuple(int(d) for d in layer.target_shape)
                for dense in layers:
                    if isinstance(dense, L.Dense) and out_of(dense) is in_of(layer) and spatial(dims):
                        found[dense.name] = {"unflatten": ("CHW", layouts.flatten_dims(dims, "HWC", "CHW"))}
        except (AttributeError, ValueError):  # a layer never called in this graph
            continue
    return found
