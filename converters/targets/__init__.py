"""Target models: enumerate parametric layers in forward order and write canonical tensors.

One module per framework. Each layer exposes its tensors' shapes in the canonical
(ONNX) layout so the matcher compares like with like, and a ``write`` that applies
the framework's layout transform (see converters.layouts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TargetLayer:
    name: str
    kind: str  # "dense" | "conv" | "batchnorm"
    framework: str
    obj: Any = field(repr=False)
    shapes: dict[str, tuple[int, ...] | None]  # canonical layout; None: the layer has no such tensor
    hyper: dict[str, Any] = field(default_factory=dict)
    write: Callable[[dict[str, np.ndarray | None], dict[str, Any]], str] = field(repr=False, default=None)  # type: ignore[assignment]


def framework_of(model: Any) -> str:
    """'torch' or 'tf' for a model object, without importing a framework that is not loaded."""
    for cls in type(model).__mro__:
        mod = cls.__module__ or ""
        if mod.startswith("torch."):
            return "torch"
        if mod.startswith(("keras", "tensorflow", "tf_keras")):
            return "tf"
    raise TypeError(f"expected a torch.nn.Module or a keras.Model, got {type(model).__name__}")


def target_layers(model: Any, inputs: Sequence[np.ndarray] | None = None) -> list[TargetLayer]:
    if framework_of(model) == "torch":
        from converters.targets.torch_target import torch_layers

        return torch_layers(model, inputs)
    from converters.targets.keras_target import keras_layers

    return keras_layers(model)
