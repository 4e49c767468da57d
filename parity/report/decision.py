"""The decision summary of a benchmark: per batch size, which runtime is fastest, by how much, and
how sure we are; first-call cost and the calls it takes to repay it; memory; what was not measured.

Works on ``BenchResult.to_dict()`` (the JSON of ``parity bench``), numpy only. Speed-ups carry a
95% interval from a seeded bootstrap over the per-run samples each cell keeps (``samples_s``);
results saved without samples fall back to the [min, p90] range of each cell, which is wider.
Two runtimes whose intervals of the median overlap are *tied*: no recommendation is made
between them. Parity between two runtimes is only stated when a check result is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from parity.report.decision_text import sentences

CONFIDENCE = 0.95
RESAMPLES = 1000  # bootstrap resamples: the interval's ends move by < 1% between seeds at this count
METHOD = (f"{CONFIDENCE:.0%} intervals from {RESAMPLES} bootstrap resamples of each cell's per-run samples "
          "(median per resample; speed-up = other's median / fastest's median, resampled independently); "
          "without samples: the [min, p90] range of each cell. Overlapping intervals of the median are a tie.")


def decide(result: Mapping[str, Any], check: Mapping[str, Any] | None = None, *, seed: int = 0) -> dict[str, Any]:
    """The decision summary of one bench result (optionally with the parity a check measured)."""
    if check is not None and check.get("model") != result.get("model"):
        check = None  # another model's check says nothing of this one's runtimes
    config = result.get("config", {})
    device, task = str(config.get("device_resolved", "?")), str(result.get("task", "?"))
    cells = list(result.get("cells", []))
    batches = sorted({int(c["batch"]) for c in cells})
    groups = [_group(device, task, b, [c for c in cells if int(c["batch"]) == b], check, seed + i)
              for i, b in enumerate(batches)]
    missing = _not_measured(cells)
    summary: dict[str, Any] = {"device": device, "task": task, "method": METHOD, "confidence": CONFIDENCE,
                               "groups": groups, "not_measured": missing,
                               "parity_source": _parity_source(check), "host_load": _host_load(result),
                               "generated": generated_ratios(cells, seed=seed)}
    summary["sentences"] = sentences(summary, result)
    return summary


# ---------------------------------------------------------------- one batch size


def _group(device: str, task: str, batch: int, cells: Sequence[Mapping[str, Any]],
           check: Mapping[str, Any] | None, seed: int) -> dict[str, Any]:
    ok = sorted((c for c in cells if c.get("status") == "ok" and c.get("stats")),
                key=lambda c: c["stats"]["median_s"])
    group: dict[str, Any] = {"device": device, "task": task, "batch": batch, "fastest": None, "winner": None,
                             "tied_with": [], "others": [], "memory": _memory(ok),
                             "not_measured": [{"runtime": c["runtime"], "status": c.get("status"),
                                               "reason": c.get("reason", "")} for c in cells if c not in ok]}
    if not ok:
        return group
    rng = np.random.default_rng(seed)
    boots = {c["runtime"]: _boot_medians(c, rng) for c in ok}
    fastest = ok[0]
    group["fastest"] = fastest["runtime"]
    group["fastest_median_s"] = fastest["stats"]["median_s"]
    group["fastest_interval_s"] = _median_interval(fastest, boots[fastest["runtime"]])
    for other in ok[1:]:
        group["others"].append(_versus(fastest, other, boots, check))
    group["tied_with"] = [o["runtime"] for o in group["others"] if o["tied"]]
    group["winner"] = None if group["tied_with"] else fastest["runtime"]
    return group


def _versus(fastest: Mapping[str, Any], other: Mapping[str, Any], boots: Mapping[str, np.ndarray | None],
            check: Mapping[str, Any] | None) -> dict[str, Any]:
    """How ``fastest`` compares with ``other``: speed-up and interval, tie, first-call cost, parity."""
    f_med, o_med = fastest["stats"]["median_s"], other["stats"]["median_s"]
    fb, ob = boots[fastest["runtime"]], boots[other["runtime"]]
    if fb is not None and ob is not None:
        ratios = ob / fb
        half = (1 - CONFIDENCE) / 2 * 100
        low, high = (float(v) for v in np.percentile(ratios, [half, 100 - half]))
        fi, oi = _median_interval(fastest, fb), _median_interval(other, ob)
        source = "bootstrap"
    else:  # no samples saved: the cells' [min, p90] ranges
        fi, oi = _range(fastest), _range(other)
        low, high = oi[0] / fi[1], oi[1] / fi[0]
        source = "min-p90 range"
    tied = oi[0] <= fi[1]  # the other's interval starts before the fastest's ends: they overlap
    extra = _first_call_extra(fastest, other)
    saving = o_med - f_med
    return {
        "runtime": other["runtime"], "median_s": o_med, "interval_s": oi, "speedup": o_med / f_med if f_med > 0 else None,
        "speedup_interval": [low, high], "interval_source": source, "tied": bool(tied),
        "first_call_extra_s": extra, "saving_per_call_s": saving,
        "break_even_calls": _break_even(extra, saving), "parity": parity_between(fastest["runtime"], other["runtime"], check),
    }


def _boot_medians(cell: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray | None:
    samples = np.asarray(cell.get("samples_s") or [], dtype=np.float64)
    if samples.size < 2:
        return None
    idx = rng.integers(0, samples.size, size=(RESAMPLES, samples.size))
    return np.median(samples[idx], axis=1)


def _median_interval(cell: Mapping[str, Any], boot: np.ndarray | None) -> list[float]:
    if boot is None:
        return _range(cell)
    half = (1 - CONFIDENCE) / 2 * 100
    return [float(v) for v in np.percentile(boot, [half, 100 - half])]


def _range(cell: Mapping[str, Any]) -> list[float]:
    stats = cell["stats"]
    return [float(stats["min_s"]), float(stats["p90_s"])]


def _first_call_extra(fastest: Mapping[str, Any], other: Mapping[str, Any]) -> float | None:
    """Seconds the fastest's first call costs beyond the other's first call (negative: it is cheaper)."""
    a, b = fastest.get("first_call_s"), other.get("first_call_s")
    return None if a is None or b is None else float(a) - float(b)


def _break_even(extra: float | None, saving: float) -> int | None:
    """Calls after which the faster runtime has repaid its dearer first call (0: cheaper from the start)."""
    if extra is None:
        return None
    if extra <= 0:
        return 0
    if saving <= 0:
        return None
    return math.ceil(extra / saving)


def _memory(ok: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rows = {c["runtime"]: {"peak_bytes": c.get("peak_memory_bytes"), "source": c.get("memory_source", ""),
                           "comparable": bool(c.get("memory_comparable"))} for c in ok}
    comparable = {r: v["peak_bytes"] for r, v in rows.items() if v["comparable"] and v["peak_bytes"] is not None}
    return {"per_runtime": rows, "comparable": comparable,
            "smallest": min(comparable, key=comparable.__getitem__) if len(comparable) > 1 else None}


def _not_measured(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Runtimes with no measured cell, once each, with the first reason given."""
    measured = {c["runtime"] for c in cells if c.get("status") == "ok"}
    out: dict[str, dict[str, Any]] = {}
    for c in cells:
        if c["runtime"] not in measured and c["runtime"] not in out:
            out[c["runtime"]] = {"runtime": c["runtime"], "status": c.get("status"), "reason": c.get("reason", "")}
    return list(out.values())


