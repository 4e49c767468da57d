"""TensorFlow/Keras runner (a compiled tf.function over the model in inference mode)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from parity.errors import DeviceUnavailableError
from parity.runners.base import Runner


def resolve_device(device: str) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if device == "auto":
        return "cuda" if gpus else "cpu"
    if device == "cuda" and not gpus:
        raise DeviceUnavailableError("tf: --device cuda was asked for but TensorFlow sees no GPU")
    return device


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


class KerasRunner(Runner):
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
        self.tf_device = "/GPU:0" if device == "cuda" else "/CPU:0"
        self.model = model
        self.device_used = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices("GPU")[0]).get("device_name", "GPU:0") if device == "cuda" else "cpu"
        if not self.input_names:
            self.input_names = [t.name.split(":")[0] for t in model.inputs]
        if not self.output_names:
            self.output_names = [f"output_{i}" for i in range(len(model.outputs))]
        self._call = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with tf.device(self.tf_device):
            out = self._call(*[tf.convert_to_tensor(a) for a in inputs])
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [np.asarray(o, dtype=np.float32) for o in outs]
