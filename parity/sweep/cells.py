"""What one cell does inside its worker process: call the existing check or bench engine.

``execute_cell`` is the default body of every Ray task (``parity.sweep.runner``). It
returns plain JSON types: the verdict, the full result (``CheckResult.to_dict`` or
``BenchResult.to_dict``) and a few numbers for the summary table. A cell whose check
fails parity is a result ("failed"), not a crash; exceptions propagate so that the
runner can retry the cell and then record it as an error.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from parity.sweep.matrix import SweepCell


def execute_cell(cell: SweepCell) -> dict[str, Any]:
    """Run ``cell`` in this process and return its outcome (``status`` is 'passed' or 'failed')."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    outcome = run_check_cell(cell) if cell.kind == "check" else run_bench_cell(cell)
    outcome.update(seconds=time.perf_counter() - start, host=socket.gethostname(), pid=os.getpid())
    return outcome


def run_check_cell(cell: SweepCell) -> dict[str, Any]:
    """``parity check`` of one zoo model in one direction (``parity.check.run_check``)."""
    from parity.check import CheckOptions, run_check

    options = CheckOptions(model=cell.model, source=cell.source, preset=cell.preset, batch=cell.batch,
                           seed=cell.seed, exporter=cell.exporter, device=cell.device, precision=cell.precision,
                           layers=cell.layers, grads=cell.grads, train_steps=cell.train_steps)
    result = run_check(options, progress=lambda _msg: None)
    ratios = [c.max_abs / c.atol if c.atol > 0 else float("inf") for c in result.comparisons]
    return {"status": "passed" if result.passed else "failed",
            "worst": max(ratios, default=0.0),  # the largest max_abs / atol over every comparison
            "failures": [f"{c.a} vs {c.b} {c.output}" for c in result.failures],
            "result": result.to_dict()}


def run_bench_cell(cell: SweepCell) -> dict[str, Any]:
    """``parity bench`` of one zoo model at one batch size (``parity.bench.engine.run_benchmark``)."""
    import zoo
    from parity.bench.engine import run_benchmark
    from parity.bench.results import BenchConfig

    config = BenchConfig(batches=(cell.batch,), train=cell.train, device=cell.device, precision=cell.precision,
                         budget_s=cell.budget_s, min_runs=cell.min_runs, runtimes=cell.runtimes, seed=cell.seed)
    result = run_benchmark(zoo.get(cell.model, preset=cell.preset), config)
    failed = [f"{c.runtime}: {c.reason}" for c in result.cells if c.status == "failed"]
    fastest = result.fastest(cell.batch)
    return {"status": "failed" if failed else "passed",
            "fastest": (f"{fastest.runtime} {fastest.stats.median_s * 1e3:.4g} ms"
                        if fastest is not None and fastest.stats is not None else None),
            "failures": failed,
            "result": result.to_dict()}
