"""The Keras twin's forward pass and SGD training step on the backend this process runs (JAX or
PyTorch), with inputs already on the device: what ``keras_worker`` runs and times.

Imported only inside a worker whose ``KERAS_BACKEND`` is set; it never imports TensorFlow.
JAX: ``jax.jit`` over ``Model.stateless_call`` (XLA compiles the whole forward or step);
PyTorch: the Keras layers' torch ops run eagerly (what ``Model.__call__`` does there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.bench.case import LEARNING_RATE, MOMENTUM  # the bench's one training recipe


@dataclass
class Prepared:
    """A ready-to-time call, the wait for its device work, and how it runs."""

    call: Callable[[], Any]
    sync: Callable[[], Any]
    execution: str


def as_model_input(xs: Sequence[Any]) -> Any:
    """One input as itself, several as a list (how Keras models take them)."""
    return list(xs) if len(xs) > 1 else xs[0]


def first_output(out: Any) -> Any:
    return out[0] if isinstance(out, (list, tuple)) else out


def outputs_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def loss_function(kind: str) -> Any:
    """The bench's loss: cross-entropy from logits on integer labels, or mean squared error."""
    import keras

    if kind == "cross_entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return keras.losses.MeanSquaredError()


# ---------------------------------------------------------------------------- JAX


def jax_device(device: str) -> Any:
    import jax

    return jax.devices("gpu" if device == "cuda" else "cpu")[0]


def jax_forward(model: Any, arrays: Sequence[np.ndarray], device: str) -> Prepared:
    import jax

    dev = jax_device(device)
    xs = [jax.device_put(a, dev) for a in arrays]
    tv = [jax.device_put(v.value, dev) for v in model.trainable_variables]
    ntv = [jax.device_put(v.value, dev) for v in model.non_trainable_variables]

    @jax.jit
    def forward(tv: Any, ntv: Any, xs: Any) -> Any:
        out, _ = model.stateless_call(tv, ntv, as_model_input(xs), training=False)
        return out

    held: list[Any] = [None]

    def call() -> Any:
        held[0] = forward(tv, ntv, xs)
        return held[0]

    return Prepared(call, lambda: jax.block_until_ready(held[0]),
                    "jax.jit(Model.stateless_call): one XLA program per shape")


def jax_train(model: Any, arrays: Sequence[np.ndarray], labels: np.ndarray, loss_kind: str, device: str) -> Prepared:
    import jax
    import keras

    dev = jax_device(device)
    loss_fn = loss_function(loss_kind)
    opt = keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM)
    opt.build(model.trainable_variables)
    xs = [jax.device_put(a, dev) for a in arrays]
    y = jax.device_put(labels, dev)

    def loss_of(tv: Any, ntv: Any, xs: Any, y: Any) -> Any:
        out, ntv = model.stateless_call(tv, ntv, as_model_input(xs), training=True)
        return loss_fn(y, first_output(out)), ntv

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    @jax.jit
    def step(state: Any, xs: Any, y: Any) -> Any:
        tv, ntv, ov = state
        (loss, ntv), grads = grad_fn(tv, ntv, xs, y)
        tv, ov = opt.stateless_apply(ov, grads, tv)
        return loss, (tv, ntv, ov)

    state: list[Any] = [tuple(jax.device_put([v.value for v in vs], dev) for vs in
                              (model.trainable_variables, model.non_trainable_variables, opt.variables)), None]

    def call() -> Any:
        state[1], state[0] = step(state[0], xs, y)
        return state[1]

    return Prepared(call, lambda: jax.block_until_ready(state[:2]),
                    "jax.jit of the whole step (forward, jax.value_and_grad, SGD stateless_apply)")


# ---------------------------------------------------------------------------- PyTorch


def torch_device(device: str) -> Any:
    import torch

    return torch.device("cuda" if device == "cuda" else "cpu")


def torch_sync(device: str) -> Callable[[], Any]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def torch_forward(model: Any, arrays: Sequence[np.ndarray], device: str) -> Prepared:
    import torch

    dev = torch_device(device)
    xs = [torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in arrays]

    def call() -> Any:
        with torch.no_grad():
            return model(as_model_input(xs), training=False)

    return Prepared(call, torch_sync(device), "eager: the Keras layers' torch ops, under torch.no_grad")


def torch_train(model: Any, arrays: Sequence[np.ndarray], labels: np.ndarray, loss_kind: str,
                device: str) -> Prepared:
    import keras
    import torch

    dev = torch_device(device)
    loss_fn = loss_function(loss_kind)
    opt = keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM)
    variables = model.trainable_variables
    opt.build(variables)
    xs = [torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in arrays]
    y = torch.from_numpy(labels).to(dev)

    def call() -> Any:  # what Keras's own torch trainer does in train_step
        for v in variables:
            v.value.grad = None
        loss = loss_fn(y, first_output(model(as_model_input(xs), training=True)))
        loss.backward()
        with torch.no_grad():
            opt.apply([v.value.grad for v in variables], variables)
        return loss

    return Prepared(call, torch_sync(device), "eager step: forward, loss.backward(), Keras SGD apply")


def prepare(backend: str, model: Any, arrays: Sequence[np.ndarray], device: str,
            train: tuple[np.ndarray, str] | None = None) -> Prepared:
    """The forward pass, or with ``train`` = (labels, loss kind) one SGD step, on ``backend``."""
    if backend == "jax":
        return jax_train(model, arrays, *train, device) if train else jax_forward(model, arrays, device)
    if backend == "torch":
        return torch_train(model, arrays, *train, device) if train else torch_forward(model, arrays, device)
    raise ValueError(f"unknown Keras backend {backend!r}; expected 'jax' or 'torch'")


def to_numpy(out: Any) -> list[np.ndarray]:
    """Outputs as float32 numpy arrays on the host."""
    import keras

    return [np.asarray(keras.ops.convert_to_numpy(o), dtype=np.float32) for o in outputs_list(out)]


__all__ = ["Prepared", "prepare", "to_numpy"]
