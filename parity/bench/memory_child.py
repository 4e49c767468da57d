"""The fresh process of ``parity.bench.memory_probe``: ``python -m parity.bench.memory_child REQUEST_JSON``
prints ``{"baseline_rss": bytes, "added": {batch: bytes}}`` as its last line."""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import Any

from parity.bench.memory_probe import CALLS
from parity.bench.results import BenchConfig


def _rss(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} missing from /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(request: dict[str, Any]) -> dict[str, Any]:
    """In the fresh process: baseline after imports, then the peak above it per batch size."""
    try:
        import torch  # noqa: F401  (torch before TensorFlow, as everywhere)
    except ImportError:
        pass
    import zoo
    from parity.bench.engine import Bench
    from parity.bench.timing import measure

    config = BenchConfig(**{**request["config"], "batches": tuple(request["batches"]),
                            "runtimes": tuple(request["config"]["runtimes"])})
    runtime = request["runtime"]
    with Bench(zoo.get(request["model"], preset=request["preset"]), config) as bench:
        bench.module(runtime.split("-")[0])
        if runtime.startswith("ort-"):
            bench.onnx_path()  # the export is the bench's setup, not the runtime's memory
        gc.collect()
        baseline, added = _rss("VmRSS"), {}
        for batch in sorted(request["batches"]):
            _reset_peak()
            case = bench.case(runtime, batch)
            measure(case.call, case.sync, budget_s=0, min_runs=CALLS, warmup=1)
            added[batch] = max(_rss("VmHWM") - baseline, 0)
            del case
            gc.collect()
    return {"baseline_rss": baseline, "added": added}


__all__ = ["child"]


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(child(json.loads(sys.argv[1]))))
