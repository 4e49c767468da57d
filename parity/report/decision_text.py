"""The decision summary in plain sentences, each backed by a number of the summary's JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_FRAMEWORKS = {"torch": "PyTorch", "tf": "TensorFlow", "ort": "ONNX Runtime"}


def sentences(summary: Mapping[str, Any], result: Mapping[str, Any]) -> list[str]:
    """What to use here, batch by batch, then memory, parity and what was not measured."""
    where = f"{result.get('model', '?')} {summary['task']} on {summary['device']}"
    pct = f"{summary['confidence']:.0%}"
    out = [_batch_sentence(g, pct) for g in summary["groups"]]
    out += [_generated_sentence(row, pct) for row in summary.get("generated", [])]
    out.append(_overall(where, summary["groups"]))
    out.append(_memory_sentence(summary["groups"]))
    out.append(_parity_sentence(summary))
    out.extend(_missing_sentences(summary, result))
    load = summary.get("host_load")
    if load and load["busiest"] > load["cores"]:
        out.insert(0, f"Caution: the host's load average reached {load['busiest']} on {load['cores']} cores during "
                      "this run; these timings include other processes' work, so rerun on a quiet machine before "
                      "relying on the ratios below.")
    return [s for s in out if s]


def _batch_sentence(group: Mapping[str, Any], pct: str) -> str:
    head = f"batch {group['batch']}: "
    if group["fastest"] is None:
        return head + "no runtime was measured."
    others = group["others"]
    if not others:
        return head + f"only {group['fastest']} was measured; nothing to compare it with."
    if group["tied_with"]:
        tied = [group["fastest"], *group["tied_with"]]
        worst = max((o for o in others if o["tied"]), key=lambda o: o["speedup_interval"][1])
        return (head + f"{_join(tied)} are tied (their {pct} intervals of the median overlap; "
                f"{group['fastest']} vs {worst['runtime']}: {_ratio(worst, pct)}); no recommendation between them.")
    runner = others[0]
    text = head + f"{group['fastest']} is fastest, {_ratio(runner, pct)} faster than the runner-up {runner['runtime']}"
    if len(others) > 1:
        text += f" and {_x(others[-1]['speedup'])} faster than {others[-1]['runtime']}"
    return text + "; " + _first_call(group["fastest"], runner) + "."


def _generated_sentence(row: Mapping[str, Any], pct: str) -> str:
    """One generated twin against the hand-written twin at one batch and runtime (``decision.generated_ratios``)."""
    head = f"batch {row['batch']}, {row['runtime']}: generated / hand-written latency: "
    if row["ratio"] is None:
        return head + f"not compared ({row.get('not_measured')} was not measured)."
    low, high = row["interval"]
    return head + f"{row['ratio']:.2f} ({pct} interval {low:.2f}-{high:.2f})."


def _first_call(fastest: str, runner: Mapping[str, Any]) -> str:
    extra, calls = runner["first_call_extra_s"], runner["break_even_calls"]
    if extra is None:
        return "first-call cost not recorded"
    if extra <= 0:
        return f"its first call is also {_ms(-extra)} cheaper than {runner['runtime']}'s"
    if calls is None:
        return f"its first call costs {_ms(extra)} more and is never repaid"
    return f"its first call costs {_ms(extra)} more than {runner['runtime']}'s, repaid after {calls:,} calls"


def _overall(where: str, groups: Sequence[Mapping[str, Any]]) -> str:
    winners = {g["batch"]: g["winner"] for g in groups if g["fastest"] is not None}
    if not winners:
        return f"Which to use for {where}: nothing was measured."
    names = set(winners.values())
    if len(names) == 1 and None not in names:
        name = names.pop()
        return (f"Which to use for {where}: {name}, the fastest at every measured batch size "
                f"({', '.join(map(str, winners))}) with non-overlapping intervals.")
    parts = [f"batch {b}: {w or 'tied'}" for b, w in winners.items()]
    return f"Which to use for {where}: it depends on the batch size ({'; '.join(parts)})."


def _memory_sentence(groups: Sequence[Mapping[str, Any]]) -> str:
    for g in reversed(groups):  # the largest batch with comparable numbers
        comparable = g["memory"]["comparable"]
        if len(comparable) > 1:
            parts = ", ".join(f"{r} {b / 2**20:,.1f} MB" for r, b in sorted(comparable.items(), key=lambda kv: kv[1]))
            fresh = any(v["source"].startswith("fresh process") for v in g["memory"]["per_runtime"].values())
            how = "each runtime alone in a fresh process, above its imports" if fresh else "each framework's own allocator"
            return f"Peak memory at batch {g['batch']} ({how}): {parts}."
    return ("Memory was not compared: on CPU the only figure is the process's peak RSS, which holds every "
            "framework loaded into the one bench process (see each cell's memory_source).")


def _parity_sentence(summary: Mapping[str, Any]) -> str:
    if summary.get("parity_source") is None:
        return ("Parity between these runtimes was not verified by this run; `parity check MODEL` verifies it, "
                "and `parity report CHECK.json BENCH.json` joins both.")
    for g in summary["groups"]:
        if g["others"]:
            p = g["others"][0]["parity"]
            state = "verified" if p["verified"] else "NOT verified"
            err = f", max |a-b| {p['max_abs']:.2e}" if p.get("max_abs") is not None else ""
            return (f"Parity of {g['fastest']} and {g['others'][0]['runtime']}: {state} by "
                    f"{summary['parity_source']} ({p['how']}{err}).")
    return ""


def _missing_sentences(summary: Mapping[str, Any], result: Mapping[str, Any]) -> list[str]:
    out = []
    by_reason: dict[str, list[str]] = {}
    for m in summary["not_measured"]:
        by_reason.setdefault(f"{m['status']}: {m['reason']}", []).append(m["runtime"])
    for reason, runtimes in by_reason.items():
        out.append(f"Not measured: {_join(runtimes)} ({reason}).")
    measured = {c["runtime"].split("-")[0] for c in result.get("cells", []) if c.get("status") == "ok"}
    if summary["device"] == "cpu":
        out.append("GPU was not measured: this run's device was cpu; rerun with --device cuda on a GPU machine.")
    for key, name in _FRAMEWORKS.items():
        if key not in measured and not any(m["runtime"].startswith(key + "-") for m in summary["not_measured"]):
            out.append(f"{name} was not benchmarked in this run (not among the selected runtimes).")
    return out


def format_decision(summary: Mapping[str, Any]) -> str:
    """The decision summary as the terminal prints it after the bench table."""
    lines = [f"decision ({summary['task']} on {summary['device']}; {summary['confidence']:.0%} bootstrap intervals, "
             "overlapping = tied):"]
    lines += [f"  {s}" for s in summary["sentences"]]
    return "\n".join(lines)


def _ratio(other: Mapping[str, Any], pct: str) -> str:
    low, high = other["speedup_interval"]
    return f"{_x(other['speedup'])} ({pct} interval {low:.3g}-{high:.3g}x)"


def _x(value: float | None) -> str:
    if value is None:
        return "?x"
    return f"{value:,.0f}x" if value >= 1000 else f"{value:.3g}x"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.4g} ms"


def _join(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


__all__ = ["format_decision", "sentences"]
