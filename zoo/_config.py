"""Preset handling shared by the families."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C")


def resolve(presets: dict[str, C], preset: str, overrides: dict[str, Any], model: str) -> C:
    """Pick ``preset`` and apply ``overrides``, with errors that list the choices."""
    if preset not in presets:
        raise ValueError(f"model {model!r} has no preset {preset!r}; presets: {', '.join(presets)}")
    config = presets[preset]
    fields = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"model {model!r} has no config field(s) {unknown}; fields: {sorted(fields)}")
    return dataclasses.replace(config, **overrides)  # type: ignore[type-var]
