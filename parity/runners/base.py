"""The runner template: validation and bookkeeping here, framework work in subclasses."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from parity.errors import RunnerInputError, UsageError

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "tf32", "fp16", "bf16"]
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")


class Runner(ABC):
    """Run named numpy inputs through a model and return named numpy outputs.

    Subclasses implement ``_prepare`` (place the model, apply threads and precision)
    and ``_run`` (one forward pass); ``_bind`` may check the names once they are known.
    ``device_used`` says where it actually ran (a GPU's name or "cpu"), ``device_type``
    which kind of device that is ("cuda" or "cpu"): the diagnostics run there too.

    The contract: a runner never changes the caller's model (its device, training
    mode, parameters or buffers); it runs a copy or restores what it changed.
    """

    name: str = "runner"

    def __init__(self, device: Device = "auto", threads: int | None = None, precision: Precision = "fp32"):
        if device not in DEVICES:
            raise UsageError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be a positive integer, got {threads}")
        self.device = device
        self.threads = threads
        self.precision = precision
        self.device_used: str | None = None
        self.device_type: str | None = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.settings: dict[str, Any] = {}

    def prepare(self, model: Any, input_names: Sequence[str] | None = None,
                output_names: Sequence[str] | None = None) -> Runner:
        """Load ``model`` onto the device; names default to what the model declares."""
        self._prepare(model)
        if input_names is not None:
            self.input_names = list(input_names)
        if output_names is not None:
            self.output_names = list(output_names)
        self._bind()
        return self

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward pass of ``inputs`` (by name); the outputs by name, as float32 numpy arrays."""
        if self.device_used is None:
            raise RuntimeError(f"{self.name} runner: call prepare() before run()")
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise RunnerInputError(
                f"{self.name} runner: inputs {sorted(inputs)} do not match the model's "
                f"{self.input_names} (missing {missing}, unexpected {extra})"
            )
        arrays = [np.asarray(inputs[n]) for n in self.input_names]
        outputs = self._run(arrays)
        if len(outputs) != len(self.output_names):
            raise RunnerInputError(
                f"{self.name} runner: the model returned {len(outputs)} outputs, "
                f"expected {len(self.output_names)} ({self.output_names})"
            )
        return dict(zip(self.output_names, outputs, strict=True))

    @abstractmethod
    def _prepare(self, model: Any) -> None: ...

    @abstractmethod
    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...

    def _bind(self) -> None:
        """Check ``input_names``/``output_names`` against the model (after ``prepare`` set them); default: nothing."""
        return None

    def describe(self) -> dict[str, Any]:
        """Where and how it ran: runner, device, device_type, threads, precision and its settings."""
        return {"runner": self.name, "device": self.device_used, "device_type": self.device_type,
                "threads": self.threads, "precision": self.precision, **self.settings}
