"""Capture every named layer's activation: torch forward hooks and Keras probes over intermediate outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_CHANNELS_FIRST_TORCH = ("Conv", "ConvTranspose", "BatchNorm", "MaxPool", "AvgPool", "AdaptiveAvgPool",
                         "AdaptiveMaxPool", "InstanceNorm", "Upsample", "PixelShuffle", "ZeroPad", "Dropout2d")
_FUSED_ACTIVATION_KERAS = ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D",
                           "SeparableConv2D", "Conv1DTranspose", "Conv2DTranspose")
_RNN_KERAS = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional")


@dataclass
class Capture:
    values: dict[str, np.ndarray]
    order: list[str]  # completion order (torch) or layer order (Keras)
    kinds: dict[str, str]
    rnn: set[str] = field(default_factory=set)
    channels_first: set[str] = field(default_factory=set)  # torch modules whose output is channels-first
    calls: dict[str, int] = field(default_factory=dict)
    leaves: set[str] = field(default_factory=set)  # torch modules without children
    activation: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    unflatten: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # Dense -> Reshape((H, W, C))
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # torch: each module's first input (first call)
    outputs: list[np.ndarray] = field(default_factory=list)  # the model's own outputs, in order
    pre: dict[str, np.ndarray] = field(default_factory=dict)  # Keras: a fused activation's input
    consumers: dict[str, list[str]] = field(default_factory=dict)  # Keras: fused layer -> layers fed by it
    output_of: dict[str, int] = field(default_factory=dict)  # Keras: fused layer -> its model output index


def _to_numpy_torch(out: Any, module: Any) -> np.ndarray | None:
    import torch
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    while isinstance(out, (tuple, list)) and out:  # (output, state); PackedSequence is a tuple too
        if isinstance(out, PackedSequence):
            out = pad_packed_sequence(out, batch_first=bool(getattr(module, "batch_first", False)))[0]
        else:
            out = out[0]
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return None
    return out.detach().float().cpu().numpy().copy()


def capture_torch(model: Any, inputs: Sequence[np.ndarray]) -> Capture:
    """Every named module's output at its first call, in completion order; in eval mode, as the
    runner runs it (each module's own mode is put back afterwards)."""
    from torch import nn

    from converters.torch_hooks import run_with_hooks
    from parity.runners.torch_runner import eval_mode

    cap = Capture({}, [], {})
    hooked = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: Any, args: Any, out: Any) -> None:
            cap.calls[name] = cap.calls.get(name, 0) + 1
            if name in cap.values:
                return
            first = _to_numpy_torch(args[0], module) if args else None
            if first is not None:
                cap.inputs[name] = first
            value = _to_numpy_torch(out, module)
            if value is not None:
                cap.values[name] = value
                cap.order.append(name)
        return record

    for name, module in model.named_modules():
        if not name:
            continue
        cls = type(module).__name__
        cap.kinds[name] = cls
        if not any(True for _ in module.children()):
            cap.leaves.add(name)
        if isinstance(module, nn.RNNBase):
            cap.rnn.add(name)
        if cls.startswith(_CHANNELS_FIRST_TORCH) or isinstance(module, (nn.modules.conv._ConvNd,
                                                                        nn.modules.batchnorm._BatchNorm)):
            cap.channels_first.add(name)
        hooked.append((name, module))
    with eval_mode(model):
        out = run_with_hooks(model, inputs, hooked, hook)
    for item in out if isinstance(out, (tuple, list)) else [out]:
        value = _to_numpy_torch(item, model)
        if value is not None:
            cap.outputs.append(value)
    return cap


def capture_keras(model: Any, inputs: Sequence[np.ndarray]) -> Capture:
    """Every layer's output (first call) through probes over intermediate outputs; nested models recursed."""
    cap = Capture({}, [], {})
    _probe_keras(model, list(inputs), cap)
    return cap


