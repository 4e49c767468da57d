"""PyTorch targets: one describer per module type, each with its layout transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from converters import layouts
from converters.errors import UnsupportedLayerError, WeightMappingError
from converters.targets import TargetLayer
from converters.torch_hooks import run_with_hooks

Tensors = dict[str, np.ndarray | None]


def _set(param: torch.Tensor, value: np.ndarray) -> None:
    value = np.ascontiguousarray(value, dtype=np.float32)
    if value.size != param.numel():
        raise WeightMappingError(f"cannot write an array of shape {value.shape} into a tensor of shape "
                                 f"{tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(value).reshape(param.shape))


def _set_bias(bias: torch.Tensor | None, value: np.ndarray | None) -> None:
    if bias is not None:
        _set(bias, value if value is not None else np.zeros(bias.shape, np.float32))


def _dense(name: str, m: nn.Linear) -> list[TargetLayer]:
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        kernel, how = t["kernel"], "kernel.T"
        flat = attrs.get("flatten")
        if flat is not None and flat[0] != "CHW":
            kernel = layouts.reorder_flatten_rows(kernel, flat[0], flat[1], "CHW")  # type: ignore[arg-type]
            how = f"rows {flat[0]}->CHW, kernel.T"
        bias = t["bias"]
        grid = attrs.get("unflatten")
        if grid is not None and grid[0] != "CHW":
            kernel, bias = layouts.reorder_unflatten_columns(kernel, bias, grid[0], grid[1], "CHW")  # type: ignore[arg-type]
            how += f", columns {grid[0]}->CHW"
        _set(m.weight, layouts.dense_to_torch(kernel))  # type: ignore[arg-type]
        _set_bias(m.bias, bias)
        return how

    return [TargetLayer(name, "dense", "torch", m, {"kernel": (m.in_features, m.out_features),
                        "bias": (m.out_features,) if m.bias is not None else None},
                        {"use_bias": m.bias is not None}, write)]


def _conv(name: str, m: nn.Conv1d | nn.Conv2d) -> list[TargetLayer]:
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(m.weight, t["weight"])  # type: ignore[arg-type]  # torch and ONNX share (M, C/g, *k)
        _set_bias(m.bias, t["bias"])
        return "copy"

    return [TargetLayer(name, "conv", "torch", m, {"weight": tuple(m.weight.shape),
                        "bias": (m.out_channels,) if m.bias is not None else None},
                        {"use_bias": m.bias is not None, "groups": m.groups, "stride": tuple(m.stride),
                         "dilation": tuple(m.dilation), "padding_mode": m.padding_mode}, write)]


def _conv_transpose(name: str, m: nn.ConvTranspose1d | nn.ConvTranspose2d) -> list[TargetLayer]:
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(m.weight, t["weight"])  # type: ignore[arg-type]  # (C_in, C_out/g, *k) on both sides
        _set_bias(m.bias, t["bias"])
        return "copy"

    return [TargetLayer(name, "convtranspose", "torch", m, {"weight": tuple(m.weight.shape),
                        "bias": (m.out_channels,) if m.bias is not None else None},
                        {"use_bias": m.bias is not None, "groups": m.groups, "stride": tuple(m.stride)}, write)]


def _batchnorm(name: str, m: nn.modules.batchnorm._BatchNorm) -> list[TargetLayer]:
    if not m.affine or not m.track_running_stats:
        raise UnsupportedLayerError(f"torch layer {name!r}: BatchNorm needs affine=True and running statistics")

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        for p, key in ((m.weight, "gamma"), (m.bias, "beta"), (m.running_mean, "mean"), (m.running_var, "var")):
            _set(p, t[key])  # type: ignore[arg-type]
        return "copy"

    c = m.num_features
    return [TargetLayer(name, "batchnorm", "torch", m, {"gamma": (c,), "beta": (c,), "mean": (c,), "var": (c,)},
                        {"epsilon": m.eps, "momentum": 1 - (m.momentum if m.momentum is not None else 0.0)}, write)]


def _norm_affine(kind: str, name: str, m: nn.LayerNorm | nn.GroupNorm, hyper: dict[str, Any]) -> list[TargetLayer]:
    if m.weight is None:
        raise UnsupportedLayerError(f"torch layer {name!r}: {type(m).__name__} without affine parameters has "
                                    "nothing to port; remove it from the matching or enable affine")
    c = m.weight.numel()
    if m.weight.dim() != 1:
        raise UnsupportedLayerError(f"torch layer {name!r}: LayerNorm over {tuple(m.weight.shape)}; only the last "
                                    "dimension is supported")

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(m.weight, t["gamma"])  # type: ignore[arg-type]
        _set_bias(m.bias, t["beta"])
        return "copy"

    return [TargetLayer(name, kind, "torch", m, {"gamma": (c,), "beta": (c,)}, hyper, write)]


def _embedding(name: str, m: nn.Embedding) -> list[TargetLayer]:
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(m.weight, t["table"])  # type: ignore[arg-type]
        return "copy"

    return [TargetLayer(name, "embedding", "torch", m, {"table": tuple(m.weight.shape)}, {}, write)]


def _rnn(name: str, m: nn.LSTM | nn.GRU) -> list[TargetLayer]:
    kind = "lstm" if isinstance(m, nn.LSTM) else "gru"
    gates = 4 if kind == "lstm" else 3
    order = layouts.LSTM_ONNX_TO_TORCH if kind == "lstm" else layouts.GRU_ONNX_TO_TORCH
    dirs = 2 if m.bidirectional else 1
    h = m.hidden_size
    if getattr(m, "proj_size", 0):
        raise UnsupportedLayerError(f"torch layer {name!r}: LSTM with proj_size is not supported")
    layers = []
    for layer in range(m.num_layers):
        in_size = m.input_size if layer == 0 else h * dirs

        def write(t: Tensors, attrs: dict[str, Any], layer: int = layer) -> str:
            if kind == "gru" and attrs.get("linear_before_reset", 1) != 1:
                raise WeightMappingError(f"{name}: the ONNX GRU has linear_before_reset=0 (Keras reset_after=False);"
                                         " torch's GRU computes reset-after: rebuild the source with reset_after=True")
            for d in range(dirs):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                w, r, b = t["W"][d], t["R"][d], t["B"][d]  # type: ignore[index]
                _set(getattr(m, "weight_ih" + suffix), layouts.reorder_gates(w, order))
                _set(getattr(m, "weight_hh" + suffix), layouts.reorder_gates(r, order))
                if m.bias:
                    _set(getattr(m, "bias_ih" + suffix), layouts.reorder_gates(b[: gates * h], order))
                    _set(getattr(m, "bias_hh" + suffix), layouts.reorder_gates(b[gates * h:], order))
            return f"gates {'iofc->ifgo' if kind == 'lstm' else 'zrh->rzn'}"

        label = name if m.num_layers == 1 else f"{name}.l{layer}"  # torch's _l{i} parameter suffix
        layers.append(TargetLayer(label, kind, "torch", m,
                                  {"W": (dirs, gates * h, in_size), "R": (dirs, gates * h, h),
                                   "B": (dirs, 2 * gates * h)},
                                  {"bidirectional": m.bidirectional, "reset_after": True, "use_bias": m.bias}, write))
    return layers


def _attention(name: str, m: nn.MultiheadAttention) -> list[TargetLayer]:
    if not m._qkv_same_embed_dim:
        raise UnsupportedLayerError(f"torch layer {name!r}: MultiheadAttention with kdim/vdim != embed_dim is not "
                                    "supported")
    e = m.embed_dim
    has_bias = m.in_proj_bias is not None
    shapes: dict[str, tuple[int, ...] | None] = {}
    for part in "qkv":
        shapes[f"{part}_kernel"] = (e, e)
        shapes[f"{part}_bias"] = (e,) if has_bias else None
    shapes["out_kernel"] = (e, e)
    shapes["out_bias"] = (e,) if m.out_proj.bias is not None else None

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(m.in_proj_weight, np.concatenate([t[f"{p}_kernel"].T for p in "qkv"]))  # type: ignore[union-attr]
        if has_bias:
            _set(m.in_proj_bias, np.concatenate([t[f"{p}_bias"] for p in "qkv"]))  # type: ignore[arg-type]
        _set(m.out_proj.weight, t["out_kernel"].T)  # type: ignore[union-attr]
        _set_bias(m.out_proj.bias, t["out_bias"])
        return "in_proj = [Wq; Wk; Wv] (transposed), out_proj = Wo.T"

    return [TargetLayer(name, "attention", "torch", m, shapes,
                        {"heads": m.num_heads, "batch_first": m.batch_first, "embed": e}, write)]


def _describe(name: str, m: nn.Module) -> list[TargetLayer]:
    if isinstance(m, nn.MultiheadAttention):
        return _attention(name, m)
    kinds: list[tuple[type | tuple[type, ...], Callable[..., list[TargetLayer]]]] = [
        (nn.Linear, _dense), ((nn.Conv1d, nn.Conv2d), _conv), ((nn.ConvTranspose1d, nn.ConvTranspose2d), _conv_transpose),
        ((nn.BatchNorm1d, nn.BatchNorm2d), _batchnorm), (nn.Embedding, _embedding), ((nn.LSTM, nn.GRU), _rnn),
    ]
    for cls, fn in kinds:
        if isinstance(m, cls):
            return fn(name, m)
    if isinstance(m, nn.LayerNorm):
        return _norm_affine("layernorm", name, m, {"epsilon": m.eps})
    if isinstance(m, nn.GroupNorm):
        return _norm_affine("groupnorm", name, m, {"epsilon": m.eps, "groups": m.num_groups})
    return [_raw(name, pname, p) for pname, p in m.named_parameters(recurse=False)]


def _raw(name: str, pname: str, p: torch.Tensor) -> TargetLayer:
    """A parameter of a module no rule knows (class token, position table): copied as is,
    so the source must hold a tensor of exactly this shape at this point of the graph."""
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(p, t["value"])  # type: ignore[arg-type]
        return "copy (raw tensor)"

    return TargetLayer(f"{name}.{pname}", "tensor", "torch", p, {"value": tuple(p.shape)}, {}, write)


SUPPORTED = ("MultiheadAttention", "Linear", "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "BatchNorm1d", "BatchNorm2d",
             "LayerNorm", "GroupNorm", "Embedding", "LSTM", "GRU")


def torch_layers(model: nn.Module, inputs: Sequence[np.ndarray] | None = None) -> list[TargetLayer]:
    """Parametric layers in forward order (traced with hooks when inputs are given)."""
    named = [(n or type(model).__name__, m) for n, m in model.named_modules()]
    order = [n for n, _ in named]
    if inputs is not None:
        calls: list[str] = []
        run_with_hooks(model, inputs, named, lambda n: lambda mod, args: calls.append(n), pre=True)
        seen = list(dict.fromkeys(calls))
        order = seen + [n for n in order if n not in seen]
    modules = dict(named)
    owned = [n + "." for n, m in named if isinstance(m, nn.MultiheadAttention)]  # out_proj belongs to its MHA
    layers: list[TargetLayer] = []
    for n in order:
        if not any(n.startswith(prefix) for prefix in owned):
            layers.extend(_describe(n, modules[n]))
    return layers
