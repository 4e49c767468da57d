"""What both twins run in one training step: training mode, the loss, forward and backward.

Both twins run in training mode (BatchNorm normalises with the batch statistics) with
dropout off: dropout draws from each framework's own random stream, and no seed makes
the two streams equal. The loss is the mean squared error against seeded targets
(``mse``, any output) or the cross-entropy on seeded labels (``xent``, one (batch,
classes) logits output), in float32; ``torch_step_float64`` runs the torch twin's step
in float64, to measure how far float32 rounding moves the torch gradients.

Regularisers count as they would in ``model.fit``: Keras's ``model.losses`` (kernel, bias
and activity regularisers) are added to the Keras loss, and the terms a torch module
declares in its ``regularizers`` attribute (see ``converters.lint``) to the torch loss. The torch
steps run on the torch model's device (``parity.diagnostics.device``); the Keras step
wherever the enclosing ``tf.device`` scope puts it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.diagnostics.device import to_device
from parity.errors import UsageError

LOSSES = ("mse", "xent")
TARGET_SEED_OFFSET = 104729  # targets and labels draw from seed + this, never from the inputs' stream


@contextlib.contextmanager
def training_mode(torch_model: Any, keras_model: Any, *, restore: bool = True) -> Iterator[list[str]]:
    """Both twins in training mode with dropout off; yields the dropout layers switched off.

    With ``restore`` the weights, running statistics and modes are put back afterwards.
    """
    import keras
    from torch import nn

    from converters.targets.keras_target import leaf_layers
    from parity.diagnostics.frozen import frozen_batchnorms

    was_training = torch_model.training
    state = copy.deepcopy(torch_model.state_dict()) if restore else None
    weights = keras_model.get_weights() if restore else None
    switched: list[str] = []
    torch_model.train()
    for name in frozen_batchnorms(torch_model):  # as Keras runs a non-trainable BatchNormalization
        torch_model.get_submodule(name).eval()
    for name, m in torch_model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
            if m.p > 0:
                switched.append(f"torch {name} (p={m.p})")
    rates: list[tuple[Any, float]] = []
    for layer in leaf_layers(keras_model):
        if isinstance(layer, (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                              keras.layers.GaussianDropout, keras.layers.AlphaDropout)):
            rates.append((layer, float(layer.rate)))
            if layer.rate > 0:
                switched.append(f"Keras {layer.name} (rate={layer.rate})")
            layer.rate = 0.0
    try:
        yield switched
    finally:
        for layer, rate in rates:
            layer.rate = rate
        torch_model.train(was_training)
        if state is not None:
            torch_model.load_state_dict(state)
        if weights is not None:
            keras_model.set_weights(weights)


@dataclass
class Loss:
    """The loss both twins minimise, with its seeded targets in each framework's layout."""

    kind: str
    torch_targets: list[np.ndarray]
    keras_targets: list[np.ndarray]

    def torch(self, outputs: Sequence[Any]) -> Any:
        import torch
        import torch.nn.functional as F

        if self.kind == "xent":
            return F.cross_entropy(outputs[0], torch.from_numpy(self.torch_targets[0]).to(outputs[0].device))
        return sum(F.mse_loss(o, torch.from_numpy(t).to(o.device))
                   for o, t in zip(outputs, self.torch_targets, strict=True))

    def keras(self, outputs: Sequence[Any]) -> Any:
        from keras import ops

        if self.kind == "xent":
            return ops.mean(ops.sparse_categorical_crossentropy(self.keras_targets[0], outputs[0], from_logits=True))
        total = None
        for o, t in zip(outputs, self.keras_targets, strict=True):
            term = ops.mean(ops.square(o - t))
            total = term if total is None else total + term
        return total

    def describe(self) -> str:
        if self.kind == "xent":
            return "cross-entropy on seeded labels (mean over the batch)"
        return "mean squared error against seeded standard-normal targets (summed over outputs)"


def make_loss(spec: Any, kind: str, batch: int, seed: int, step: int = 0) -> Loss:
    """Seeded targets for ``spec``'s outputs (``step`` gives each training step its own)."""
    if kind not in LOSSES:
        raise UsageError(f"unknown loss {kind!r}; expected one of {', '.join(LOSSES)}")
    rng = np.random.default_rng(seed + TARGET_SEED_OFFSET + step)
    if kind == "xent":
        if len(spec.outputs) != 1 or len(spec.outputs[0].shape) != 1:
            raise UsageError(f"loss 'xent' needs one (batch, classes) output; {spec.name} has "
                             f"{[(o.name, o.shape) for o in spec.outputs]}: use 'mse'")
        labels = rng.integers(0, spec.outputs[0].shape[0], size=batch).astype(np.int64)
        return Loss(kind, [labels], [labels])
    targets = [rng.standard_normal((batch, *o.shape)).astype(np.float32) for o in spec.outputs]
    return Loss(kind, targets, [o.to_framework(t, "tf") for o, t in zip(spec.outputs, targets, strict=True)])


