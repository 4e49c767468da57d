"""GPU benchmarks for `make gpu-check`: the bench engine on the chosen runtimes, then the harness check.

    python scripts/gpu_bench.py --device cuda --out DIR --tag resnet50_inference --model resnet50 \\
        --preset standard --batch 1,8,32,128 --runtimes torch-eager,ort-cuda,keras-jax [--train] [--fidelity 32]

Writes DIR/bench_TAG.json (the `parity bench --json` document) and, with --fidelity BATCH,
DIR/fidelity_TAG.json: for each runtime at BATCH, the engine's median against a minimal bare loop
around the very same call (torch on a GPU: CUDA events around the call; ONNX Runtime: perf_counter
around run_with_iobinding + synchronize_outputs; keras-jax: perf_counter around the jitted call +
block_until_ready, in its worker). One invocation per group of runtimes keeps what was measured
when a later, slower group (torch.compile) runs out of time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "jax")  # the GPU machine has no TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch  # noqa: E402, F401  (torch first, always)

import zoo  # noqa: E402
from converters.files import write_json_atomic  # noqa: E402
from parity.bench.engine import Bench  # noqa: E402
from parity.bench.results import BenchConfig  # noqa: E402
from parity.cli.bench import format_table, parse_batches, parse_runtimes  # noqa: E402


def say(msg: str) -> None:
    print(f"[gpu-bench] {msg}", file=sys.stderr, flush=True)


def harness_check(bench: Bench, runtimes: tuple[str, ...], batch: int, folder: str) -> list[dict[str, Any]]:
    """Engine median / bare-loop median per runtime at ``batch``; a runtime that cannot run is listed as such."""
    from parity.bench.case import Skip
    from parity.bench.cases_keras import keras_rows
    from parity.bench.fidelity import fidelity

    rows = []
    for runtime in runtimes:
        say(f"harness check {runtime} batch={batch}")
        try:
            if runtime.startswith("keras-"):
                answer = keras_rows(bench, runtime.split("-", 1)[1], [batch], folder, fidelity=True)
                row = answer["bench"][0]
                if row["status"] != "ok":
                    raise RuntimeError(row["reason"])
                result = row["fidelity"]
            else:
                case = bench.case(runtime, batch)
                events = torch.cuda.Event if runtime.startswith("torch-") and bench.device == "cuda" else None
                result = fidelity(case.call, case.sync, cuda_events=events)
        except Skip as exc:
            rows.append({"runtime": runtime, "batch": batch, "status": "skipped", "reason": str(exc)})
            continue
        except Exception as exc:  # a compiler or provider failure: the row says why, the others go on
            rows.append({"runtime": runtime, "batch": batch, "status": "failed",
                         "reason": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        rows.append({"runtime": runtime, "batch": batch, "status": "ok", **result})
        say(f"  {runtime}: engine / bare loop = {result['ratio']:.3f} ({result['bare_clock']})")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--preset", default="standard")
    p.add_argument("--batch", default="1,8,32,128")
    p.add_argument("--runtimes", required=True)
    p.add_argument("--train", action="store_true")
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32"))
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--min-runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fidelity", type=int, default=0, metavar="BATCH", help="also check the harness at BATCH")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runtimes = parse_runtimes([args.runtimes])
    config = BenchConfig(batches=parse_batches(args.batch), train=args.train, device=args.device,
                         precision=args.precision, threads=args.threads, budget_s=args.budget,
                         min_runs=args.min_runs, runtimes=runtimes, probe_peak=True)
    spec = zoo.get(args.model, preset=args.preset)
    with Bench(spec, config) as bench:
        data = bench.run(say).to_dict()
        write_json_atomic(args.out / f"bench_{args.tag}.json", data)
        print(format_table(data))
        if args.fidelity:
            with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
                rows = harness_check(bench, bench.runtimes, args.fidelity, tmp)
            write_json_atomic(args.out / f"fidelity_{args.tag}.json",
                              {"model": args.model, "preset": args.preset, "device": bench.device,
                               "task": config.task, "rows": rows})
    measured = [c for c in data["cells"] if c["status"] == "ok"]
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
