"""What training parity aligns between the twins, and the corrections it makes before comparing.

See parity.diagnostics.training for why each is needed: BatchNorm momenta, torch's two
LSTM biases, the unbiased running variance, embedding gradients as IndexedSlices, and
parameters whose gradient is rounding noise; and what the first step measures before
either twin moves (``first_step``: those parameters, and the torch twin's own float32
rounding of its gradients, which Adam's allowance is built from).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.diagnostics.noise_elements import noise_elements
from parity.diagnostics.rows import layer_scales
from parity.diagnostics.slots import Slot, read_slots
from parity.diagnostics.steps import keras_step, torch_step, torch_step_float64, training_mode


def batchnorm_momenta(slots: Sequence[Slot]) -> list[dict[str, Any]]:
    """Each BatchNorm pair's momentum, converted explicitly: Keras momentum = 1 - torch momentum."""
    out = []
    seen = set()
    for slot in slots:
        if slot.kind != "batchnorm" or slot.layer in seen:
            continue
        seen.add(slot.layer)
        tm, km = slot.torch_layer.obj, slot.keras_layer.obj
        m = getattr(tm, "momentum", None)
        k = float(getattr(km, "momentum", float("nan")))
        expected = None if m is None else 1.0 - float(m)
        ok = expected is not None and abs(k - expected) <= 1e-6 * max(1.0, abs(expected))
        msg = (f"{slot.layer}: torch momentum {m} (new = (1 - m) old + m batch) needs Keras momentum "
               f"{expected if expected is None else round(expected, 9)}, the Keras twin has {k}")
        out.append({"layer": slot.layer, "torch_momentum": m, "keras_momentum": k, "expected_keras_momentum": expected,
                    "converted": ok, "message": msg})
    return out


@contextmanager
def single_lstm_bias(torch_model: Any) -> Iterator[list[str]]:
    """Fold each torch LSTM's b_hh into b_ih and freeze it, as Keras has one bias per gate."""
    import torch
    from torch import nn

    changed: list[tuple[Any, bool]] = []
    names: list[str] = []
    with torch.no_grad():
        for name, m in torch_model.named_modules():
            if isinstance(m, nn.LSTM) and m.bias:
                for pname, p in m.named_parameters(recurse=False):
                    if pname.startswith("bias_hh"):
                        getattr(m, pname.replace("bias_hh", "bias_ih")).add_(p)
                        p.zero_()
                        changed.append((p, p.requires_grad))
                        p.requires_grad_(False)
                names.append(name)
    try:
        yield names
    finally:
        for p, flag in changed:
            p.requires_grad_(flag)


def variance_recorder(torch_model: Any) -> tuple[dict[str, list[tuple[np.ndarray, int]]], list[Any]]:
    """Per torch BatchNorm (by module name): each training forward's biased batch variance and
    values per channel; and the hook handles to remove."""
    from torch import nn

    from converters.torch_hooks import attach

    seen: dict[str, list[tuple[np.ndarray, int]]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(mod: Any, args: Any) -> None:
            if mod.training:
                x = args[0].detach().double()
                var = x.var(dim=[0, *range(2, x.ndim)], unbiased=False)
                seen.setdefault(name, []).append((var.cpu().numpy(), int(x.numel() // x.shape[1])))
        return record

    norms = [(n, m) for n, m in torch_model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return seen, attach(norms, hook, pre=True)


def unbiased_correction(history: Sequence[tuple[np.ndarray, int]], momentum: float) -> np.ndarray:
    """What torch's running variance holds beyond a biased-variance tracker after these steps."""
    n_steps = len(history)
    total = np.zeros_like(history[0][0]) if history else np.zeros(0)
    for t, (var, n) in enumerate(history):
        if n > 1:
            total = total + momentum * (1.0 - momentum) ** (n_steps - 1 - t) * var / (n - 1)
    return total


def densify(grad: Any) -> Any:
    """TF hands embedding gradients over as IndexedSlices, which Keras applies to the looked-up rows
    only (a "lazy" Adam: the other rows' moments neither decay nor move them); torch's Adam is dense."""
    import tensorflow as tf

    return tf.convert_to_tensor(grad) if isinstance(grad, tf.IndexedSlices) else grad


NOISE_GRADIENT = 1e-5  # a slot whose max |g| is under this fraction of its layer's largest gradient


@dataclass
class FirstStep:
    """The gradients before either twin moves, measured once and shared by every optimizer's run.

    ``frozen``: trainable slots whose gradient is rounding noise in both frameworks (zero in
    exact arithmetic). ``rounding``: per layer, the torch twin's own float32 rounding of its
    gradients (max |g_float32 - g_float64| over the layer, relative to its largest gradient);
    it is measured on the torch twin alone, so no difference between the twins enters it.
    """

    frozen: list[Slot]
    rounding: dict[str, float] = field(default_factory=dict)
    noise: dict[str, np.ndarray] = field(default_factory=dict)  # see parity.diagnostics.noise_elements


def first_step(spec: Any, torch_model: Any, keras_model: Any, slots: Sequence[Slot], inputs: dict[str, np.ndarray],
               objective: Any) -> FirstStep:
    """Frozen slots and the torch twin's gradient rounding on the first batch (see ``FirstStep``)."""
    t_in = list(spec.inputs_for("torch", inputs).values())
    with training_mode(torch_model, keras_model), single_lstm_bias(torch_model):
        _, tg = torch_step(torch_model, t_in, objective)
        _, kg, _ = keras_step(keras_model, list(spec.inputs_for("tf", inputs).values()), objective)
        wide = torch_step_float64(torch_model, t_in, objective)
    trainable = [s for s in slots if s.trainable]
    t_vals, k_vals = read_slots(trainable, "torch", tg, "grad"), read_slots(trainable, "tf", kg, "grad")
    exact = read_slots(trainable, "torch", wide, "grad")
    t_scale = layer_scales(list(zip(trainable, t_vals, strict=True)))
    k_scale = layer_scales(list(zip(trainable, k_vals, strict=True)))
    frozen = [s for s, t, k in zip(trainable, t_vals, k_vals, strict=True)
              if t.size and t_scale[s.layer] > 0 and float(np.max(np.abs(t))) <= NOISE_GRADIENT * t_scale[s.layer]
              and float(np.max(np.abs(k))) <= NOISE_GRADIENT * k_scale[s.layer]]
    rounding: dict[str, float] = {}
    for s, t, x in zip(trainable, t_vals, exact, strict=True):
        if t.size and t_scale[s.layer] > 0:
            err = float(np.max(np.abs(t.astype(np.float64) - x))) / t_scale[s.layer]
            rounding[s.layer] = max(rounding.get(s.layer, 0.0), err)
    live = [i for i, s in enumerate(trainable) if not any(s is f for f in frozen)]
    noise = noise_elements(*([arrays[i] for i in live] for arrays in (trainable, t_vals, k_vals, exact)), NOISE_GRADIENT)
    return FirstStep(frozen, rounding, noise)
