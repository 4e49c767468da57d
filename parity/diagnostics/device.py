"""Where the diagnostics run: on the device each runner ran on.

A check's runners record their device (``describe()["device_type"]``: "cpu" or "cuda");
``Placement.of_check`` reads it back, so ``--layers``, ``--grads`` and ``--train-steps``
run torch, Keras and ONNX Runtime where the output comparison ran them. The torch twin
is placed with ``torch_placed``: the model itself when it is already there, else a copy
made on the device (the caller's model is never moved), fed from numpy on the CPU
through a root forward pre-hook that moves every tensor argument to the model's device
(the diagnostics and ``converters`` feed CPU tensors). Keras runs under ``keras_placed``
(a ``tf.device`` scope); ONNX Runtime gets ``ort_providers``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.errors import UsageError

DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class Placement:
    """The device per framework ('cpu' or 'cuda'), and the precision ONNX Runtime's CUDA provider runs at."""

    torch: str = "cpu"
    tf: str = "cpu"
    ort: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for fw in ("torch", "tf", "ort"):
            if getattr(self, fw) not in DEVICE_TYPES:
                raise UsageError(f"diagnostics device for {fw}: {getattr(self, fw)!r}; expected one of {DEVICE_TYPES}")

    @classmethod
    def of_check(cls, runners: Mapping[str, Mapping[str, Any]], device: str = "cpu",
                 precision: str = "fp32") -> Placement:
        """Each framework where its runner ran (``runners``: label -> ``Runner.describe()``); a framework
        whose runner did not say falls back to ``device`` ('auto' counts as 'cpu')."""
        fallback = device if device in DEVICE_TYPES else "cpu"

        def where(*labels: str) -> str:
            for label in labels:
                kind = (runners.get(label) or {}).get("device_type")
                if kind in DEVICE_TYPES:
                    return str(kind)
            return fallback

        return cls(where("torch"), where("tf"), where("ort-torch", "ort-tf"), precision)


def as_placement(device: str | Placement) -> Placement:
    """``device`` as a Placement: one device string ('cpu' or 'cuda') for every framework."""
    if isinstance(device, Placement):
        return device
    return Placement(device, device, device)


def model_device(model: Any) -> Any:
    """The device of a torch model's first parameter or buffer (CPU for a model without tensors)."""
    import torch

    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(arrays: Sequence[np.ndarray], model: Any) -> list[Any]:
    """Numpy arrays as torch tensors on ``model``'s device (copied when read-only: torch needs writable memory)."""
    import torch

    device = model_device(model)
    return [torch.from_numpy(np.require(a, requirements=["C", "W"])).to(device) for a in arrays]


@contextlib.contextmanager
def torch_placed(model: Any, device: str) -> Iterator[Any]:
    """``model`` on ``device`` ('cpu', 'cuda', or any torch device) for the duration: itself when
    it is there, else a copy made there.

    Off the CPU, a forward pre-hook on the root moves every tensor argument to the device,
    so code that feeds CPU tensors (``converters.torch_hooks``) runs unchanged; it is
    removed afterwards.
    """
    import torch

    from parity.runners.torch_runner import placed, resolve_device

    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise UsageError(f"diagnostics device {device!r}: {exc}") from exc
    if kind == "cuda":
        resolve_device("cuda")  # no GPU: the runner's error, with its reason
    there = placed(model, device)
    if kind == "cpu":
        yield there
        return
    target = model_device(there)

    def move(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(a.to(target) if hasattr(a, "to") and hasattr(a, "device") else a for a in args)

    handle = there.register_forward_pre_hook(move, prepend=True)
    try:
        yield there
    finally:
        handle.remove()


@contextlib.contextmanager
def keras_placed(device: str) -> Iterator[str]:
    """A ``tf.device`` scope for ``device`` ('cpu' or 'cuda'); yields TensorFlow's device name."""
    import tensorflow as tf

    from parity.runners.tf_runner import resolve_device, tf_device_name

    if device not in DEVICE_TYPES:
        raise UsageError(f"diagnostics device {device!r}; expected one of {DEVICE_TYPES}")
    name = tf_device_name(resolve_device(device))
    with tf.device(name):
        yield name


def ort_providers(place: Placement) -> list[Any]:
    """ONNX Runtime's execution providers for ``place.ort`` (the runner's own choice)."""
    from parity.runners.ort_runner import providers_for

    return providers_for(place.ort, place.precision)


__all__ = ["DEVICE_TYPES", "Placement", "as_placement", "keras_placed", "model_device", "ort_providers",
           "to_device", "torch_placed"]
