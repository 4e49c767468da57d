"""Conversion errors: each says what was received and what would fix it."""

from __future__ import annotations

from parity.errors import ParityError


class ConversionError(ParityError):
    """An ONNX file that cannot be read, checked or exported."""


class UnsupportedLayerError(ConversionError):
    """A parametric ONNX node or a target layer kind that no rule handles."""


class WeightMappingError(ConversionError):
    """The source graph and the target model do not line up layer by layer."""
