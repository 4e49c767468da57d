"""Errors the command line turns into exit codes: usage/input errors exit 2."""

from __future__ import annotations

from converters.errors import ParityError

__all__ = ["DeviceUnavailableError", "NonFiniteOutputError", "ParityError", "RunnerInputError", "UsageError"]


class UsageError(ParityError):
    """A bad option, an unknown model, an unwritable output path."""


class DeviceUnavailableError(ParityError):
    """The requested device or execution provider is not present."""


class RunnerInputError(ParityError):
    """Inputs that do not match what the model expects."""


class NonFiniteOutputError(ParityError):
    """A runtime produced NaN or Inf where the reference did not."""
