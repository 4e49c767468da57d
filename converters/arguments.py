"""The API's arguments checked before any export: a list of inputs, models that are built and run on them.

A mistake here would otherwise surface as a traceback from deep inside torch, Keras or an
exporter; these checks turn it into a ``ModelInputError`` that names what was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from converters.errors import ModelInputError
from converters.targets import framework_of


def model_framework(model: Any, what: str) -> str:
    """'torch' or 'tf'; anything else is the caller's mistake."""
    try:
        return framework_of(model)
    except TypeError:
        raise ModelInputError(f"the {what} must be a torch.nn.Module or a keras.Model, got "
                              f"{type(model).__name__}") from None


def input_list(inputs: Any, what: str) -> list[Any] | None:
    """``inputs`` as a list of arrays (one per model input); a bare array is refused with the fix."""
    if inputs is None:
        return None
    if hasattr(inputs, "shape") or isinstance(inputs, (str, bytes, dict)) or not isinstance(inputs, Sequence):
        shape = f" of shape {tuple(inputs.shape)}" if hasattr(inputs, "shape") else ""
        raise ModelInputError(f"{what} must be a list with one array per model input, got a "
                              f"{type(inputs).__name__}{shape}; wrap a single input as [x]")
    out = list(inputs)
    for k, value in enumerate(out):
        if not hasattr(value, "shape"):
            raise ModelInputError(f"{what}[{k}] must be an array (numpy or a framework tensor), got "
                                  f"{type(value).__name__}")
    return out


def check_built(model: Any, what: str) -> None:
    """A Keras model must have its weights (be built) before weights can be written into it."""
    if model_framework(model, what) == "tf" and (not getattr(model, "built", True) or not model.weights):
        raise ModelInputError(f"the {what} Keras model {getattr(model, 'name', '')!r} is not built (it has no "
                              "weights yet); call it once on an example, or model.build(input_shape), first")


def check_runs(model: Any, inputs: list[Any], what: str, option: str) -> None:
    """One inference call of ``model`` on ``inputs``; a failure is the inputs' (or the model's) mistake.

    The model's state is left as it was: torch runs in eval mode under no_grad, then its modes
    are restored; Keras is called with ``training=False``.
    """
    check_built(model, what)
    shapes = ", ".join(str(tuple(np.shape(x))) for x in inputs)
    try:
        if model_framework(model, what) == "torch":
            import torch

            modes = {m: m.training for m in model.modules()}
            model.eval()
            try:
                with torch.no_grad():
                    model(*[x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)) for x in inputs])
            finally:
                for module, training in modes.items():
                    module.train(training)
        else:
            model(inputs if len(inputs) > 1 else inputs[0], training=False)
    except Exception as exc:  # the user's model on the user's inputs: its failure is the input's mismatch
        message = " ".join(str(exc).split())[:300]
        raise ModelInputError(f"the {what} model cannot run on {option} of shapes [{shapes}] "
                              f"({type(exc).__name__}: {message}); give one array per model input, with the "
                              "batch first, in that model's own layout") from exc