# ---------------------------------------------------------------- generated twin vs hand-written twin

GENERATED_SUFFIX = " (generated)"  # the label parity.bench.generated gives a generated twin's cells


def generated_ratios(cells: Sequence[Mapping[str, Any]], *, seed: int = 0) -> list[dict[str, Any]]:
    """Per generated cell (``'<runtime> (generated)'``): its median / the hand-written ``<runtime>``'s at the
    same batch, with the 95% interval of that ratio. Cells timed in turn (``parity.bench.generated``) are
    resampled by round, both cells with the same rounds; others independently, as ``_versus`` does."""
    ok = {(c["runtime"], int(c["batch"])): c for c in cells if c.get("status") == "ok" and c.get("stats")}
    out = []
    for c in sorted((c for c in cells if c["runtime"].endswith(GENERATED_SUFFIX)),
                    key=lambda c: (int(c["batch"]), c["runtime"])):
        runtime, batch = c["runtime"][: -len(GENERATED_SUFFIX)], int(c["batch"])
        row: dict[str, Any] = {"runtime": runtime, "batch": batch, "folder": (c.get("settings") or {}).get("generated"),
                               "ratio": None, "interval": None, "interval_source": None}
        gen, hand = ok.get((c["runtime"], batch)), ok.get((runtime, batch))
        if gen is None or hand is None:
            row["not_measured"] = c["runtime"] if gen is None else runtime
            out.append(row)
            continue
        g_med, h_med = gen["stats"]["median_s"], hand["stats"]["median_s"]
        rng = np.random.default_rng(seed)
        alternated = (gen.get("settings") or {}).get("alternated_with") == runtime
        g_s, h_s = (np.asarray(c.get("samples_s") or [], dtype=np.float64) for c in (gen, hand))
        half = (1 - CONFIDENCE) / 2 * 100
        if alternated and g_s.size == h_s.size >= 2:  # sample k of each was timed in the same round
            idx = rng.integers(0, g_s.size, size=(RESAMPLES, g_s.size))  # rounds resampled: the load they shared stays paired
            ratios = np.median(g_s[idx], axis=1) / np.median(h_s[idx], axis=1)
            interval, source = [float(v) for v in np.percentile(ratios, [half, 100 - half])], "paired bootstrap"
        elif (gb := _boot_medians(gen, rng)) is not None and (hb := _boot_medians(hand, rng)) is not None:
            interval, source = [float(v) for v in np.percentile(gb / hb, [half, 100 - half])], "bootstrap"
        else:  # no samples saved: the cells' [min, p90] ranges
            (g_lo, g_hi), (h_lo, h_hi) = _range(gen), _range(hand)
            interval, source = [g_lo / h_hi, g_hi / h_lo], "min-p90 range"
        row.update(ratio=g_med / h_med if h_med > 0 else None, interval=interval, interval_source=source,
                   generated_median_s=g_med, hand_written_median_s=h_med, alternated=alternated)
        out.append(row)
    return out


