"""The harness checked against itself: the engine's median for a call against a minimal bare loop
around the very same call (docs/benchmarking.md, "measure the harness itself").

On the CPU the bare loop reads ``time.perf_counter`` around each call and its sync; on a GPU it can
time each call with CUDA events instead (``cuda_events``: torch's ``torch.cuda.Event``), which
count device time between two points of the stream rather than host time. Engine and bare loop
alternate over short rounds so drift on a shared machine falls on both; the ratio reported is the
median of the per-round ratios of medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from parity.bench.timing import measure

# The band the engine must stay in: it adds a closure call and a list append per run, so a
# ratio outside +-5% means it is timing itself, or the machine drifted during the check.
FIDELITY_BAND = (0.95, 1.05)
# Calls per round: about this long, so a burst of load covers both halves of a pair.
ROUND_S = 0.2


def bare_loop(call: Callable[[], Any], sync: Callable[[], Any], runs: int, cuda_events: Any = None) -> list[float]:
    """Per-call seconds of ``runs`` calls: perf_counter around call + sync, or CUDA events around the call."""
    times: list[float] = []
    if cuda_events is not None:
        for _ in range(runs):
            start, end = cuda_events(enable_timing=True), cuda_events(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)  # elapsed_time is in milliseconds
        return times
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def fidelity(call: Callable[[], Any], sync: Callable[[], Any], *, rounds: int = 5, round_s: float = ROUND_S,
             cuda_events: Any = None, warm_s: float = 0.2) -> dict[str, Any]:
    """Engine median / bare-loop median for one already-built call, as a dict with the verdict."""
    warm = measure(call, sync, budget_s=warm_s, min_runs=10)  # warms the shape, sets the runs per round
    runs = max(10, int(round_s / max(warm.stats.median_s, 1e-9)))
    ratios, engine_ms, bare_ms = [], [], []
    for r in range(rounds):
        first_bare = r % 2 == 1
        if first_bare:
            bare = statistics.median(bare_loop(call, sync, runs, cuda_events))
        engine = measure(call, sync, budget_s=0, min_runs=runs, warmup=0).stats.median_s
        if not first_bare:
            bare = statistics.median(bare_loop(call, sync, runs, cuda_events))
        ratios.append(engine / bare if bare > 0 else float("nan"))
        engine_ms.append(engine * 1e3)
        bare_ms.append(bare * 1e3)
    ratio = statistics.median(ratios)
    low, high = FIDELITY_BAND
    return {"ratio": ratio, "within_band": bool(low <= ratio <= high), "band": list(FIDELITY_BAND),
            "round_ratios": ratios, "engine_median_ms": engine_ms, "bare_median_ms": bare_ms,
            "runs_per_round": runs, "bare_clock": "CUDA events around the call" if cuda_events is not None
            else "time.perf_counter around call + sync"}


__all__ = ["FIDELITY_BAND", "bare_loop", "fidelity"]
