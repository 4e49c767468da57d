"""Timing statistics that know nothing of frameworks: ``measure`` runs a call until a
time budget *and* a minimum count are met, synchronising before every clock read, and
reports the first call apart from the steady state."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Clock = Callable[[], float]


@dataclass(frozen=True)
class Stats:
    """Summary of per-call durations in seconds."""

    count: int
    median_s: float
    p90_s: float
    p99_s: float
    min_s: float
    max_s: float
    mean_s: float
    stdev_s: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        """Statistics of ``samples``: percentiles interpolate linearly, stdev is the sample stdev."""
        if len(samples) == 0:
            raise ValueError("no samples to summarise")
        a = np.asarray(samples, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(count=int(a.size), median_s=float(p50), p90_s=float(p90), p99_s=float(p99),
                   min_s=float(a.min()), max_s=float(a.max()), mean_s=float(a.mean()),
                   stdev_s=float(a.std(ddof=1)) if a.size > 1 else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Measurement:
    """What ``measure`` saw: the first call apart, then the steady-state statistics."""

    first_call_s: float
    warmup_runs: int
    stats: Stats
    loop_s: float  # wall time of the timed loop, clock reads included
    samples: tuple[float, ...] = ()  # every timed call's duration, in order


def measure(fn: Callable[[], Any], sync: Callable[[], Any] | None = None, *, budget_s: float = 1.0,
            min_runs: int = 10, warmup: int = 3, warmup_s: float = 0.0, max_runs: int | None = None,
            clock: Clock = time.perf_counter) -> Measurement:
    """Time ``fn`` (then ``sync``) until ``budget_s`` has passed *and* ``min_runs`` calls were timed.

    The first call (compilation, autotuning, allocation) is timed on its own and kept out of
    the statistics; then ``warmup`` calls, continued until ``warmup_s`` has passed, are not
    timed. ``max_runs`` caps the timed calls (never below ``min_runs``). ``clock`` is
    injectable so tests can run on known durations.
    """
    _check_measure_args(budget_s, min_runs, warmup, warmup_s, max_runs)
    sync = sync or noop
    t0 = clock()
    fn()
    sync()
    first = clock() - t0
    warmed = _warm_up(fn, sync, warmup, warmup_s, clock)
    samples: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        fn()
        sync()
        t1 = clock()
        samples.append(t1 - t0)
        if len(samples) >= min_runs and (t1 - start >= budget_s or (max_runs and len(samples) >= max_runs)):
            break
    return Measurement(first_call_s=first, warmup_runs=warmed, stats=Stats.of(samples), loop_s=clock() - start,
                       samples=tuple(samples))


def measure_alternating(calls: Sequence[tuple[Callable[[], Any], Callable[[], Any] | None]], *,
                        budget_s: float = 1.0, min_runs: int = 10, warmup: int = 3, warmup_s: float = 0.0,
                        clock: Clock = time.perf_counter) -> list[Measurement]:
    """Time several ``(fn, sync)`` calls in turn, one timed call of each per round, as ``measure`` times one.

    Each first call is timed on its own and each call is warmed up as ``measure`` does; then rounds
    run, the order rotating by one each round (A B, B A, ...) so that neither always follows the
    other, until every call has ``min_runs`` samples and the rounds took ``budget_s`` per call. A
    load that comes and goes then falls on all of them alike, which is what a ratio of their
    medians needs. ``loop_s`` of each measurement is the wall time of all the rounds.
    """
    _check_measure_args(budget_s, min_runs, warmup, warmup_s, None)
    if not calls:
        raise ValueError("no calls to time")
    pairs = [(fn, sync or noop) for fn, sync in calls]
    firsts = []
    for fn, sync in pairs:
        t0 = clock()
        fn()
        sync()
        firsts.append(clock() - t0)
    warmed = [_warm_up(fn, sync, warmup, warmup_s, clock) for fn, sync in pairs]
    samples: list[list[float]] = [[] for _ in pairs]
    n, start, rounds = len(pairs), clock(), 0
    while True:
        for k in range(n):
            i = (rounds + k) % n
            fn, sync = pairs[i]
            t0 = clock()
            fn()
            sync()
            samples[i].append(clock() - t0)
        rounds += 1
        if rounds >= min_runs and clock() - start >= budget_s * n:
            break
    loop = clock() - start
    return [Measurement(first_call_s=firsts[i], warmup_runs=warmed[i], stats=Stats.of(samples[i]), loop_s=loop,
                        samples=tuple(samples[i])) for i in range(n)]


def _check_measure_args(budget_s: float, min_runs: int, warmup: int, warmup_s: float, max_runs: int | None) -> None:
    if budget_s < 0 or warmup_s < 0:
        raise ValueError(f"budgets must be >= 0 seconds, got budget_s={budget_s}, warmup_s={warmup_s}")
    if min_runs < 1 or warmup < 0:
        raise ValueError(f"need min_runs >= 1 and warmup >= 0, got {min_runs} and {warmup}")
    if max_runs is not None and max_runs < 1:
        raise ValueError(f"max_runs must be >= 1, got {max_runs}")


def _warm_up(fn: Callable[[], Any], sync: Callable[[], Any], runs: int, seconds: float, clock: Clock) -> int:
    start, done = clock(), 0
    while done < runs or (seconds > 0 and clock() - start < seconds):
        fn()
        sync()
        done += 1
    return done


def noop() -> None:
    """Nothing to wait for: the ``sync`` of work that is done when the call returns (CPU)."""
    return None
