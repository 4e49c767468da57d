"""Fold BatchNorm into the layer before it, for serving: ``fold_keras`` and ``fold_torch``.

A BatchNorm in inference computes ``y = (x - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``
per channel. When ``x`` is a convolution's (or dense layer's) output and nothing else reads it, the
pair is one layer: ``W' = W * s`` over the output channels and ``b' = (b - mean) * s + beta``. The
folded model computes the same function in inference with one op instead of five per pair, but it
is no longer the same model for training (the statistics and the affine are gone): it is for serving.

Both functions work on a copy and never modify the model they are given; both return the folded
copy and the ``(layer, batchnorm)`` names of each folded pair. A BatchNorm that cannot be folded
(after an activation, after a layer whose output is read twice, a shared layer, statistics not
tracked) is left as it is.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from converters.errors import ConversionError

__all__ = ["SERVING_NOTE", "fold_keras", "fold_torch", "folded_kernel"]

SERVING_NOTE = "inference-only: BatchNorm folded into convolutions; for serving, not training"


def folded_kernel(weight: np.ndarray, bias: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray,
                  mean: np.ndarray, var: np.ndarray, eps: float, out_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W * s, (b - mean) * s + beta)`` with ``s = gamma / sqrt(var + eps)`` over ``weight``'s axis ``out_axis``.

    Computed in float64 and returned in ``weight``'s dtype: the fold itself adds one rounding per
    element, not several."""
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shape = [1] * weight.ndim
    shape[out_axis] = -1
    w = weight.astype(np.float64) * scale.reshape(shape)
    b = np.zeros_like(scale) if bias is None else bias.astype(np.float64)
    return w.astype(weight.dtype), ((b - mean) * scale + beta).astype(weight.dtype)


# ---------------------------------------------------------------------------------------------- Keras


def _keras_foldable(layer: Any) -> bool:
    """A layer whose output channels are its kernel's last axis (depthwise: channel x multiplier)."""
    import keras

    kinds = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D,
             keras.layers.Dense)
    if not isinstance(layer, kinds) or isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                                                         keras.layers.Conv3DTranspose, keras.layers.SeparableConv2D)):
        return False
    linear = getattr(layer.activation, "__name__", "") == "linear"
    return linear and getattr(layer, "data_format", "channels_last") == "channels_last"


def _keras_bn_foldable(bn: Any, rank: int) -> bool:
    import keras

    if not isinstance(bn, keras.layers.BatchNormalization):
        return False
    axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
    return axis is not None and axis % rank == rank - 1


def _keras_pairs(model: Any) -> dict[str, str]:
    """``{bn name: layer name}`` of each BatchNorm that directly and solely follows a foldable layer.

    Found by cloning the graph once and recording who reads each layer's output (public
    ``keras.models.clone_model`` hooks; a nested ``Sequential`` is a chain: each layer's output is
    read by the next one only)."""
    import keras

    producer: dict[int, str] = {}  # id of a tensor in the probe clone -> the layer that made it
    readers: dict[str, list[str]] = {}
    calls: dict[str, int] = {}
    first_input: dict[str, str] = {}
    ranks: dict[str, int] = {}

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        calls[layer.name] = calls.get(layer.name, 0) + 1
        tensors = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        for t in tensors:
            if id(t) in producer:
                readers.setdefault(producer[id(t)], []).append(layer.name)
        if tensors and id(tensors[0]) in producer:
            first_input[layer.name] = producer[id(tensors[0])]
        out = layer(*args, **kwargs)
        for t in keras.tree.flatten(out):
            producer[id(t)] = layer.name
            ranks[layer.name] = len(t.shape)
        return out

    if isinstance(model, keras.Sequential):
        return _sequential_pairs(model)
    try:
        probe = keras.models.clone_model(model, call_function=call)
    except ValueError as exc:  # what Keras raises for a subclassed model
        raise ConversionError(f"cannot fold {type(model).__name__} {model.name!r}: only a functional or Sequential "
                              f"keras.Model can be rebuilt layer by layer ({exc}); build it functionally") from exc
    for t in keras.tree.flatten(probe.outputs):
        if id(t) in producer:
            readers.setdefault(producer[id(t)], []).append("<model output>")
    layers = {layer.name: layer for layer in model.layers}
    pairs: dict[str, str] = {}
    for name, layer in layers.items():
        before = first_input.get(name)
        if before is None or before not in layers or calls.get(name) != 1 or calls.get(before) != 1:
            continue
        if readers.get(before) == [name] and _keras_foldable(layers[before]) and \
                _keras_bn_foldable(layer, ranks[before]):
            pairs[name] = before
    for layer in model.layers:
        if isinstance(layer, keras.Sequential):
            pairs.update(_sequential_pairs(layer))
    return pairs


def _sequential_pairs(model: Any) -> dict[str, str]:
    layers = list(model.layers)
    pairs = {}
    for before, layer in zip(layers, layers[1:], strict=False):
        rank = len(before.output.shape) if _keras_foldable(before) else 0
        if rank and _keras_bn_foldable(layer, rank):
            pairs[layer.name] = before.name
    return pairs


