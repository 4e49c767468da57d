"""Twin architectures in PyTorch and Keras, built from one config.

``zoo.get(name, preset="small", **overrides)`` returns a :class:`ModelSpec`;
``zoo.names()`` lists the models. Importing the zoo imports no framework.
"""

from __future__ import annotations

from collections.abc import Callable

from zoo.spec import ModelSpec, TensorSpec, Tolerance

SpecFactory = Callable[..., ModelSpec]
_REGISTRY: dict[str, SpecFactory] = {}


class UnknownModelError(KeyError):
    """Raised for a model name the zoo does not know."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


def register(name: str) -> Callable[[SpecFactory], SpecFactory]:
    """Register a spec factory under ``name``; a second registration is a bug."""

    def decorate(factory: SpecFactory) -> SpecFactory:
        if name in _REGISTRY:
            raise ValueError(f"zoo model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


def names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get(name: str, preset: str = "small", **overrides: object) -> ModelSpec:
    """The spec of zoo model ``name`` at ``preset``, with config fields overridden."""
    _load_families()
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](preset=preset, **overrides)


def _load_families() -> None:
    from zoo import (  # noqa: F401  (registration happens on import)
        autoencoder,
        bert,
        cnn,
        mlp,
        mobilenet,
        resnet,
        rnn,
        tcn,
        unet,
        vit,
    )


__all__ = ["ModelSpec", "TensorSpec", "Tolerance", "UnknownModelError", "get", "names", "register"]
