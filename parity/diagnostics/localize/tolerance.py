"""How much of the output's tolerance each layer gets: it grows with depth (see the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DepthTolerance:
    """Per-layer tolerance: ``atol`` relative to each activation's scale (or absolute), ``rtol``."""

    atol: float
    rtol: float
    reason: str
    scale_relative: bool = True
    strict: bool = False

    def factor(self, depth: int, total: int) -> float:
        """How much of the given tolerance layer ``depth`` (1-based) of ``total`` gets."""
        if self.strict or total <= 0:
            return 1.0
        return math.sqrt(max(depth, 1) / total)

    def at(self, depth: int, total: int, scale: float) -> tuple[float, float]:
        f = self.factor(depth, total)
        atol = self.atol * f * (scale if self.scale_relative else 1.0)
        return atol, self.rtol * f

    def describe(self) -> dict[str, Any]:
        growth = ("taken as given at every layer (strict)" if self.strict else
                  "the given tolerance is the budget after all D compared layers; layer d gets tol * sqrt(d / D): "
                  "float32 rounding from different summation orders is independent per layer and accumulates "
                  "like a random walk (see docs/numerics.md, 'Expected float32 gaps'), so every depth keeps the same "
                  "margin over the expected rounding and the last layer gets the output check's tolerance")
        return {"atol": self.atol, "rtol": self.rtol, "scale_relative": self.scale_relative,
                "strict": self.strict, "growth": growth, "reason": self.reason}


def depth_tolerance(tolerance: Any, *, strict: bool = False, atol: float | None = None,
                    rtol: float | None = None, tf32: bool = False) -> DepthTolerance:
    """The per-layer policy from a spec ``Tolerance`` (scale-relative) or explicit --atol/--rtol (as given)."""
    if atol is not None or rtol is not None:
        a = atol if atol is not None else tolerance.absolute(1.0)
        r = rtol if rtol is not None else tolerance.rtol
        return DepthTolerance(a, r, "given on the command line; taken as given at every layer",
                              scale_relative=atol is None and tolerance.scale_relative, strict=True)
    a, r, reason = tolerance.atol, tolerance.rtol, tolerance.reason
    if tf32:  # TF32 keeps 10 mantissa bits (unit roundoff 4.9e-4)
        a, r, reason = max(a, 1e-3), max(r, 1e-3), reason + "; widened to 1e-3 for TF32"
    return DepthTolerance(a, r, reason, scale_relative=tolerance.scale_relative, strict=strict)
