"""A small real benchmark shared by tests/test_report.py and tests/test_schema.py (once per worker).

mlp (small) at batch 1 and 4 in torch eager, tf.function and ONNX Runtime CPU, with ort-cuda
asked for so that a skipped runtime with its reason is in the result; budgets of milliseconds.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def small_bench() -> dict[str, Any]:
    import zoo
    from parity.bench.engine import run_benchmark
    from parity.bench.results import BenchConfig

    config = BenchConfig(batches=(1, 4), budget_s=0.02, min_runs=20, warmup=2, threads=1,
                         runtimes=("torch-eager", "tf-function", "ort-cpu", "ort-cuda"), device="cpu")
    return run_benchmark(zoo.get("mlp"), config).to_dict()
