"""The table `parity sweep` prints: one row per cell, then the counts."""

from __future__ import annotations

from typing import Any


def format_summary(records: list[dict[str, Any]]) -> str:
    """Cell id, status, the deciding number (check: worst max_abs/atol; bench: fastest runtime),
    seconds, attempts, and the reason of an error or the failing comparisons."""
    width = max([len("cell"), *(len(r["id"]) for r in records)]) + 2
    rows = [f"{'cell':<{width}}{'status':<9}{'worst/atol':>11}{'seconds':>9}{'tries':>6}  note"]
    for r in records:
        worst = f"{r['worst']:.3g}" if isinstance(r.get("worst"), (int, float)) else "-"
        seconds = f"{r['seconds']:.1f}" if isinstance(r.get("seconds"), (int, float)) else "-"
        note = "resumed" if r.get("resumed") else ""
        if r["status"] == "error":
            note = r.get("reason", "")
        elif r.get("failures"):
            note = "; ".join(r["failures"])[:120]
        elif r.get("fastest"):
            note = f"fastest {r['fastest']}" + (" (resumed)" if r.get("resumed") else "")
        rows.append(f"{r['id']:<{width}}{r['status']:<9}{worst:>11}{seconds:>9}{r.get('attempts', 0):>6}  {note}")
    counts = {s: sum(r["status"] == s for r in records) for s in ("passed", "failed", "error")}
    resumed = sum(bool(r.get("resumed")) for r in records)
    rows.append(f"{len(records)} cell{'s' if len(records) != 1 else ''}: {counts['passed']} passed, {counts['failed']} failed, "
                f"{counts['error']} errors" + (f" ({resumed} resumed from earlier runs)" if resumed else ""))
    return "\n".join(rows)
