"""What localisation found: one row per aligned layer, and the report over them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from parity.compare import Comparison
from parity.diagnostics.localize.tolerance import DepthTolerance

RULE = "ok when every element has |a-b| <= atol + rtol*|b|, i.e. |a-b|/tol <= 1"


@dataclass
class LayerRow:
    """One aligned layer: its activations in every runtime that exposes it, compared to the reference."""

    index: int
    layer: str
    torch: str | None
    keras: str | None
    kind: str
    shape: list[int]
    depth: int = 0
    scale: float = 0.0
    atol: float = 0.0
    rtol: float = 0.0
    max_abs: float = 0.0
    max_rel: float = 0.0
    ratio: float = 0.0  # max |a - b| / (atol + rtol |b|) over elements and runtimes: passed iff <= 1
    ratios: dict[str, float] = field(default_factory=dict)  # the same per compared runtime
    passed: bool = True
    reference: str = ""
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def relative_error(self) -> float:
        """max |a - b| over the activation's scale (what the plot shows)."""
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "comparisons"}
        d["relative_error"] = self.relative_error
        d["ratios"] = {k: (v if math.isfinite(v) else None) for k, v in self.ratios.items()}
        d["comparisons"] = [{"a": c.a, "b": c.b, "max_abs": c.max_abs, "max_rel": c.max_rel,
                             "passed": c.passed, "over_tolerance": c.over_tolerance,
                             "worst_index": list(c.worst_index) if c.worst_index else None,
                             "problem": c.problem} for c in self.comparisons]
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


@dataclass
class LayerReport:
    """Every aligned layer in forward order, the first over tolerance, and what ORT showed."""

    reference: str
    rows: list[LayerRow]
    tolerance: DepthTolerance
    first_divergence: str | None = None
    suspects: list[str] = field(default_factory=list)  # twin-less torch modules run just before it
    ort: dict[str, dict[str, Any]] = field(default_factory=dict)
    unmatched: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def first_row(self) -> LayerRow | None:
        return next((r for r in self.rows if not r.passed), None)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_row
        return {"reference": self.reference, "passed": self.passed, "first_divergence": self.first_divergence,
                "first_divergence_detail": first.to_dict() if first else None, "suspects": self.suspects,
                "tolerance": self.tolerance.describe(), "rows": [r.to_dict() for r in self.rows],
                "ort": self.ort, "unmatched": self.unmatched, "notes": self.notes}

    def format(self, limit: int = 40) -> str:
        """What `parity check` prints: the first ``limit`` rows (and the first failing one), the verdict, ORT."""
        head = (f"  {'#':>3}  {'layer':<52}{'kind':<18}{'max_abs':>10}{'rel_err':>10}{'atol':>10}{'rtol':>10}"
                f"{'|a-b|/tol':>11}  verdict")
        lines = [f"layer-by-layer (reference {self.reference}; {len(self.rows)} layers; {RULE})", head]
        first = self.first_row
        shown = [r for i, r in enumerate(self.rows) if i < limit or r is first]
        for r in shown:
            mark = "skip" if not r.depth else ("ok" if r.passed else "FAIL")
            lines.append(f"  {r.index:>3}  {r.layer[:51]:<52}{r.kind[:17]:<18}{r.max_abs:>10.2e}"
                         f"{r.relative_error:>10.2e}{r.atol:>10.2e}{r.rtol:>10.2e}{r.ratio:>11.3g}  {mark}")
        if len(self.rows) > len(shown):
            lines.append(f"  ... {len(self.rows) - len(shown)} more rows in the JSON")
        if first is not None:
            worst = max(first.comparisons, key=lambda c: c.max_abs if math.isfinite(c.max_abs) else math.inf)
            lines.append(f"FIRST LAYER OVER TOLERANCE: {first.layer} ({worst.a} vs {worst.b}: max |a-b| "
                         f"{worst.max_abs:.3g}, {first.relative_error:.3g} of the activation scale, atol "
                         f"{first.atol:.3g})")
            if self.suspects:
                lines.append(f"  ran just before it without a twin to compare: {', '.join(self.suspects)}")
        else:
            lines.append("every layer within tolerance")
        for label, info in self.ort.items():
            same = ("identical" if info["outputs_identical"]
                    else f"DIFFERENT (max {info['max_output_difference']:.3g})")
            lines.append(f"  {label}: {info['observed']} intermediate tensors; final outputs with the extra "
                         f"outputs {same} to the plain session")
        return "\n".join(lines)
