"""Keras 3 targets."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from converters import layouts
from converters.errors import UnsupportedLayerError
from converters.targets import TargetLayer


def _set(var: Any, value: np.ndarray) -> None:
    var.assign(np.ascontiguousarray(value, dtype=np.float32).reshape(tuple(var.shape)))


def _dense(layer: Any) -> TargetLayer:
    n_in, n_out = (int(d) for d in layer.kernel.shape)

    def write(t: dict[str, np.ndarray | None], attrs: dict[str, Any]) -> str:
        kernel, how = t["kernel"], "copy"
        flat = attrs.get("flatten")
        if flat is not None and flat[0] != "HWC":
            kernel = layouts.reorder_flatten_rows(kernel, flat[0], flat[1], "HWC")
            how = f"rows {flat[0]}->HWC"
        _set(layer.kernel, kernel)
        if layer.use_bias:
            _set(layer.bias, t["bias"] if t["bias"] is not None else np.zeros(n_out, np.float32))
        return how

    return TargetLayer(layer.name, "dense", "tf", layer, {"kernel": (n_in, n_out),
                       "bias": (n_out,) if layer.use_bias else None}, {"use_bias": layer.use_bias}, write)


def _conv(layer: Any) -> TargetLayer:
    kernel_shape = tuple(int(d) for d in layer.kernel.shape)
    canonical = (kernel_shape[-1], kernel_shape[-2], *kernel_shape[:-2])

    def write(t: dict[str, np.ndarray | None], attrs: dict[str, Any]) -> str:
        _set(layer.kernel, layouts.conv_to_keras(t["weight"]))  # type: ignore[arg-type]
        if layer.use_bias:
            _set(layer.bias, t["bias"] if t["bias"] is not None else np.zeros(canonical[0], np.float32))
        return f"weight.transpose{tuple(range(2, len(canonical))) + (1, 0)}"

    return TargetLayer(layer.name, "conv", "tf", layer, {"weight": canonical,
                       "bias": (canonical[0],) if layer.use_bias else None},
                       {"use_bias": layer.use_bias, "groups": getattr(layer, "groups", 1),
                        "stride": tuple(layer.strides), "dilation": tuple(layer.dilation_rate),
                        "padding": layer.padding}, write)


def _batchnorm(layer: Any) -> TargetLayer:
    if not (layer.center and layer.scale):
        raise UnsupportedLayerError(f"Keras layer {layer.name!r}: BatchNormalization needs center=True and scale=True")
    c = int(layer.gamma.shape[0])

    def write(t: dict[str, np.ndarray | None], attrs: dict[str, Any]) -> str:
        _set(layer.gamma, t["gamma"])  # type: ignore[arg-type]
        _set(layer.beta, t["beta"])  # type: ignore[arg-type]
        _set(layer.moving_mean, t["mean"])  # type: ignore[arg-type]
        _set(layer.moving_variance, t["var"])  # type: ignore[arg-type]
        return "copy"

    return TargetLayer(layer.name, "batchnorm", "tf", layer, {"gamma": (c,), "beta": (c,), "mean": (c,), "var": (c,)},
                       {"epsilon": layer.epsilon, "momentum_keras": layer.momentum}, write)


_KINDS = {keras.layers.Dense: _dense, keras.layers.Conv1D: _conv, keras.layers.Conv2D: _conv,
          keras.layers.BatchNormalization: _batchnorm}


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
        describe = next((fn for cls, fn in _KINDS.items() if type(layer) is cls), None)
        if describe is not None:
            layers.append(describe(layer))
        elif layer.weights:
            raise UnsupportedLayerError(
                f"Keras layer {layer.name!r} ({type(layer).__name__}) has weights no rule handles; "
                "supported: Dense, Conv1D, Conv2D, BatchNormalization"
            )
    return layers
