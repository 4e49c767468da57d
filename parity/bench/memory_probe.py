"""Comparable CPU memory: each runtime measured alone in a fresh Python process.

In the bench process every framework shares one address space, so its peak RSS cannot tell
runtimes apart (``parity.bench.memory``). Here one child process per runtime imports torch
(always first) and that runtime's framework, exports the ONNX file if the runtime needs one,
then reads its RSS: the *baseline*. For each batch size (in increasing order) it resets the
peak RSS (Linux VmHWM), builds the case (model, session, compiled wrapper), runs it a few
times and reads the peak again. ``peak - baseline`` is the memory the runtime adds for the
model and its run at that batch: weights, activations, compilation caches and allocator pools,
without the interpreter and the imported libraries. Zoo models only (a child rebuilds them
from the name, preset and seed); Linux only (VmHWM and clear_refs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from parity.bench.results import BenchConfig, Cell

SOURCE = ("fresh process per runtime: peak RSS above the RSS after importing the frameworks "
          "(model, activations, compiled code and allocator pools; comparable across runtimes)")
CALLS = 5  # timed calls per batch in the child; memory, not speed, is read


def with_subprocess_memory(spec: Any, config: BenchConfig, cells: Sequence[Cell],
                           say: Callable[[str], None] | None = None, timeout_s: float = 600) -> list[Cell]:
    """``cells`` with each measured CPU cell's memory replaced by its runtime's fresh-process figure."""
    out = list(cells)
    # a generated twin (parity.bench.generated) is not rebuilt in a child: its cells keep the bench process's RSS
    for runtime in dict.fromkeys(c.runtime for c in cells if c.measured and c.device == "cpu"
                                 and "generated" not in c.settings):
        batches = sorted({c.batch for c in cells if c.runtime == runtime and c.measured})
        if say:
            say(f"memory of {runtime} in a fresh process (batch {', '.join(map(str, batches))}) ...")
        added, why = run_child(spec, config, runtime, batches, timeout_s)
        for i, cell in enumerate(out):
            if cell.runtime == runtime and cell.measured:
                out[i] = (dataclasses.replace(cell, peak_memory_bytes=added[cell.batch], memory_source=SOURCE,
                                              memory_comparable=True) if cell.batch in added else
                          dataclasses.replace(cell, memory_source=f"{cell.memory_source}; fresh-process "
                                                                  f"measurement failed: {why}"))
    return out


def run_child(spec: Any, config: BenchConfig, runtime: str, batches: Sequence[int],
              timeout_s: float) -> tuple[dict[int, int], str]:
    """batch -> bytes added, and the reason when there are none."""
    if not os.path.exists("/proc/self/clear_refs"):
        return {}, "needs Linux /proc/self/clear_refs"
    if type(spec).__module__.split(".")[0] != "zoo":
        return {}, "only zoo models can be rebuilt in a fresh process"
    request = {"model": spec.name, "preset": spec.preset, "runtime": runtime, "batches": list(batches),
               "config": {**dataclasses.asdict(config), "runtimes": [runtime], "batches": list(batches),
                          "probe_peak": False, "device": "cpu"}}
    try:
        done = subprocess.run([sys.executable, "-m", "parity.bench.memory_child", json.dumps(request)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {}, f"the child process took over {timeout_s:g} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {}, f"child exited {done.returncode}: {tail[:200]}"
    return {int(b): int(v) for b, v in json.loads(lines[-1])["added"].items()}, ""


__all__ = ["CALLS", "SOURCE", "run_child", "with_subprocess_memory"]
