"""The zoo's model registry: a family registers a spec factory by name. Imports no family.

The family modules import :func:`register` from here; ``zoo/__init__.py`` imports every
family (so importing ``zoo`` or any of its modules fills the registry) and re-exports
:func:`get`, :func:`names` and :class:`UnknownModelError`.
"""

from __future__ import annotations

from collections.abc import Callable

from zoo.spec import ModelSpec

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
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, preset: str = "small", **overrides: object) -> ModelSpec:
    """The spec of zoo model ``name`` at ``preset``, with config fields overridden."""
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _REGISTRY[name](preset=preset, **overrides)
