"""TensorFlow/Keras runner (a compiled tf.function over the model in inference mode).

Each runner compiles its own ``tf.function`` around a ``Forward`` object, not a lambda:
TensorFlow counts traces per Python code object, so one lambda line compiled afresh for
every model looks like one function retraced again and again ("5 out of the last 5 calls
... triggered tf.function retracing") although each function is traced once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from parity.errors import DeviceUnavailableError
from parity.runners.base import Runner


def resolve_device(device: str) -> str:
    """'cpu' or 'cuda' for ``device`` ('auto' picks the GPU when TF sees one); a missing GPU is an error with its reason."""
    gpus = tf.config.list_physical_devices("GPU")
    if device == "auto":
        return "cuda" if gpus else "cpu"
    if device == "cuda" and not gpus:
        why = ("this TensorFlow build has no CUDA support" if not tf.test.is_built_with_cuda() else
               "TensorFlow finds no GPU (no driver, CUDA_VISIBLE_DEVICES hides it, or its CUDA libraries do not load)")
        raise DeviceUnavailableError(f"tf: --device cuda was asked for but TensorFlow sees no GPU: {why}; "
                                     "use --device cpu or auto")
    return device


def tf_device_name(device: str) -> str:
    """TensorFlow's name for ``device`` ('cpu' or 'cuda')."""
    return "/GPU:0" if device == "cuda" else "/CPU:0"


def apply_precision(precision: str) -> dict[str, Any]:
    tf32 = precision == "tf32"
    tf.config.experimental.enable_tensor_float_32_execution(tf32)
    return {"tf32": tf32}


def apply_threads(threads: int | None) -> dict[str, Any]:
    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TF's runtime was already initialised in this process
            pass
    return {
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


class Forward:
    """``model(inputs, training=False)``, as an object: its own key in TF's retracing statistics."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, *xs: Any) -> Any:
        return self.model(list(xs) if len(xs) > 1 else xs[0], training=False)


class KerasRunner(Runner):
    """A Keras model in inference mode, compiled once per runner with ``tf.function``; the model is only read."""

    name = "tf"

    def _prepare(self, model: Any) -> None:
        device = resolve_device(self.device)
        self.settings.update(apply_threads(self.threads))
        self.settings.update(apply_precision(self.precision))
        if self.precision in ("fp16", "bf16"):
            raise DeviceUnavailableError(
                f"tf runner: precision {self.precision} needs a model built under a Keras mixed-precision "
                "policy; the parity runner compares fp32/tf32 only"
            )
        self.tf_device = tf_device_name(device)
        self.device_type = device
        self.model = model
        self.device_used = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices("GPU")[0]).get("device_name", "GPU:0") if device == "cuda" else "cpu"
        if not self.input_names:
            self.input_names = [t.name.split(":")[0] for t in model.inputs]
        if not self.output_names:
            self.output_names = [f"output_{i}" for i in range(len(model.outputs))]
        self._call = tf.function(Forward(model))

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with tf.device(self.tf_device):
            out = self._call(*[tf.convert_to_tensor(a) for a in inputs])
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [np.asarray(o, dtype=np.float32) for o in outs]