# ---------------------------------------------------------------- parity between two runtimes

# Which check runtime stands for a bench runtime: the bench runs ONNX Runtime on the torch export.
_CHECK_RUNTIME = {"torch": "torch", "tf": "tf", "ort": "ort-torch"}


def parity_between(a: str, b: str, check: Mapping[str, Any] | None) -> dict[str, Any]:
    """Whether a check verified runtimes ``a`` and ``b`` agree, and the largest |a-b| it bounds."""
    if check is None:
        return {"verified": False, "max_abs": None, "how": "no check result given"}
    ca, cb = (_CHECK_RUNTIME.get(r.split("-")[0], r) for r in (a, b))
    compiled = [r for r in (a, b) if r.split("-", 1)[-1] in ("compile", "function", "xla")]
    note = f"; {', '.join(compiled)} not run by the check (its eager form was)" if compiled else ""
    if ca == cb:
        return {"verified": False, "max_abs": None, "how": f"same framework ({ca}); the check compares frameworks"}
    errors = _errors_against_source(check)
    source = str(check.get("source", "torch"))
    if source in (ca, cb):
        other = cb if ca == source else ca
        if other not in errors:
            return {"verified": False, "max_abs": None, "how": f"the check has no {other} vs {source} comparison"}
        max_abs, passed = errors[other]
        return {"verified": passed, "max_abs": max_abs, "how": f"check: {other} vs {source}{note}"}
    if ca in errors and cb in errors:  # both against the source: |a-b| <= |a-s| + |s-b|
        (ea, pa), (eb, pb) = errors[ca], errors[cb]
        return {"verified": pa and pb, "max_abs": ea + eb,
                "how": f"bound through the source: |{ca}-{source}| + |{cb}-{source}|{note}"}
    return {"verified": False, "max_abs": None, "how": f"the check does not cover {ca} and {cb}"}


def _errors_against_source(check: Mapping[str, Any]) -> dict[str, tuple[float, bool]]:
    """Check runtime -> (largest max_abs over its outputs, all passed)."""
    out: dict[str, tuple[float, bool]] = {}
    for c in check.get("comparisons", []):
        value = c.get("max_abs")
        value = math.inf if value is None or isinstance(value, str) else float(value)
        prev = out.get(c["a"], (0.0, True))
        out[c["a"]] = (max(prev[0], value), prev[1] and bool(c.get("passed")))
    return out


def _host_load(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The busiest 1-minute load average seen by the run, and the cores it had; None if unknown."""
    load = result.get("load_average_1min") or {}
    cores = ((result.get("environment") or {}).get("cpu") or {}).get("usable_cores")
    values = [v for v in (load.get("start"), load.get("end")) if v is not None]
    return {"busiest": max(values), "cores": cores} if values and cores else None


def _parity_source(check: Mapping[str, Any] | None) -> str | None:
    if check is None:
        return None
    return f"parity check {check.get('model')} ({check.get('preset')}), {check.get('source')} -> {check.get('target')}"


__all__ = ["CONFIDENCE", "GENERATED_SUFFIX", "METHOD", "RESAMPLES", "decide", "generated_ratios", "parity_between"]
