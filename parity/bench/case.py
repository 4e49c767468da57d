"""What every per-runtime case module shares: ``Case``, ``Skip``, the host a case is built
from, and the one training recipe used by both frameworks.

A *case* is one runtime at one batch size, ready to time: ``call`` does the work on inputs
already prepared, ``sync`` waits for the device. The case modules (``cases_torch``,
``cases_tf``, ``cases_ort``) build cases from a ``CaseHost`` (the ``Bench`` engine), which
owns the frameworks, the device, the thread budget, the inputs and the exported ONNX file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from parity.bench.memory import Memory
from parity.bench.results import BenchConfig

# One training recipe for both frameworks. torch's SGD (v = mu*v + g; p -= lr*v) and
# Keras' (v = mu*v - lr*g; p += v) take identical steps at a constant learning rate.
LEARNING_RATE = 0.01
MOMENTUM = 0.9
# The loss follows the first output: a [batch, classes] output is trained as a classifier,
# anything else (images, sequences, hidden states) regresses onto a seeded random target.
LOSSES = {
    "cross_entropy": "cross-entropy on seeded integer labels, from logits, mean over the batch",
    "mse": "mean squared error to a seeded N(0, 1) target, mean over all elements",
}


class Skip(Exception):
    """A runtime that cannot run here (no GPU, provider or framework missing); becomes a skipped cell."""


@dataclass(frozen=True)
class Case:
    """One runtime at one batch size, ready to time: ``call`` does the work, ``sync`` waits for it."""

    runtime: str
    batch: int
    call: Callable[[], Any]
    sync: Callable[[], Any]
    device: str
    memory: Memory
    settings: Mapping[str, Any] = field(default_factory=dict)


class CaseHost(Protocol):
    """What a case module needs from the engine that builds it (``parity.bench.engine.Bench``)."""

    spec: Any
    config: BenchConfig
    device: str  # 'cpu' or 'cuda', resolved once for every cell
    threads: int
    models: MutableMapping[str, Any]  # built models kept across batch sizes, by key

    def module(self, key: str) -> Any:
        """The imported framework ('torch', 'tf', 'ort'), or ``Skip`` with why it is missing."""
        ...

    def inputs(self, batch: int, framework: str) -> list[np.ndarray]:
        """The seeded inputs at ``batch`` in ``framework``'s layout, in the spec's input order."""
        ...

    def onnx_inputs(self, batch: int) -> dict[str, np.ndarray]:
        """The seeded inputs at ``batch`` by input name, in the layout the ONNX file takes."""
        ...

    def targets(self, batch: int, framework: str) -> tuple[str, np.ndarray]:
        """The loss kind of the first output and its seeded target in ``framework``'s layout."""
        ...

    def common(self, mode: str) -> dict[str, Any]:
        """Settings every cell records: mode, precision, copies, threads."""
        ...

    def onnx_path(self) -> str:
        """The spec exported to ONNX once (or a user's own file); ``Skip`` when no exporter works."""
        ...

    def gpu_name(self) -> str:
        """The CUDA device's name, or 'cuda' when no framework can tell."""
        ...


def training_recipe(loss_kind: str) -> dict[str, Any]:
    """The recipe a training cell records in its settings."""
    return {"loss": loss_kind, "loss_detail": LOSSES[loss_kind], "optimizer": "SGD", "learning_rate": LEARNING_RATE,
            "momentum": MOMENTUM, "nesterov": False}


def as_list(out: Any) -> list[Any]:
    """A model's output(s) as a list."""
    return list(out) if isinstance(out, (list, tuple)) else [out]


__all__ = ["LEARNING_RATE", "LOSSES", "MOMENTUM", "Case", "CaseHost", "Skip", "as_list", "training_recipe"]
