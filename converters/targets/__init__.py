"""Target models: enumerate parametric layers in forward order, write canonical tensors, read them back.

The table lives in ``converters.targets.base``: one describer per layer class and
framework, registered by ``torch_target`` and ``keras_target`` (imported here only
when a model of that framework is described, so ``import converters`` loads neither
framework). Each layer exposes its tensors' shapes in the canonical (ONNX) layout so the
matcher compares like with like, a ``write`` that applies the framework's layout
transform (see converters.layouts) and a ``read`` that undoes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from converters.targets.base import (
    REGISTRIES,
    Fetch,
    Registry,
    TargetLayer,
    fetch_from,
    framework_of,
    value_of,
)

__all__ = ["REGISTRIES", "Fetch", "Registry", "TargetLayer", "fetch_from", "framework_of", "registry",
           "target_layers", "value_of"]


def registry(framework: str) -> Registry:
    """The filled table of ``framework`` ('torch' or 'tf'); imports that framework."""
    if framework == "torch":
        import converters.targets.torch_target  # noqa: F401  (registers the torch describers)
    elif framework == "tf":
        import converters.targets.keras_target  # noqa: F401  (registers the Keras describers)
    else:
        raise ValueError(f"unknown framework {framework!r}; expected 'torch' or 'tf'")
    return REGISTRIES[framework]


def target_layers(model: Any, inputs: Sequence[np.ndarray] | None = None) -> list[TargetLayer]:
    """The parametric layers of a torch or Keras model, in forward order (torch: traced with ``inputs``)."""
    if framework_of(model) == "torch":
        from converters.targets.torch_target import torch_layers

        return torch_layers(model, inputs)
    from converters.targets.keras_target import keras_layers

    return keras_layers(model)
