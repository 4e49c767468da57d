"""ModelSpec: one architecture described once, built in both frameworks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Layout = Literal["NCHW", "NCL", "NC", "NL", "NLC"]
Framework = Literal["torch", "tf"]

# How a channels-first (torch) layout maps to the channels-last one Keras uses.
_TO_CHANNELS_LAST: dict[str, tuple[int, ...]] = {
    "NCHW": (0, 2, 3, 1),
    "NCL": (0, 2, 1),
}


# XLA (the keras-jax runtime: jax.jit over the Keras twin) fuses elementwise chains and may reorder the
# reductions inside a fused kernel: another float32 summation order, not another formula, so its gap
# grows like any kernel library's (~sqrt(K) eps |y| per reduction). Measured on CPU at the small preset,
# keras-jax against the torch source: resnet18 1.5e-7 (tf: 1.8e-7), bert hidden states 1.2e-6 (tf: 9.5e-7),
# vit 7.2e-7 (ORT: 7.2e-7), lstm 1.5e-8 (tf: 1.5e-8): within 1.3x of tf's own gap and over 50x inside each
# model's tolerance. So XLA is held to the model's own tolerance (factor 1). On a GPU, strict fp32 sets
# JAX's matmul precision to "highest" (no TF32 passes); with TF32 the check's TF32 widening applies.
XLA_TOLERANCE_FACTOR = 1.0
XLA_TOLERANCE_REASON = ("XLA (keras-jax) fuses and reorders float32 reductions; measured within 1.3x of tf's "
                        "own gap, so the model's tolerance applies unchanged (zoo/spec.py)")
XLA_RUNTIMES = ("keras-jax",)


@dataclass(frozen=True)
class Tolerance:
    """Allowed difference between two runtimes' outputs.

    ``atol`` is relative to the output scale (max |reference|) when ``scale_relative``
    is true, so one number works for logits of any magnitude.
    """

    atol: float
    rtol: float
    reason: str
    scale_relative: bool = True

    def absolute(self, reference_scale: float) -> float:
        return self.atol * reference_scale if self.scale_relative else self.atol


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output, without the batch dimension.

    ``shape`` is given in the torch (channels-first) layout; ``layout`` says how the
    Keras twin sees it (channels-last for images and 1-D signals).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = "NC"
    low: float = -1.0
    high: float = 1.0

    def to_framework(self, array: np.ndarray, framework: str) -> np.ndarray:
        """Convert a batch in torch layout to ``framework``'s layout."""
        perm = _TO_CHANNELS_LAST.get(self.layout)
        if framework == "tf" and perm is not None:
            return np.ascontiguousarray(array.transpose(perm))
        return array

    def from_framework(self, array: np.ndarray, framework: str) -> np.ndarray:
        """Convert a batch in ``framework``'s layout back to torch layout."""
        perm = _TO_CHANNELS_LAST.get(self.layout)
        if framework == "tf" and perm is not None:
            return np.ascontiguousarray(array.transpose(np.argsort(perm)))
        return array

    def framework_shape(self, framework: str) -> tuple[int, ...]:
        perm = _TO_CHANNELS_LAST.get(self.layout)
        full = (1, *self.shape)
        if framework == "tf" and perm is not None:
            full = tuple(full[i] for i in perm)
        return full[1:]


@dataclass(frozen=True)
class ModelSpec:
    """An architecture with twins in both frameworks, built from one frozen config."""

    name: str
    family: str
    preset: str
    config: Any
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tolerance: Tolerance
    torch_builder: Callable[[Any], Any] = field(repr=False)
    keras_builder: Callable[[Any], Any] = field(repr=False)
    presets: tuple[str, ...] = ("small",)
    # Custom seeded inputs (token ids below the vocabulary, masks with real padding):
    # called as make_inputs(config, batch, rng) -> {name: array in torch layout}.
    make_inputs: Callable[[Any, int, np.random.Generator], dict[str, np.ndarray]] | None = field(
        default=None, repr=False)
    # torch parameter count minus the Keras twin's trainable count, where the
    # parameterisations really differ (torch's second LSTM bias), with the reason.
    param_difference: int = 0
    param_difference_reason: str = ""
    # The torch ONNX exporter this twin needs when the default (dynamo) cannot export it.
    torch_exporter: str = "dynamo"
    torch_exporter_reason: str = ""

    def build_torch(self, seed: int = 0) -> Any:
        """The PyTorch twin in eval mode, initialised from ``seed`` (global RNG untouched)."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.torch_builder(self.config)
        return model.eval()

    def build_keras(self, seed: int = 0) -> Any:
        """The Keras twin, built and initialised from ``seed``."""
        import keras

        keras.utils.set_random_seed(seed)
        return self.keras_builder(self.config)

    def build(self, framework: str, seed: int = 0) -> Any:
        if framework == "torch":
            return self.build_torch(seed)
        if framework == "tf":
            return self.build_keras(seed)
        raise ValueError(f"unknown framework {framework!r}; expected 'torch' or 'tf'")

    def example_inputs(self, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded inputs in torch layout, keyed by input name."""
        rng = np.random.default_rng(seed)
        if self.make_inputs is not None:
            return self.make_inputs(self.config, batch, rng)
        out: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = (batch, *spec.shape)
            if np.dtype(spec.dtype).kind in "iu":
                out[spec.name] = rng.integers(int(spec.low), int(spec.high), size=shape).astype(spec.dtype)
            else:
                out[spec.name] = rng.uniform(spec.low, spec.high, size=shape).astype(spec.dtype)
        return out

    def inputs_for(self, framework: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs in ``framework``'s layout (``framework`` is 'torch' or 'tf')."""
        return {s.name: s.to_framework(inputs[s.name], framework) for s in self.inputs}

    def outputs_from(self, framework: str, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of ``framework`` back in torch layout, for comparison."""
        return {s.name: s.from_framework(outputs[s.name], framework) for s in self.outputs}

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]
