"""Compare two saved results (``parity check --json`` or ``parity bench --json``), cell by cell.

Bench cells are matched by (device, task, runtime, batch): a median that grew past
``max_slowdown`` *and* whose bootstrap interval of the ratio lies wholly above 1 (the slowdown
is not run-to-run noise) is a regression, as is a cell that was measured and now fails.
Check errors are matched by comparison, layer name, parameter name and optimizer: an error
that grew past ``max_error_growth`` is a regression, as is a verdict that went from ok to FAIL.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.errors import UsageError

# Errors below this fraction of their tolerance are float32 round-off: 1e-8 growing to 1e-7 is
# not a regression, so each error is measured against max(old error, NOISE_FLOOR x atol).
NOISE_FLOOR = 1e-3
RESAMPLES = 1000


@dataclass(frozen=True)
class Change:
    """One matched cell: its name, the old and new value, their ratio, and the verdict."""

    cell: str
    old: float | None
    new: float | None
    ratio: float | None
    regression: bool
    detail: str = ""

    def line(self) -> str:
        mark = "REGRESSION" if self.regression else "ok        " if self.ratio is not None else "note      "
        ratio = f"{self.ratio:.3g}x" if self.ratio is not None else "-"
        return f"  {mark}  {self.cell}: {_num(self.old)} -> {_num(self.new)} ({ratio}){' ' + self.detail if self.detail else ''}"


def kind_of(data: Mapping[str, Any]) -> str:
    """'bench' or 'check' (also a `check --all` file); a UsageError for anything else."""
    if "cells" in data:
        return "bench"
    if "comparisons" in data or "results" in data:
        return "check"
    raise UsageError(f"not a parity result: expected `parity check --json` or `parity bench --json` output, "
                     f"got a JSON object with keys {sorted(data)[:8]}")


def diff(a: Mapping[str, Any], b: Mapping[str, Any], *, max_slowdown: float = 1.10,
         max_error_growth: float = 10.0) -> list[Change]:
    """Every matched cell of ``a`` (before) and ``b`` (after), regressions flagged."""
    ka, kb = kind_of(a), kind_of(b)
    if ka != kb:
        raise UsageError(f"cannot compare a {ka} result with a {kb} result; give two of the same kind")
    if ka == "bench":
        return list(_bench(a, b, max_slowdown))
    return list(_checks(a, b, max_error_growth))


# ---------------------------------------------------------------- bench


def _bench(a: Mapping[str, Any], b: Mapping[str, Any], limit: float) -> Iterator[Change]:
    old, new = _cells(a), _cells(b)
    rng = np.random.default_rng(0)
    for key in sorted(old.keys() & new.keys()):  # sorted: the seeded resampling visits cells in one order
        ca, cb = old[key], new[key]
        name = " ".join(map(str, key[:3])) + f" batch {key[3]}"
        if ca.get("status") == "ok" and cb.get("status") != "ok":
            yield Change(name, ca["stats"]["median_s"], None, None, cb.get("status") == "failed",
                         f"now {cb.get('status')}: {cb.get('reason', '')}")
            continue
        if ca.get("status") != "ok" or cb.get("status") != "ok":
            continue
        ma, mb = ca["stats"]["median_s"], cb["stats"]["median_s"]
        ratio = mb / ma if ma > 0 else math.inf
        low, high = _ratio_interval(ca, cb, rng)
        slower = ratio > limit and (low is None or low > 1.0)
        detail = f"median s, 95% interval {low:.3g}-{high:.3g}x" if low is not None else "median s"
        if slower:
            detail += f"; slower than --max-slowdown {limit:g}"
        elif ratio > limit:
            detail += f"; over --max-slowdown {limit:g} but within run-to-run noise (the interval reaches 1)"
        yield Change(name, ma, mb, ratio, slower, detail)
    for key in sorted(old.keys() ^ new.keys(), key=str):
        yield Change(" ".join(map(str, key[:3])) + f" batch {key[3]}", None, None, None, False,
                     "only in " + ("the first" if key in old else "the second") + " result")


def _cells(data: Mapping[str, Any]) -> dict[tuple[str, str, str, int], Mapping[str, Any]]:
    device = str(data.get("config", {}).get("device_resolved", "?"))
    return {(device, str(c.get("task", data.get("task"))), c["runtime"], int(c["batch"])): c
            for c in data.get("cells", [])}


def _ratio_interval(ca: Mapping[str, Any], cb: Mapping[str, Any],
                    rng: np.random.Generator) -> tuple[float | None, float | None]:
    sa, sb = (np.asarray(c.get("samples_s") or [], dtype=np.float64) for c in (ca, cb))
    if sa.size < 2 or sb.size < 2:
        return None, None
    ma = np.median(sa[rng.integers(0, sa.size, (RESAMPLES, sa.size))], axis=1)
    mb = np.median(sb[rng.integers(0, sb.size, (RESAMPLES, sb.size))], axis=1)
    low, high = np.percentile(mb / ma, [2.5, 97.5])
    return float(low), float(high)


# ---------------------------------------------------------------- check


def _checks(a: Mapping[str, Any], b: Mapping[str, Any], limit: float) -> Iterator[Change]:
    old, new = _results(a), _results(b)
    for key in sorted(old.keys() & new.keys()):
        ea, eb = _errors(old[key]), _errors(new[key])
        prefix = f"{key[0]} --from {key[1]}"
        for name in sorted(ea.keys() & eb.keys()):
            (va, atol, pa), (vb, _, pb) = ea[name], eb[name]
            floor = NOISE_FLOOR * atol if atol else 0.0
            base = max(va, floor)
            ratio = vb / base if base > 0 else (math.inf if vb > 0 else 1.0)
            failed = pa and not pb
            grew = ratio > limit
            detail = "max |a-b|" + ("; now FAILS" if failed else "") + (
                f"; grew past --max-error-growth {limit:g}" if grew else "")
            yield Change(f"{prefix} {name}", va, vb, ratio, failed or grew, detail)
        for name in sorted(ea.keys() ^ eb.keys()):
            yield Change(f"{prefix} {name}", None, None, None, False,
                         "only in " + ("the first" if name in ea else "the second") + " result")


def _results(data: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    items = data.get("results") if "results" in data else [data]
    return {(str(r.get("model")), str(r.get("source"))): r for r in items or []}


def _errors(check: Mapping[str, Any]) -> dict[str, tuple[float, float, bool]]:
    """Every error the check measured: name -> (max |a-b|, its atol, passed)."""
    out: dict[str, tuple[float, float, bool]] = {}
    for c in check.get("comparisons", []):
        out[f"output {c['output']} {c['a']} vs {c['b']}"] = (_f(c.get("max_abs")), _f(c.get("atol")), bool(c.get("passed")))
    for row in (check.get("layers") or {}).get("rows", []):
        out[f"layer {row['layer']}"] = (_f(row.get("max_abs")), _f(row.get("atol")), bool(row.get("passed")))
    for p in (check.get("gradients") or {}).get("parameters", []):
        out[f"gradient {p['name']}"] = (_f(p.get("max_abs")), _f(p.get("atol")), bool(p.get("passed")))
    for opt, run in ((check.get("training") or {}).get("runs") or {}).items():
        losses = run.get("losses", [])
        if losses:
            worst = max(losses, key=lambda s: _f(s.get("abs_diff")))
            out[f"training {opt} loss gap"] = (_f(worst.get("abs_diff")), _f(worst.get("atol")),
                                               all(s.get("passed") for s in losses))
    return out


def _f(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def load_warnings(*results: Mapping[str, Any]) -> list[str]:
    """A line per bench result whose host load exceeded its cores: its timings include other processes."""
    out = []
    for name, data in zip(("first", "second"), results, strict=False):
        load = data.get("load_average_1min") or {}
        cores = ((data.get("environment") or {}).get("cpu") or {}).get("usable_cores") or 0
        busiest = max((v for v in (load.get("start"), load.get("end")) if v is not None), default=None)
        if "cells" in data and busiest is not None and cores and busiest > cores:
            out.append(f"  note: the {name} run saw host load {busiest} on {cores} cores; its timings include "
                       "other processes' work")
    return out


def format_diff(changes: list[Change], *, only_regressions: bool = False) -> str:
    """The report `parity diff` prints: regressions first, then the other matched cells."""
    rows = sorted(changes, key=lambda c: (not c.regression, c.cell))
    shown = [c for c in rows if c.regression] if only_regressions else rows
    n = sum(c.regression for c in changes)
    tail = f"{n} regression{'s' if n != 1 else ''} in {len(changes)} compared cells"
    return "\n".join([*(c.line() for c in shown), tail])


__all__ = ["NOISE_FLOOR", "Change", "diff", "format_diff", "kind_of", "load_warnings"]
