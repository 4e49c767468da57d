"""`make bench`: CPU benchmarks of mlp and cnn, then the harness-fidelity check.

Harness fidelity: the engine's median for ONNX Runtime and torch eager must agree with
a minimal hand-written loop (time.perf_counter around the very same call, the same
number of runs) within a few percent; otherwise the harness is measuring itself. The
engine and the hand loop alternate over a few rounds so that drift on a shared machine
hits both; the ratio reported is the median over rounds. See docs/benchmarking.md.

Exit code: 0 when every cell that can run on a CPU machine was measured and every
fidelity ratio is inside its band; 1 otherwise, with the reasons printed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch  # noqa: E402, F401  (torch before TensorFlow, always)

import zoo  # noqa: E402
from parity.bench.engine import Bench, run_benchmark  # noqa: E402
from parity.bench.results import BenchConfig  # noqa: E402
from parity.bench.timing import measure  # noqa: E402
from parity.cli.bench import format_table, parse_batches, write_json  # noqa: E402

# The band of docs/benchmarking.md ("within a few percent"): the engine adds only a closure call
# and a list append per run, so anything beyond 5% means it is timing itself, or the
# machine drifted during the check (then the per-round ratios disagree with each other).
FIDELITY_TARGET = 0.05
# Calls per round: short enough that a burst of load from another process covers both
# halves of a pair, long enough (hundreds of calls for the models here) for a stable median.
ROUND_S = 0.2
# Runtimes that need a GPU: on this CPU-only run they are skipped with a reason, never run.
GPU_ONLY = ("ort-cuda", "ort-tensorrt")
# One thread by default: with two OpenMP threads on two cores, any other process turns
# torch's barriers into scheduler waits (10x slower calls, seen on the shared 2-core
# machine), which would swamp the few-percent harness effect this check is about.
FIDELITY_THREADS = 1


def hand_loop(call: Callable[[], Any], sync: Callable[[], Any], runs: int) -> tuple[float, float]:
    """The minimal loop: perf_counter around each call; returns (median per call, whole loop / runs)."""
    times = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    whole = (time.perf_counter() - start) / runs
    return statistics.median(times), whole


def fidelity(bench: Bench, runtime: str, batch: int, budget_s: float, rounds: int,
             round_s: float = ROUND_S) -> dict[str, Any]:
    """Engine median / hand-loop median for one case, over short rounds that alternate which goes first.

    A budgeted engine run warms the shape up and sets the runs per round (about ``round_s``
    of calls); in each round the engine (budget 0, ``min_runs`` = that number) and the hand
    loop time exactly as many calls, back to back, so load from other processes, which comes
    and goes over seconds, falls on both halves of a pair alike.
    """
    case = bench.case(runtime, batch)
    warm = measure(case.call, case.sync, budget_s=budget_s, min_runs=10)
    runs = max(10, int(round_s / max(warm.stats.median_s, 1e-9)))
    ratios, engine_medians, hand_medians = [], [], []
    for r in range(rounds):
        if r % 2:
            hand, _ = hand_loop(case.call, case.sync, runs)
            engine = measure(case.call, case.sync, budget_s=0, min_runs=runs, warmup=0).stats.median_s
        else:
            engine = measure(case.call, case.sync, budget_s=0, min_runs=runs, warmup=0).stats.median_s
            hand, _ = hand_loop(case.call, case.sync, runs)
        engine_medians.append(engine)
        hand_medians.append(hand)
        ratios.append(engine / hand)
    return {"model": bench.spec.name, "runtime": runtime, "batch": batch, "runs": runs, "rounds": rounds,
            "engine_median_s": statistics.median(engine_medians), "hand_median_s": statistics.median(hand_medians),
            "ratio": statistics.median(ratios), "round_ratios": ratios}


def run_fidelity(models: Sequence[str], batches: Sequence[int], budget_s: float, rounds: int,
                 threads: int) -> list[dict[str, Any]]:
    results = []
    for name in models:
        config = BenchConfig(batches=tuple(batches), device="cpu", runtimes=("torch-eager", "ort-cpu"),
                             threads=threads, budget_s=budget_s, probe_peak=False)
        with Bench(zoo.get(name), config) as bench:
            for runtime in ("torch-eager", "ort-cpu"):
                for batch in batches:
                    _say(f"fidelity {name} {runtime} batch={batch} ...")
                    results.append(fidelity(bench, runtime, batch, budget_s, rounds))
    return results


def format_fidelity(results: Sequence[dict[str, Any]], threads: int) -> str:
    lines = [f"harness fidelity: engine median / minimal hand-loop median (same call, same runs per round, "
             f"{threads} thread(s); median over alternating rounds; target within {FIDELITY_TARGET:.0%})",
             f"{'model':6} {'runtime':12} {'batch':>5} {'runs':>7} {'engine ms':>10} {'hand ms':>10} "
             f"{'ratio':>7}  verdict   per-round ratios"]
    for r in results:
        ok = abs(r["ratio"] - 1) <= FIDELITY_TARGET
        rounds = " ".join(f"{x:.3f}" for x in r["round_ratios"])
        lines.append(f"{r['model']:6} {r['runtime']:12} {r['batch']:>5} {r['runs']:>7} "
                     f"{r['engine_median_s'] * 1e3:>10.4g} {r['hand_median_s'] * 1e3:>10.4g} {r['ratio']:>7.3f}  "
                     f"{'ok' if ok else 'OUTSIDE':8}  {rounds}")
    return "\n".join(lines)


def cell_problems(result: dict[str, Any]) -> list[str]:
    """Every cell of a CPU run that should have been measured and was not, with its reason."""
    out = []
    for c in result["cells"]:
        if c["status"] == "ok" or (c["status"] == "skipped" and c["runtime"] in GPU_ONLY):
            continue
        out.append(f"{result['model']} {result['task']} {c['runtime']} batch={c['batch']}: "
                   f"{c['status']}: {c['reason']}")
    return out


def fidelity_problems(results: Sequence[dict[str, Any]]) -> list[str]:
    """Every fidelity ratio outside 1 +- FIDELITY_TARGET."""
    return [f"fidelity {r['model']} {r['runtime']} batch={r['batch']}: engine/hand-loop median ratio "
            f"{r['ratio']:.3f} is outside 1 +- {FIDELITY_TARGET:.0%} (per round: "
            f"{' '.join(f'{x:.3f}' for x in r['round_ratios'])})"
            for r in results if abs(r["ratio"] - 1) > FIDELITY_TARGET]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--batch", default="1,8,32")
    p.add_argument("--train-batch", default="8,32")
    p.add_argument("--budget", type=float, default=1.0, help="seconds per cell")
    p.add_argument("--rounds", type=int, default=9, help="alternating rounds of the fidelity check")
    p.add_argument("--fidelity-threads", type=int, default=FIDELITY_THREADS,
                   help="threads for the fidelity check (default: 1, see FIDELITY_THREADS)")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--fidelity-only", action="store_true")
    p.add_argument("--json-dir", type=Path, default=None, help="also write one JSON per run here")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    problems: list[str] = []
    if not args.fidelity_only:
        for name in models:
            tasks = [(False, parse_batches(args.batch))] + ([] if args.no_train else [(True, parse_batches(args.train_batch))])
            for train, batches in tasks:
                config = BenchConfig(batches=batches, train=train, device="cpu", budget_s=args.budget)
                result = run_benchmark(zoo.get(name), config, progress=_say).to_dict()
                print(format_table(result), end="\n\n", flush=True)
                problems += cell_problems(result)
                if args.json_dir is not None:
                    args.json_dir.mkdir(parents=True, exist_ok=True)
                    write_json(args.json_dir / f"bench_{name}_{result['task']}.json", result)
    results = run_fidelity(models, (1, 32), args.budget, args.rounds, args.fidelity_threads)
    print(format_fidelity(results, args.fidelity_threads), flush=True)
    problems += fidelity_problems(results)
    if problems:
        print(f"\nmake bench: FAILED, {len(problems)} problem(s):", flush=True)
        for line in problems:
            print(f"  {line}", flush=True)
        return 1
    print("\nmake bench: every CPU cell measured, every fidelity ratio inside its band", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
