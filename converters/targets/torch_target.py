"""PyTorch targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from converters import layouts
from converters.errors import UnsupportedLayerError
from converters.targets import TargetLayer

_PARAM_FREE_OK = (nn.ReLU, nn.ReLU6, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout,
                  nn.Flatten, nn.Identity, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Sequential, nn.ModuleList)


def _set(param: torch.Tensor, value: np.ndarray) -> None:
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).reshape(param.shape))


def _dense(name: str, m: nn.Linear) -> TargetLayer:
    def write(t: dict[str, np.ndarray | None], attrs: dict[str, Any]) -> str:
        kernel, how = t["kernel"], "kernel.T"
        flat = attrs.get("flatten")
        if flat is not None and flat[0] != "CHW":
            kernel = layouts.reorder_flatten_rows(kernel, flat[0], flat[1], "CHW")
            how = f"rows {flat[0]}->CHW, kernel.T"
        _set(m.weight, layouts.dense_to_torch(kernel))
        if m.bias is not None:
            _set(m.bias, t["bias"] if t["bias"] is not None else np.zeros(m.out_features, np.float32))
        return how

    return TargetLayer(name, "dense", "torch", m, {"kernel": (m.in_features, m.out_features),
                       "bias": (m.out_features,) if m.bias is not None else None},
                       {"use_bias": m.bias is not None}, write)


def _conv(name: str, m: nn.Conv1d | nn.Conv2d) -> TargetLayer:
    def write(t: dict[str, np.ndarray | None], attrs: dict[str, Any]) -> str:
        _set(m.weight, t["weight"])  # torch and ONNX share (M, C/g, *k)
        if m.bias is not None:
            _set(m.bias, t["bias"] if t["bias"] is not None else np.zeros(m.out_channels, np.float32))
        return "copy"

    return TargetLayer(name, "conv", "torch", m, {"weight": tuple(m.weight.shape),
                       "bias": (m.out_channels,) if m.bias is not None else None},
                       {"use_bias": m.bias is not None, "groups": m.groups, "stride": tuple(m.stride),
                        "dilation": tuple(m.dilation), "padding_mode": m.padding_mode}, write)


def _batchnorm(name: str, m: nn.modules.batchnorm._BatchNorm) -> TargetLayer:
    def write(t: dict[str, np.ndarray | None], attrs: dict[str, Any]) -> str:
        _set(m.weight, t["gamma"])
        _set(m.bias, t["beta"])
        _set(m.running_mean, t["mean"])
        _set(m.running_var, t["var"])
        return "copy"

    c = m.num_features
    return TargetLayer(name, "batchnorm", "torch", m, {"gamma": (c,), "beta": (c,), "mean": (c,), "var": (c,)},
                       {"epsilon": m.eps, "momentum_keras": 1 - (m.momentum or 0.0)}, write)


def _describe(name: str, m: nn.Module) -> TargetLayer | None:
    if isinstance(m, nn.Linear):
        return _dense(name, m)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return _conv(name, m)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not m.affine or not m.track_running_stats:
            raise UnsupportedLayerError(f"torch layer {name!r}: BatchNorm needs affine=True and running statistics")
        return _batchnorm(name, m)
    own = list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
    if own:
        raise UnsupportedLayerError(
            f"torch layer {name!r} ({type(m).__name__}) has parameters no rule handles; "
            "supported: Linear, Conv1d, Conv2d, BatchNorm1d, BatchNorm2d"
        )
    return None


def torch_layers(model: nn.Module, inputs: Sequence[np.ndarray] | None = None) -> list[TargetLayer]:
    """Parametric layers in forward order (traced with hooks when inputs are given)."""
    named = [(n, m) for n, m in model.named_modules() if n]
    order = [n for n, _ in named]
    if inputs is not None:
        calls: list[str] = []
        names = {id(m): n for n, m in named}
        hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append(names[id(mod)])) for _, m in named]
        try:
            with torch.no_grad():
                model(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
        finally:
            for h in hooks:
                h.remove()
        seen = list(dict.fromkeys(calls))
        order = seen + [n for n in order if n not in seen]
    modules = dict(named)
    layers = []
    for n in order:
        layer = _describe(n, modules[n])
        if layer is not None:
            layers.append(layer)
    return layers
