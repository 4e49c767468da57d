"""PyTorch targets: one registered describer per module class, each with its layout transform and its inverse."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from converters import layouts
from converters.errors import UnsupportedLayerError, WeightMappingError
from converters.targets.base import REGISTRIES, Fetch, Reader, TargetLayer, Tensors
from converters.torch_hooks import run_with_hooks

TORCH = REGISTRIES["torch"]


def _set(param: torch.Tensor, value: np.ndarray) -> None:
    # writable too: ONNX initializers arrive as read-only views, which torch.from_numpy warns about
    value = np.require(value, np.float32, ["C", "W"])
    if value.size != param.numel():
        raise WeightMappingError(f"cannot write an array of shape {value.shape} into a tensor of shape "
                                 f"{tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(value).reshape(param.shape))


def _set_bias(bias: torch.Tensor | None, value: np.ndarray | None) -> None:
    if bias is not None:
        _set(bias, value if value is not None else np.zeros(bias.shape, np.float32))


def _copy_read(variables: dict[str, list[Any]]) -> Reader:
    """A reader for layers whose roles are stored as is, one tensor each."""
    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {role: fetch(handles[0]) for role, handles in variables.items()}
    return read


@TORCH.kind(nn.Linear)
def _dense(name: str, m: nn.Linear) -> list[TargetLayer]:
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        kernel, bias, how = layouts.dense_to_native(t["kernel"], t["bias"], attrs, "CHW")  # type: ignore[arg-type]
        _set(m.weight, layouts.dense_to_torch(kernel))
        _set_bias(m.bias, bias)
        return ", ".join([*how, "kernel.T"])

    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        kernel, bias = layouts.dense_from_native(layouts.dense_from_torch(fetch(m.weight)),
                                                 fetch(m.bias) if m.bias is not None else None, attrs, "CHW")
        return {"kernel": kernel, **({"bias": bias} if bias is not None else {})}

    variables = {"kernel": [m.weight], **({"bias": [m.bias]} if m.bias is not None else {})}
    return [TargetLayer(name, "dense", "torch", m, {"kernel": (m.in_features, m.out_features),
                        "bias": (m.out_features,) if m.bias is not None else None},
                        {"use_bias": m.bias is not None}, write, read, variables)]


@TORCH.kind(nn.Conv1d, nn.Conv2d)
def _conv(name: str, m: nn.Conv1d | nn.Conv2d) -> list[TargetLayer]:
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(m.weight, t["weight"])  # type: ignore[arg-type]  # torch and ONNX share (M, C/g, *k)
        _set_bias(m.bias, t["bias"])
        return "copy"

    variables = {"weight": [m.weight], **({"bias": [m.bias]} if m.bias is not None else {})}
    return [TargetLayer(name, "conv", "torch", m, {"weight": tuple(m.weight.shape),
                        "bias": (m.out_channels,) if m.bias is not None else None},
                        {"use_bias": m.bias is not None, "groups": m.groups, "stride": tuple(m.stride),
                         "dilation": tuple(m.dilation), "padding_mode": m.padding_mode}, write,
                        _copy_read(variables), variables)]


@TORCH.kind(nn.ConvTranspose1d, nn.ConvTranspose2d)
def _conv_transpose(name: str, m: nn.ConvTranspose1d | nn.ConvTranspose2d) -> list[TargetLayer]:
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(m.weight, t["weight"])  # type: ignore[arg-type]  # (C_in, C_out/g, *k) on both sides
        _set_bias(m.bias, t["bias"])
        return "copy"

    variables = {"weight": [m.weight], **({"bias": [m.bias]} if m.bias is not None else {})}
    return [TargetLayer(name, "convtranspose", "torch", m, {"weight": tuple(m.weight.shape),
                        "bias": (m.out_channels,) if m.bias is not None else None},
                        {"use_bias": m.bias is not None, "groups": m.groups, "stride": tuple(m.stride)}, write,
                        _copy_read(variables), variables)]


@TORCH.kind(nn.BatchNorm1d, nn.BatchNorm2d)
def _batchnorm(name: str, m: nn.BatchNorm1d | nn.BatchNorm2d) -> list[TargetLayer]:
    if not m.affine or not m.track_running_stats:
        raise UnsupportedLayerError(f"torch layer {name!r}: BatchNorm needs affine=True and running statistics")

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        for p, key in ((m.weight, "gamma"), (m.bias, "beta"), (m.running_mean, "mean"), (m.running_var, "var")):
            _set(p, t[key])  # type: ignore[arg-type]
        return "copy"

    c = m.num_features
    variables = {"gamma": [m.weight], "beta": [m.bias], "mean": [m.running_mean], "var": [m.running_var]}
    return [TargetLayer(name, "batchnorm", "torch", m, {"gamma": (c,), "beta": (c,), "mean": (c,), "var": (c,)},
                        {"epsilon": m.eps, "momentum": 1 - (m.momentum if m.momentum is not None else 0.0)}, write,
                        _copy_read(variables), variables, frozenset({"mean", "var"}))]  # type: ignore[dict-item]


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

    variables = {"gamma": [m.weight], **({"beta": [m.bias]} if m.bias is not None else {})}
    return [TargetLayer(name, kind, "torch", m, {"gamma": (c,), "beta": (c,)}, hyper, write, _copy_read(variables),
                        variables)]


@TORCH.kind(nn.LayerNorm)
def _layernorm(name: str, m: nn.LayerNorm) -> list[TargetLayer]:
    return _norm_affine("layernorm", name, m, {"epsilon": m.eps})


@TORCH.kind(nn.GroupNorm)
def _groupnorm(name: str, m: nn.GroupNorm) -> list[TargetLayer]:
    return _norm_affine("groupnorm", name, m, {"epsilon": m.eps, "groups": m.num_groups})


@TORCH.kind(nn.Embedding)
def _embedding(name: str, m: nn.Embedding) -> list[TargetLayer]:
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(m.weight, t["table"])  # type: ignore[arg-type]
        return "copy"

    variables = {"table": [m.weight]}
    return [TargetLayer(name, "embedding", "torch", m, {"table": tuple(m.weight.shape)}, {}, write,
                        _copy_read(variables), variables)]


@TORCH.kind(nn.LSTM, nn.GRU)
def _rnn(name: str, m: nn.LSTM | nn.GRU) -> list[TargetLayer]:
    kind = "lstm" if isinstance(m, nn.LSTM) else "gru"
    gates = 4 if kind == "lstm" else 3
    order = layouts.LSTM_ONNX_TO_TORCH if kind == "lstm" else layouts.GRU_ONNX_TO_TORCH
    dirs = 2 if m.bidirectional else 1
    h = m.hidden_size
    if getattr(m, "proj_size", 0):
        raise UnsupportedLayerError(f"torch layer {name!r}: LSTM with proj_size is not supported")
    return [_rnn_layer(name, m, kind, k, gates, order, dirs, h) for k in range(m.num_layers)]


def _rnn_layer(name: str, m: nn.LSTM | nn.GRU, kind: str, k: int, gates: int, order: tuple[int, ...], dirs: int,
               h: int) -> TargetLayer:
    """Layer ``k`` of a (stacked) torch RNN: its parameters carry the suffix _l{k} (and _l{k}_reverse)."""
    in_size = m.input_size if k == 0 else h * dirs
    suffixes = [f"_l{k}" + ("_reverse" if d else "") for d in range(dirs)]

    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        if kind == "gru" and attrs.get("linear_before_reset", 1) != 1:
            raise WeightMappingError(f"{name}: the ONNX GRU has linear_before_reset=0 (Keras reset_after=False);"
                                     " torch's GRU computes reset-after: rebuild the source with reset_after=True")
        for d, suffix in enumerate(suffixes):
            w, r, b = t["W"][d], t["R"][d], t["B"][d]  # type: ignore[index]
            _set(getattr(m, "weight_ih" + suffix), layouts.reorder_gates(w, order))
            _set(getattr(m, "weight_hh" + suffix), layouts.reorder_gates(r, order))
            if m.bias:
                _set(getattr(m, "bias_ih" + suffix), layouts.reorder_gates(b[: gates * h], order))
                _set(getattr(m, "bias_hh" + suffix), layouts.reorder_gates(b[gates * h:], order))
        return f"gates {'iofc->ifgo' if kind == 'lstm' else 'zrh->rzn'}"

    variables = {"W": [getattr(m, "weight_ih" + s) for s in suffixes],
                 "R": [getattr(m, "weight_hh" + s) for s in suffixes]}
    if m.bias:
        variables["B"] = [getattr(m, f"bias_{w}{s}") for s in suffixes for w in ("ih", "hh")]

    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = {role: np.stack([layouts.gates_to_onnx(fetch(p), order) for p in variables[role]]) for role in "WR"}
        if m.bias:
            pairs = [(fetch(variables["B"][2 * d]), fetch(variables["B"][2 * d + 1])) for d in range(dirs)]
            if kind == "lstm":  # Keras keeps one bias per gate, Wb + Rb: read as that sum (its gradient is either's)
                out["B"] = np.stack([layouts.gates_to_onnx(ih + hh if mode == "value" else ih, order)
                                     for ih, hh in pairs])
            else:
                out["B"] = np.stack([np.concatenate([layouts.gates_to_onnx(ih, order), layouts.gates_to_onnx(hh, order)])
                                     for ih, hh in pairs])
        return out

    label = name if m.num_layers == 1 else f"{name}.l{k}"  # torch's _l{i} parameter suffix
    return TargetLayer(label, kind, "torch", m,
                       {"W": (dirs, gates * h, in_size), "R": (dirs, gates * h, h), "B": (dirs, 2 * gates * h)},
                       {"bidirectional": m.bidirectional, "reset_after": True, "use_bias": m.bias}, write, read,
                       variables)


@TORCH.kind(nn.MultiheadAttention)
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

    def read(fetch: Fetch, mode: str, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        w = fetch(m.in_proj_weight)
        out = {f"{p}_kernel": np.ascontiguousarray(w[i * e:(i + 1) * e].T) for i, p in enumerate("qkv")}
        if has_bias:
            b = fetch(m.in_proj_bias)
            out.update({f"{p}_bias": b[i * e:(i + 1) * e] for i, p in enumerate("qkv")})
        out["out_kernel"] = layouts.dense_from_torch(fetch(m.out_proj.weight))
        if m.out_proj.bias is not None:
            out["out_bias"] = fetch(m.out_proj.bias)
        return out

    variables = {f"{p}_kernel": [m.in_proj_weight] for p in "qkv"}
    if has_bias:
        variables.update({f"{p}_bias": [m.in_proj_bias] for p in "qkv"})
    variables["out_kernel"] = [m.out_proj.weight]
    if m.out_proj.bias is not None:
        variables["out_bias"] = [m.out_proj.bias]
    return [TargetLayer(name, "attention", "torch", m, shapes,
                        {"heads": m.num_heads, "batch_first": m.batch_first, "embed": e}, write, read, variables)]


def _raw(name: str, pname: str, p: torch.Tensor) -> TargetLayer:
    """A parameter of a module no rule knows (class token, position table): copied as is,
    so the source must hold a tensor of exactly this shape at this point of the graph."""
    def write(t: Tensors, attrs: dict[str, Any]) -> str:
        _set(p, t["value"])  # type: ignore[arg-type]
        return "copy (raw tensor)"

    variables = {"value": [p]}
    return TargetLayer(f"{name}.{pname}", "tensor", "torch", p, {"value": tuple(p.shape)}, {}, write,
                       _copy_read(variables), variables)


def supported() -> list[str]:
    """The torch module classes with a registered describer (their subclasses count too)."""
    return TORCH.known()


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
        if any(n.startswith(prefix) for prefix in owned):
            continue
        m = modules[n]
        described = TORCH.describe(n, m)
        if described is None:
            described = [_raw(n, pname, p) for pname, p in m.named_parameters(recurse=False)]
        layers.extend(described)
    return layers
