"""One interface for PyTorch, TensorFlow/Keras and ONNX Runtime.

Each runner module imports its framework itself; importing this package imports none.
"""

from __future__ import annotations

from parity.runners.base import Device, Precision, Runner

RUNNERS = ("torch", "tf", "ort")
# The Keras twin on Keras 3's other backends, each run in a worker process (``keras_backend``).
KERAS_BACKEND_RUNNERS = ("keras-jax", "keras-torch")


def make_runner(kind: str, **options: object) -> Runner:
    """A runner for ``kind`` ('torch', 'tf', 'ort', 'keras-jax' or 'keras-torch'); options go to its constructor."""
    if kind == "torch":
        from parity.runners.torch_runner import TorchRunner

        return TorchRunner(**options)  # type: ignore[arg-type]
    if kind == "tf":
        from parity.runners.tf_runner import KerasRunner

        return KerasRunner(**options)  # type: ignore[arg-type]
    if kind == "ort":
        from parity.runners.ort_runner import OrtRunner

        return OrtRunner(**options)  # type: ignore[arg-type]
    if kind in KERAS_BACKEND_RUNNERS:
        from parity.runners.keras_backend import KerasBackendRunner

        return KerasBackendRunner(backend=kind.split("-", 1)[1], **options)  # type: ignore[arg-type]
    raise ValueError(f"unknown runner {kind!r}; expected one of {', '.join(RUNNERS + KERAS_BACKEND_RUNNERS)}")


def check_device(device: str, kinds: tuple[str, ...] = RUNNERS) -> None:
    """Fail now, with the reason, when a runner of ``kinds`` could not run on ``device`` (e.g. 'cuda'
    without a GPU): a check can call it before it builds, exports and ports anything."""
    if device not in ("auto", "cpu", "cuda"):
        make_runner("torch", device=device)  # the one UsageError for an unknown device
    if device != "cuda":
        return
    if "torch" in kinds:
        from parity.runners.torch_runner import resolve_device

        resolve_device(device)
    if "tf" in kinds:
        from parity.runners.tf_runner import resolve_device as tf_resolve_device

        tf_resolve_device(device)
    if "ort" in kinds:
        from parity.runners.ort_runner import providers_for

        providers_for(device, "fp32")


__all__ = ["KERAS_BACKEND_RUNNERS", "RUNNERS", "Device", "Precision", "Runner", "check_device", "make_runner"]
