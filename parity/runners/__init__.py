"""One interface for PyTorch, TensorFlow/Keras and ONNX Runtime.

Each runner module imports its framework itself; importing this package imports none.
"""

from __future__ import annotations

from parity.runners.base import Device, Precision, Runner

RUNNERS = ("torch", "tf", "ort")


def make_runner(kind: str, **options: object) -> Runner:
    """A runner for ``kind`` ('torch', 'tf' or 'ort'); options go to its constructor."""
    if kind == "torch":
        from parity.runners.torch_runner import TorchRunner

        return TorchRunner(**options)  # type: ignore[arg-type]
    if kind == "tf":
        from parity.runners.tf_runner import KerasRunner

        return KerasRunner(**options)  # type: ignore[arg-type]
    if kind == "ort":
        from parity.runners.ort_runner import OrtRunner

        return OrtRunner(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown runner {kind!r}; expected one of {', '.join(RUNNERS)}")


__all__ = ["RUNNERS", "Device", "Precision", "Runner", "make_runner"]