def _penalty(x: Any, factors: dict[str, float]) -> Any:
    """Keras's L1L2 penalty, ``l1 * sum|x| + l2 * sum(x^2)``, in torch."""
    return factors.get("l1", 0.0) * x.abs().sum() + factors.get("l2", 0.0) * x.square().sum()


@contextlib.contextmanager
def torch_regularization(model: Any) -> Iterator[list[Any]]:
    """Collects the declared regularisers' terms of one forward pass into the yielded list: the kernel
    and bias terms when the context closes over ``total``, activity terms through forward hooks."""
    from converters.lint import declared_regularizers

    terms: list[Any] = []
    hooks = []
    declared = [(m, declared_regularizers(m)) for _, m in model.named_modules() if hasattr(m, "regularizers")]
    for module, regs in declared:
        if "activity" in regs:
            def hook(_m: Any, _args: Any, out: Any, factors: dict[str, float] = regs["activity"]) -> None:
                y = out[0] if isinstance(out, (tuple, list)) else out
                terms.append(_penalty(y, factors) / max(int(y.shape[0]), 1))
            hooks.append(module.register_forward_hook(hook))
    try:
        yield terms
    finally:
        for h in hooks:
            h.remove()
    for module, regs in declared:
        for role, attr in (("kernel", "weight"), ("bias", "bias")):
            param = getattr(module, attr, None)
            if role in regs and param is not None:
                terms.append(_penalty(param, regs[role]))


def torch_step(model: Any, inputs: Sequence[np.ndarray], loss: Loss) -> tuple[float, dict[int, np.ndarray]]:
    """Forward, loss (with declared regularisers) and backward in torch on the model's device: the loss and
    every parameter's gradient (by id)."""
    model.zero_grad(set_to_none=True)
    with torch_regularization(model) as terms:
        out = model(*to_device(inputs, model))
    value = loss.torch(out if isinstance(out, (tuple, list)) else [out])
    for term in terms:
        value = value + term
    value.backward()
    grads = {id(p): (p.grad.detach().cpu().numpy().copy() if p.grad is not None
                     else np.zeros(tuple(p.shape), np.float32)) for p in model.parameters()}
    return float(value.detach()), grads


def keras_step(model: Any, inputs: Sequence[np.ndarray], loss: Loss) -> tuple[float, dict[int, np.ndarray], list[Any]]:
    """Forward (training=True), loss and gradients in Keras: loss, gradients by id, the raw gradients."""
    import keras
    import tensorflow as tf

    variables = model.trainable_variables
    tensors = [tf.convert_to_tensor(a) for a in inputs]
    with tf.GradientTape() as tape:
        out = model(tensors if len(tensors) > 1 else tensors[0], training=True)
        value = loss.keras(out if isinstance(out, (tuple, list)) else [out])
        for term in model.losses:  # kernel, bias and activity regularisers, as model.fit adds them
            value = value + term
    raw = tape.gradient(value, variables)
    grads = {id(v): (np.asarray(tf.convert_to_tensor(g)) if g is not None
                     else np.zeros(tuple(int(d) for d in v.shape), np.float32)) for v, g in zip(variables, raw, strict=True)}
    return float(keras.ops.convert_to_numpy(value)), grads, list(raw)


def torch_step_float64(model: Any, inputs: Sequence[np.ndarray], loss: Loss) -> dict[int, np.ndarray]:
    """The gradients of ``torch_step`` computed in float64 on a copy of ``model``, keyed by the ids of
    ``model``'s own parameters: float32 rounding is what separates them from ``torch_step``'s."""
    twin = copy.deepcopy(model).double()  # the copy keeps each module's mode (dropout stays off) and device
    wide = [a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a for a in inputs]
    targets = [t.astype(np.float64) if np.issubdtype(t.dtype, np.floating) else t for t in loss.torch_targets]
    twin.zero_grad(set_to_none=True)
    with torch_regularization(twin) as terms:
        out = twin(*to_device(wide, twin))
    value = dataclasses.replace(loss, torch_targets=targets).torch(out if isinstance(out, (tuple, list)) else [out])
    for term in terms:
        value = value + term
    value.backward()
    return {id(p): (q.grad.detach().cpu().numpy().copy() if q.grad is not None else np.zeros(tuple(p.shape)))
            for p, q in zip(model.parameters(), twin.parameters(), strict=True)}