def fold_keras(model: Any, only: set[str] | None = None) -> tuple[Any, list[tuple[str, str]]]:
    """A functional or Sequential Keras model's copy with each foldable BatchNorm folded away
    (``only``: just these BatchNorms, by name).

    Returns ``(folded, [(layer, batchnorm), ...])``. The copy has no BatchNormalization layer for a
    folded pair (the layer before it gets a bias); every other layer is a clone with the same
    weights. A subclassed model cannot be rebuilt layer by layer and is refused."""
    import keras

    if not isinstance(model, keras.Model):
        raise ConversionError(f"fold_keras needs a functional or Sequential keras.Model, got {type(model).__name__}")
    try:
        built = not isinstance(model, keras.Sequential) or bool(model.inputs)
    except AttributeError:  # a Sequential model that was never called has no inputs at all
        built = False
    if not built:
        raise ConversionError(f"Keras model {model.name!r} is not built: give it an Input (or call it once) so "
                              "that its layers' shapes are known, then fold it")
    pairs = {bn: layer for bn, layer in _keras_pairs(model).items() if only is None or bn in only}
    folded_layers = set(pairs.values())

    def clone(layer: Any) -> Any:
        if isinstance(layer, keras.Sequential):
            kept = [clone(inner) for inner in layer.layers if inner.name not in pairs]
            given = layer.inputs[0]
            return keras.Sequential([keras.Input(batch_shape=given.shape, dtype=given.dtype), *kept], name=layer.name)
        config = layer.get_config()
        if layer.name in folded_layers:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        return args[0] if layer.name in pairs else layer(*args, **kwargs)

    if isinstance(model, keras.Sequential):
        folded = clone(model)
    else:
        folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
    _copy_folded_weights(model, folded, pairs)
    return folded, sorted((layer, bn) for bn, layer in pairs.items())


def _leaves(model: Any) -> dict[str, Any]:
    from converters.targets.keras_target import leaf_layers

    return {layer.name: layer for layer in leaf_layers(model)}


def _copy_folded_weights(model: Any, folded: Any, pairs: dict[str, str]) -> None:
    import keras

    old, new = _leaves(model), _leaves(folded)
    bn_of = {layer: bn for bn, layer in pairs.items()}
    for name, layer in new.items():
        source = old[name]
        if name not in bn_of:
            layer.set_weights(source.get_weights())
            continue
        bn = old[bn_of[name]]
        kernel = source.kernel.numpy()
        bias = source.bias.numpy() if source.use_bias else None
        stats = [v.numpy() if v is not None else None for v in (bn.gamma, bn.beta, bn.moving_mean,
                                                                  bn.moving_variance)]
        channels = stats[2].shape[0]
        gamma = stats[0] if stats[0] is not None else np.ones(channels, np.float32)
        beta = stats[1] if stats[1] is not None else np.zeros(channels, np.float32)
        if isinstance(source, keras.layers.DepthwiseConv2D):  # kernel (kh, kw, C, m): channel c * m + j
            kh, kw, c, m = kernel.shape
            w, b = folded_kernel(kernel.reshape(kh, kw, c * m), bias, gamma, beta, stats[2], stats[3],
                                 float(bn.epsilon), -1)
            w = w.reshape(kh, kw, c, m)
        else:
            w, b = folded_kernel(kernel, bias, gamma, beta, stats[2], stats[3], float(bn.epsilon), -1)
        layer.set_weights([w, b])


# ---------------------------------------------------------------------------------------------- torch


def fold_torch(module: Any, only: set[str] | None = None) -> tuple[Any, list[tuple[str, str]]]:
    """A deep copy of ``module`` in eval mode with each Conv -> BatchNorm pair fused (``only``: just
    these BatchNorms, by qualified name).

    The pairs are found in the ``torch.fx`` trace of the forward pass (each module called once, the
    layer's output read only by the BatchNorm); in the copy the layer becomes the fused layer and
    the BatchNorm an ``nn.Identity``, so the model's own class and ``forward`` are kept. Returns
    ``(folded, [(layer, batchnorm), ...])``."""
    import torch
    from torch import fx, nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if not isinstance(module, nn.Module):
        raise ConversionError(f"fold_torch needs a torch.nn.Module, got {type(module).__name__}")
    folded = copy.deepcopy(module).eval()
    try:
        graph = fx.symbolic_trace(folded).graph
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError ...) for data-dependent code
        raise ConversionError(f"cannot trace {type(module).__name__}'s forward with torch.fx to find its conv -> "
                              f"BatchNorm pairs ({type(exc).__name__}: {exc}); fold them by hand with "
                              "torch.nn.utils.fusion.fuse_conv_bn_eval") from exc
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        bn, before = folded.get_submodule(node.target), node.args[0]
        if not isinstance(bn, norms) or before.op != "call_module" or len(before.users) != 1:
            continue
        layer = folded.get_submodule(before.target)
        if calls[node.target] != 1 or calls[before.target] != 1 or bn.running_mean is None or \
                (only is not None and node.target not in only):
            continue
        if not isinstance(layer, convs):  # a Linear's features are its last axis, BatchNorm1d's axis 1
            continue
        with torch.no_grad():
            folded.set_submodule(before.target, fuse_conv_bn_eval(layer, bn))
            folded.set_submodule(node.target, nn.Identity())
        pairs.append((str(before.target), str(node.target)))
    return folded, pairs
