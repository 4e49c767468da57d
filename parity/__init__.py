"""parity: port models between PyTorch and TensorFlow/Keras through ONNX and prove they compute the same numbers.

``check_models(source, target, inputs)`` checks your own pair; ``CheckOptions`` and
``CheckResult`` are what ``parity check`` takes and returns. They are loaded on first
use, so ``import parity`` imports no framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["CheckOptions", "CheckResult", "check_models"]

if TYPE_CHECKING:
    from parity.api import check_models
    from parity.check.results import CheckOptions, CheckResult


def __getattr__(name: str) -> Any:
    """The public API, imported on first use (PEP 562)."""
    if name == "check_models":
        from parity.api import check_models

        return check_models
    if name in ("CheckOptions", "CheckResult"):
        from parity.check import results

        return getattr(results, name)
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
