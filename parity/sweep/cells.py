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
    """``parity check`` of one zoo model (``parity.check.run_check``) or of a user's own pair, in one direction."""
    from parity.check import CheckOptions, run_check

    options = CheckOptions(model=cell.model, source=cell.source, preset=cell.preset, batch=cell.batch,
                           seed=cell.seed, exporter=cell.exporter, device=cell.device, precision=cell.precision,
                           layers=cell.layers, grads=cell.grads, train_steps=cell.train_steps)
    result = run_user_check(cell, options) if cell.is_user else run_check(options, progress=lambda _msg: None)
    ratios = [c.max_abs / c.atol if c.atol > 0 else float("inf") for c in result.comparisons]
    return {"status": "passed" if result.passed else "failed",
            "worst": max(ratios, default=0.0),  # the largest max_abs / atol over every comparison
            "failures": [f"{c.a} vs {c.b} {c.output}" for c in result.failures],
            "result": result.to_dict()}


def run_user_check(cell: SweepCell, options: Any) -> Any:
    """``parity check --torch ... --keras ... --input ...`` of the cell's pair (``parity.api.check_pair``).

    The pair's inputs are in the torch layout; a check from tf gets them in the Keras layout.
    A reference that does not load is the user's error (``UsageError``: not retried).
    """
    from parity.api import check_pair
    from parity.cli.user_models import load_keras, load_torch, parse_input
    from zoo.spec import TensorSpec

    inputs, layouts = {}, {}
    for name, shape, dtype, layout in map(parse_input, cell.inputs or ()):
        if layout is not None:
            layouts[name] = layout
            if cell.source == "tf":
                shape = TensorSpec(name, shape, dtype, layout).framework_shape("tf")
        inputs[name] = TensorSpec(name, shape, dtype)
    torch_model, keras_model = load_torch(cell.torch or ""), load_keras(cell.keras or "")
    pair = (torch_model, keras_model) if cell.source == "torch" else (keras_model, torch_model)
    return check_pair(*pair, inputs, options, input_layouts=layouts, tolerance=cell.tolerance,
                      progress=lambda _msg: None)


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
