"""The target side's table: one registered describer per layer class, per framework.

A describer turns one framework layer into ``TargetLayer`` s: the canonical (ONNX)
shapes the porter matches on, a ``write`` (canonical tensors -> the layer's variables)
and its inverse ``read`` (the layer's arrays -> canonical tensors). Gradients are
linear in the parameters, so ``read`` turns gradients into the canonical layout too;
the one exception, PyTorch's two LSTM biases against Keras's one, is what ``mode``
is for. Describers are registered with ``@registry.kind(cls, ...)`` and found along a
layer's MRO, so a user's subclass of ``nn.Linear`` or ``keras.layers.Dense`` is the same
kind as its base. Registering a class twice raises.

This module imports no framework; ``torch_target`` and ``keras_target`` fill the two
registries when imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Tensors = dict[str, np.ndarray | None]
Fetch = Callable[[Any], np.ndarray]  # a framework tensor -> its array (its value, or its gradient)
Writer = Callable[[Tensors, dict[str, Any]], str]
Reader = Callable[[Fetch, str, Mapping[str, Any]], dict[str, np.ndarray]]
READ_MODES = ("value", "grad")


@dataclass
class TargetLayer:
    """One parametric layer of a target model, described in the canonical (ONNX) layout.

    ``write(tensors, attrs)`` assigns canonical tensors (``attrs``: the source group's,
    e.g. a flatten order) and says how it transformed them. ``read(fetch, mode, attrs)``
    is its inverse: ``fetch`` gives each framework tensor's array (values by default, or
    gradients), and the result maps each role in ``variables`` to its canonical array.
    ``variables`` names the framework tensors behind each role; ``statistics`` the roles
    that are running statistics (updated by forward passes, not by an optimizer).
    """

    name: str
    kind: str  # "dense" | "conv" | "batchnorm" | ... | "tensor" (a raw weight no rule knows)
    framework: str
    obj: Any = field(repr=False)
    shapes: dict[str, tuple[int, ...] | None]  # canonical layout; None: the layer has no such tensor
    hyper: dict[str, Any]
    write: Writer = field(repr=False)
    reader: Reader = field(repr=False)
    variables: dict[str, list[Any]] = field(repr=False)
    statistics: frozenset[str] = frozenset()

    def read(self, fetch: Fetch | None = None, mode: str = "value",
             attrs: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Canonical arrays per role, from ``fetch`` (default: the variables' current values).

        ``mode="grad"`` reads gradients: the same transforms, except where one canonical
        tensor is the sum of two framework tensors (torch's LSTM b_ih + b_hh), whose
        gradient is either one's. ``attrs`` as for ``write`` (a dense layer's flatten order).
        """
        if mode not in READ_MODES:
            raise ValueError(f"read mode {mode!r}; expected one of {READ_MODES}")
        return self.reader(fetch or value_of, mode, attrs or {})


def value_of(tensor: Any) -> np.ndarray:
    """The current value of a torch tensor or a Keras variable, as a float32 numpy array."""
    if hasattr(tensor, "detach"):
        return tensor.detach().cpu().numpy().astype(np.float32, copy=True)
    return np.array(tensor.numpy(), dtype=np.float32)


def shape_of(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape)


def fetch_from(arrays: Mapping[int, np.ndarray]) -> Fetch:
    """A fetch from arrays keyed by ``id(tensor)`` (e.g. gradients); zeros for a tensor not in it."""
    def fetch(tensor: Any) -> np.ndarray:
        found = arrays.get(id(tensor))
        return found if found is not None else np.zeros(shape_of(tensor), np.float32)
    return fetch


Describer = Callable[[str, Any], "list[TargetLayer] | None"]  # (name, layer) -> its layers; None: not after all


class Registry:
    """Describers of one framework's layer classes, looked up along a class's MRO."""

    def __init__(self, framework: str) -> None:
        self.framework = framework
        self._by_class: dict[type, Describer] = {}

    def kind(self, *classes: type) -> Callable[[Describer], Describer]:
        """Register the decorated describer for ``classes`` (and so their subclasses)."""
        def decorate(fn: Describer) -> Describer:
            for cls in classes:
                if cls in self._by_class:
                    raise ValueError(f"{self.framework} layer class {cls.__qualname__} is registered twice "
                                     f"({self._by_class[cls].__name__} and {fn.__name__})")
            self._by_class.update(dict.fromkeys(classes, fn))
            return fn
        return decorate

    def lookup(self, cls: type) -> Describer | None:
        """The describer of ``cls`` or of its nearest registered base class."""
        for base in cls.__mro__:
            fn = self._by_class.get(base)
            if fn is not None:
                return fn
        return None

    def describe(self, name: str, layer: Any) -> list[TargetLayer] | None:
        """``layer`` as TargetLayers, or None when no describer knows its class."""
        fn = self.lookup(type(layer))
        return fn(name, layer) if fn is not None else None

    def known(self) -> list[str]:
        return sorted(cls.__name__ for cls in self._by_class)


REGISTRIES = {"torch": Registry("torch"), "tf": Registry("tf")}


def framework_of(model: Any) -> str:
    """'torch' or 'tf' for a model object, without importing a framework that is not loaded."""
    for cls in type(model).__mro__:
        mod = cls.__module__ or ""
        if mod.startswith("torch."):
            return "torch"
        if mod.startswith(("keras", "tensorflow", "tf_keras")):
            return "tf"
    raise TypeError(f"expected a torch.nn.Module or a keras.Model, got {type(model).__name__}")
