"""Compare two arrays: metrics, NaN/Inf masks, and a verdict that carries its numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing ``actual`` against ``expected``; truthy when it passed."""

    a: str
    b: str
    output: str
    passed: bool
    atol: float
    rtol: float
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    over_tolerance: int
    over_fraction: float
    size: int
    worst_index: tuple[int, ...] | None
    worst_actual: float | None
    worst_expected: float | None
    reference_scale: float
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    nonfinite_mismatch: int = 0
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["worst_index"] = list(self.worst_index) if self.worst_index is not None else None
        d["shape_a"], d["shape_b"] = list(self.shape_a), list(self.shape_b)
        return {k: _json_float(v) for k, v in d.items()}

    def explain(self) -> str:
        """One line saying why it failed (or that it passed), in assert_close's spirit."""
        if self.problem:
            return self.problem
        head = f"{self.a} vs {self.b} [{self.output}]"
        if self.passed:
            return f"{head}: passed, max |a-b| = {self.max_abs:.3g} (atol {self.atol:.3g}, rtol {self.rtol:.3g})"
        msg = (
            f"{head}: {self.over_tolerance} of {self.size} elements ({self.over_fraction:.1%}) "
            f"over tolerance (atol {self.atol:.3g}, rtol {self.rtol:.3g}); worst at index "
            f"{self.worst_index}: {self.worst_actual!r} vs {self.worst_expected!r}, |a-b| = {self.max_abs:.3g}"
        )
        if self.nonfinite_mismatch:
            msg += f"; NaN/Inf positions differ at {self.nonfinite_mismatch} elements"
        return msg


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None if np.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def compare(
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    atol: float,
    rtol: float,
    a: str = "actual",
    b: str = "expected",
    output: str = "output",
) -> Comparison:
    """Compare element-wise with ``|actual - expected| <= atol + rtol * |expected|``.

    Shapes must match exactly. NaN and Inf are compared as masks: the same positions
    must be non-finite with the same value (NaN with NaN, +Inf with +Inf); finite
    elements are then compared numerically.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    base = dict(a=a, b=b, output=output, atol=float(atol), rtol=float(rtol),
                shape_a=tuple(actual.shape), shape_b=tuple(expected.shape))
    nan = float("nan")
    if actual.shape != expected.shape:
        return Comparison(
            **base, passed=False, max_abs=nan, max_rel=nan, mean_abs=nan, cosine=nan,
            over_tolerance=int(max(actual.size, expected.size)), over_fraction=1.0,
            size=int(max(actual.size, expected.size)), worst_index=None, worst_actual=None,
            worst_expected=None, reference_scale=nan,
            problem=f"{a} vs {b} [{output}]: shape mismatch {actual.shape} vs {expected.shape}",
        )
    x = actual.astype(np.float64)
    y = expected.astype(np.float64)
    finite_x, finite_y = np.isfinite(x), np.isfinite(y)
    both = finite_x & finite_y
    # Non-finite positions agree when both sides hold the same non-finite value.
    same_nonfinite = (~finite_x & ~finite_y) & ((np.isnan(x) & np.isnan(y)) | (x == y))
    nonfinite_mismatch = int(np.count_nonzero(~both & ~same_nonfinite))
    notes = []
    if np.any(~finite_x) or np.any(~finite_y):
        notes.append(
            f"non-finite values: {int(np.count_nonzero(~finite_x))} in {a}, "
            f"{int(np.count_nonzero(~finite_y))} in {b}"
        )

    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both, np.abs(x - y), 0.0)
    limit = atol + rtol * np.abs(np.where(both, y, 0.0))
    bad = (both & (diff > limit)) | (~both & ~same_nonfinite)
    over = int(np.count_nonzero(bad))
    size = int(x.size)
    with np.errstate(over="ignore"):  # a tiny |y| gives an infinite relative error: that is its value
        rel = np.where(both & (y != 0), diff / np.maximum(np.abs(y), np.finfo(np.float64).tiny), 0.0)
    rel = np.where(both & (y == 0) & (diff > 0), np.inf, rel)

    if size and np.any(bad):
        # Report the worst offender: a non-finite mismatch first, else the largest excess.
        excess = np.where(bad & both, diff - limit, -np.inf)
        excess = np.where(bad & ~both, np.inf, excess)
        flat = int(np.argmax(excess))
    elif size:
        flat = int(np.argmax(diff))
    else:
        flat = None
    worst_index = tuple(int(i) for i in np.unravel_index(flat, x.shape)) if flat is not None else None

    xf, yf = x[both], y[both]
    norm = float(np.linalg.norm(xf) * np.linalg.norm(yf))
    if norm > 0:
        cosine = float(np.dot(xf, yf) / norm)
    else:
        cosine = 1.0 if (xf.size == 0 or (not np.any(xf) and not np.any(yf))) else 0.0
    return Comparison(
        **base,
        passed=over == 0,
        max_abs=float(diff.max()) if size else 0.0,
        max_rel=float(rel.max()) if size else 0.0,
        mean_abs=float(diff[both].mean()) if np.any(both) else 0.0,
        cosine=cosine,
        over_tolerance=over,
        over_fraction=over / size if size else 0.0,
        size=size,
        worst_index=worst_index,
        worst_actual=float(actual.flat[flat]) if flat is not None else None,
        worst_expected=float(expected.flat[flat]) if flat is not None else None,
        reference_scale=float(np.abs(yf).max()) if yf.size else 0.0,
        nonfinite_mismatch=nonfinite_mismatch,
        notes=notes,
    )
