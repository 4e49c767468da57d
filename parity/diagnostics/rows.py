"""One canonical tensor compared across the twins: the row, its scale and its verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.compare import Comparison, compare
from parity.diagnostics.slots import Slot


@dataclass
class ParamRow:
    """One canonical tensor (a gradient, a parameter or a running statistic) compared across the twins."""

    name: str
    layer: str
    role: str
    kind: str
    torch: list[str]
    keras: list[str]
    shape: list[int]
    scale: float
    atol: float
    rtol: float
    max_abs: float
    max_rel: float
    passed: bool
    explain: str
    statistic: bool = False
    note: str = ""
    cause: str = ""  # a finding that explains the divergence here (a parameter frozen on one side only)

    @property
    def relative_error(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["relative_error"] = self.relative_error
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def compare_slot(slot: Slot, t_value: np.ndarray, k_value: np.ndarray, atol_rel: float, rtol: float,
                 reference: str = "torch", scale: float | None = None, extra: np.ndarray | None = None) -> ParamRow:
    """Compare one canonical tensor; ``atol_rel`` is relative to ``scale`` (default max |reference|);
    ``extra`` adds an element-wise allowance (same shape) to the absolute tolerance."""
    ref, other = (t_value, k_value) if reference == "torch" else (k_value, t_value)
    s = (float(np.max(np.abs(ref))) if ref.size else 0.0) if scale is None else float(scale)
    atol = atol_rel * s
    a, b = ("tf" if reference == "torch" else "torch"), reference
    c: Comparison = compare(other, ref, atol=atol, rtol=rtol, a=a, b=b, output=slot.name)
    passed, explain = c.passed, c.explain()
    if extra is not None and c.problem is None:
        diff = np.abs(other.astype(np.float64) - ref)
        excess = diff - (atol + rtol * np.abs(ref.astype(np.float64)) + extra)
        bad = ~(excess <= 0)
        passed = not bool(np.any(bad))
        if not passed:
            i = np.unravel_index(int(np.nanargmax(np.where(bad, excess, -np.inf))), ref.shape)
            explain = (f"{a} vs {b} [{slot.name}]: {int(bad.sum())} of {ref.size} elements over tolerance (atol "
                       f"{atol:.3g} + per-element allowance up to {float(np.max(extra)):.3g}); worst at index "
                       f"{tuple(int(j) for j in i)}: {float(other[i])!r} vs {float(ref[i])!r}, |a-b| = {float(diff[i]):.3g}, "
                       f"allowed {float(atol + extra[i]):.3g}")
        else:
            explain = f"{a} vs {b} [{slot.name}]: passed, max |a-b| = {c.max_abs:.3g} (atol {atol:.3g} + allowance)"
    return ParamRow(slot.name, slot.layer, slot.role, slot.kind, slot.torch_names, slot.keras_names,
                    list(ref.shape), s, atol, rtol, c.max_abs, c.max_rel, passed, explain,
                    statistic=not slot.trainable, note=slot.note)


def layer_scales(values: Sequence[tuple[Slot, np.ndarray]]) -> dict[str, float]:
    """The largest |value| over each layer's tensors: the scale each of them is judged against.

    A gradient that is zero in exact arithmetic (a bias just before a training-mode
    BatchNorm, an attention key bias: softmax ignores a shift shared by all keys) is
    pure rounding noise; judged against its own size it would always "diverge".
    """
    scales: dict[str, float] = {}
    for slot, value in values:
        scales[slot.layer] = max(scales.get(slot.layer, 0.0), float(np.max(np.abs(value))) if value.size else 0.0)
    return scales


def param_table(rows: Sequence[ParamRow], limit: int = 12) -> list[str]:
    """The rows as text: the first ``limit``, every failing one, and a count of the rest."""
    out = [f"  {'parameter':<56}{'max_abs':>10}{'rel_err':>10}{'atol':>10}  verdict"]
    first = next((i for i, r in enumerate(rows) if not r.passed), None)
    shown = [r for i, r in enumerate(rows) if i < limit or i == first or not r.passed][: limit + 8]
    for r in shown:
        out.append(f"  {r.name[:55]:<56}{r.max_abs:>10.2e}{r.relative_error:>10.2e}{r.atol:>10.2e}  "
                   f"{'ok' if r.passed else 'FAIL'}{f' ({r.cause})' if r.cause else ''}")
    if len(rows) > len(shown):
        out.append(f"  ... {len(rows) - len(shown)} more within tolerance")
    return out
