"""Errors that are the user's input, not our bug: each says what was received and what would fix it.

``ParityError`` is the base of every such error in the project (the command line turns
it into exit code 2); it lives here, at the lowest layer that raises it, so that
``converters`` never imports ``parity``.
"""

from __future__ import annotations


class ParityError(Exception):
    """Base class for errors that are the user's input, not our bug (exit code 2)."""

    exit_code = 2


class ConversionError(ParityError):
    """An ONNX file that cannot be read, checked or exported."""


class UnsupportedLayerError(ConversionError):
    """A parametric ONNX node or a target layer kind that no rule handles."""


class WeightMappingError(ConversionError):
    """The source graph and the target model do not line up layer by layer."""


class OutputError(ParityError):
    """An output location that cannot be used: not writable, not empty without --overwrite, colliding."""


class UnsafeInputError(ConversionError):
    """A file that would make us read outside its folder, exhaust memory, or run code."""


class NonFiniteWeightsError(ConversionError):
    """Weights holding NaN or Inf (refused unless the user allows them)."""


class ModelInputError(ConversionError):
    """Arguments that do not fit the model: inputs of the wrong shape, a bare array for a list, an unbuilt model."""