def _probe_keras(model: Any, inputs: list[Any], cap: Capture, top: Any = None) -> None:
    import keras

    out_of = keras.Operation.output.fget  # the base property: the tensor of the layer's first call
    in_of = keras.Operation.input.fget
    probes: list[tuple[str, Any]] = []
    nested: list[Any] = []
    fused: list[Any] = []
    top = top if top is not None else model
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            out = out_of(layer)
        except (AttributeError, ValueError):  # never called in this graph
            continue
        if isinstance(out, (list, tuple)):
            out = out[0]
        cls = type(layer).__name__
        cap.kinds[layer.name] = cls
        base = keras_base_name(layer)  # a user's Dense subclass behaves as a Dense here
        if base in _RNN_KERAS:
            cap.rnn.add(layer.name)
        act = getattr(layer, "activation", None)
        if base in _FUSED_ACTIVATION_KERAS and act is not None and act is not keras.activations.linear:
            cap.activation[layer.name] = _numpy_activation(act)
            probes.append((f"\0pre:{layer.name}", in_of(layer)))
            fused.append(layer)
            users = [c.name for c in model.layers if any(t is out for t in _flat(in_of_safe(c)))]
            cap.consumers[layer.name] = users
            index = next((i for i, t in enumerate(model.outputs) if t is out), None)
            if index is not None and model is top:
                cap.output_of[layer.name] = index
        probes.append((layer.name, out))
        if isinstance(layer, keras.Model):
            probes.append((f"\0in:{layer.name}", in_of(layer)))
            nested.append(layer)
    if not probes:
        return
    for layer in model.layers:  # a Dense whose output is reshaped into an (H, W, C) map orders it HWC
        if isinstance(layer, keras.layers.Reshape) and len(layer.target_shape) == 3:
            src = in_of(layer)
            for dense in model.layers:
                if isinstance(dense, keras.layers.Dense) and out_of(dense) is src:
                    cap.unflatten[dense.name] = tuple(int(d) for d in layer.target_shape)  # type: ignore[assignment]
    probe = keras.Model(model.inputs, [t for _, t in probes])
    results = probe(list(inputs), training=False)
    results = results if isinstance(results, (list, tuple)) else [results]
    fed: dict[str, Any] = {}
    for (name, _), value in zip(probes, results, strict=True):
        if name.startswith("\0in:"):
            fed[name[4:]] = value
            continue
        if name.startswith("\0pre:"):
            fed[name] = value
            continue
        array = np.asarray(keras.ops.convert_to_numpy(value))
        if np.issubdtype(array.dtype, np.floating) and name not in cap.values:
            cap.values[name] = array.astype(np.float32)
            cap.order.append(name)
    for layer in fused:  # the same layer with its activation off: its own output before the activation
        cap.pre[layer.name] = _without_activation(layer, fed[f"\0pre:{layer.name}"])
    for layer in nested:
        inner = fed[layer.name]
        _probe_keras(layer, list(inner) if isinstance(inner, (list, tuple)) else [inner], cap, top)


def _without_activation(layer: Any, value: Any) -> np.ndarray:
    """``layer`` called on ``value`` with its fused activation switched off (put back after)."""
    import keras

    act = layer.activation
    layer.activation = keras.activations.linear
    try:
        return np.asarray(keras.ops.convert_to_numpy(layer(value, training=False)), dtype=np.float32)
    finally:
        layer.activation = act


def in_of_safe(layer: Any) -> Any:
    """The tensor(s) of ``layer``'s first call, or () when it was never called."""
    import keras

    try:
        return keras.Operation.input.fget(layer)
    except (AttributeError, ValueError):
        return ()


def _flat(value: Any) -> list[Any]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    return [value]


def keras_base_name(layer: Any) -> str:
    """The name of the first class in ``layer``'s hierarchy that Keras itself defines."""
    for cls in type(layer).__mro__:
        if (cls.__module__ or "").startswith("keras"):
            return cls.__name__
    return type(layer).__name__


def _numpy_activation(fn: Callable[[Any], Any]) -> Callable[[np.ndarray], np.ndarray]:
    import keras

    def apply(x: np.ndarray) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(x))), dtype=np.float32)

    apply.__name__ = getattr(fn, "__name__", "activation")
    return apply
