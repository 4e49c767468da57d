"""TensorFlow / Keras cases: eager, ``tf.function`` and ``tf.function(jit_compile=True)`` (XLA),
forward or a whole SGD training step.

fp16/bf16 build the Keras model under a mixed dtype policy (fp16 training with a
``LossScaleOptimizer``); GPU work is waited for with ``tf.test.experimental.sync_devices``
and its memory read from TF's allocator (``get_memory_info('GPU:0')['peak']``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from parity.bench.case import LEARNING_RATE, MOMENTUM, Case, CaseHost, Skip, as_list, training_recipe
from parity.bench.given import GivenSpec
from parity.bench.memory import Memory, rss_memory
from parity.bench.timing import noop

Built = tuple[Callable[[], Any], dict[str, Any]]


def tf_case(host: CaseHost, mode: str, batch: int) -> Case:
    """The ``tf-<mode>`` case at ``batch`` ('eager', 'function' or 'xla')."""
    tf = host.module("tf")
    gpus = tf.config.list_physical_devices("GPU")
    if host.device == "cuda" and not gpus:
        raise Skip("TensorFlow sees no GPU")
    on_gpu = host.device == "cuda"
    tf_device = "/GPU:0" if on_gpu else "/CPU:0"
    maker = _train_step if host.config.train else _forward
    call, settings = maker(host, tf, tf_device, mode, batch)
    memory = Memory("tf.config.experimental.get_memory_info('GPU:0')['peak'] (reset per cell)",
                    lambda: tf.config.experimental.reset_memory_stats("GPU:0"),
                    lambda: int(tf.config.experimental.get_memory_info("GPU:0")["peak"])) if on_gpu \
        else rss_memory()
    sync = tf.test.experimental.sync_devices if on_gpu else noop
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU:0") if on_gpu else "cpu"
    return Case(f"tf-{mode}", batch, call, sync, name, memory,
                {**host.common(mode), **settings,
                 "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled())})


def keras_policy(precision: str) -> str:
    """The Keras dtype policy a precision builds its models under."""
    return {"fp16": "mixed_float16", "bf16": "mixed_bfloat16"}.get(precision, "float32")


def _wrap(tf: Any, fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    if mode == "eager":
        return fn
    if mode == "function":
        return tf.function(fn)
    if mode == "xla":
        return tf.function(fn, jit_compile=True)
    raise ValueError(f"unknown TensorFlow mode {mode!r}")


def _keras_model(host: CaseHost, key: str) -> Any:
    """The inference model (kept under ``key``) or, with no key, one for a training step to change."""
    if isinstance(host.spec, GivenSpec):  # built already, under its own policy; trained only as a copy
        host.spec.check_policy(keras_policy(host.config.precision))
        model = host.spec.build_keras() if key else host.spec.training_copy("tf")
        if key:
            host.models[key] = model
        return model
    with _policy_scope(host.config.precision):
        model = host.spec.build_keras(host.config.seed)
    if key:
        host.models[key] = model
    return model


def _forward(host: CaseHost, tf: Any, tf_device: str, mode: str, batch: int) -> Built:
    model = host.models["tf"] if "tf" in host.models else _keras_model(host, "tf")
    fn = _wrap(tf, lambda *xs: model(_keras_args(xs), training=False), mode)
    arrays = host.inputs(batch, "tf")
    with tf.device(tf_device):
        resident = [tf.identity(tf.convert_to_tensor(a)) for a in arrays]

    if host.config.include_copies:
        def call() -> Any:
            with tf.device(tf_device):
                out = fn(*[tf.convert_to_tensor(a) for a in arrays])
            return [np.asarray(o) for o in as_list(out)]
    else:
        def call() -> Any:
            with tf.device(tf_device):
                return fn(*resident)

    return call, {"keras_policy": keras_policy(host.config.precision), "jit_compile": mode == "xla"}


def _train_step(host: CaseHost, tf: Any, tf_device: str, mode: str, batch: int) -> Built:
    import keras

    loss_kind, labels = host.targets(batch, "tf")
    model = _keras_model(host, "")
    opt = keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM)
    if host.config.precision == "fp16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    loss_fn = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if loss_kind == "cross_entropy"
               else keras.losses.MeanSquaredError())
    variables = model.trainable_variables
    opt.build(variables)

    def step(*xs: Any) -> Any:
        with tf.GradientTape() as tape:
            out = as_list(model(_keras_args(xs[:-1]), training=True))[0]
            loss = loss_fn(xs[-1], tf.cast(out, tf.float32))
            scaled = opt.scale_loss(loss)
        opt.apply(tape.gradient(scaled, variables), variables)
        return loss

    fn = _wrap(tf, step, mode)
    arrays = [*host.inputs(batch, "tf"), labels]
    with tf.device(tf_device):
        resident = [tf.identity(tf.convert_to_tensor(a)) for a in arrays]

    if host.config.include_copies:
        def call() -> Any:
            with tf.device(tf_device):
                return float(fn(*[tf.convert_to_tensor(a) for a in arrays]))
    else:
        def call() -> Any:
            with tf.device(tf_device):
                return fn(*resident)

    return call, {**training_recipe(loss_kind), "keras_policy": keras_policy(host.config.precision),
                  "loss_scaling": host.config.precision == "fp16", "jit_compile": mode == "xla"}


@contextlib.contextmanager
def _policy_scope(precision: str) -> Iterator[None]:
    """Build Keras models under the precision's dtype policy, restoring the previous one after."""
    import keras

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(keras_policy(precision))
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def _keras_args(xs: Sequence[Any]) -> Any:
    return list(xs) if len(xs) > 1 else xs[0]


__all__ = ["keras_policy", "tf_case"]
