"""`parity bench` and `parity flops`: argument parsing, the terminal table, JSON and plot output.

No framework is imported at module import time; the handlers import what they need.
Until ``parity.cli`` registers these, ``python -m parity.cli.bench bench mlp`` works too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from converters.files import probe_writable_file, write_json_atomic
from parity.bench.results import INFERENCE_RUNTIMES as RUNTIME_CHOICES  # numpy only: no framework import
from parity.cli.common import (
    BATCH_MAX,
    BUDGET_MAX_S,
    bounded_int,
    budget_seconds,
    check_input_memory,
    check_some_gpu,
    path_arg,
    seed,
)
from parity.errors import UsageError

MAX_RUNS = 1_000_000  # timed calls per cell: a bound, so that --min-runs cannot keep a cell running for days
MAX_WARMUP = 1_000


def add_commands(subparsers: Any) -> None:
    """Register the ``bench`` and ``flops`` subcommands on an argparse subparsers object."""
    _add_bench(subparsers)
    _add_flops(subparsers)


def _add_bench(subparsers: Any) -> None:
    from parity.cli.own_models import own_models_epilog
    from parity.cli.user_models import add_user_model_arguments

    p = subparsers.add_parser(
        "bench", help="time inference (or training) across torch, TF and ONNX Runtime",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Time a zoo model, your own models or an ONNX file in every runtime that applies and "
                    "every execution mode, with equal threads, explicit precision and synchronised clocks.",
        epilog=own_models_epilog("bench", " --batch 1,8 --budget 0.5"))
    p.add_argument("model", nargs="?", help="zoo model name (see `parity list`); or give --torch/--keras/--onnx")
    p.add_argument("--preset", default="small", help="model size preset (default: small)")
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes (default: 1,8,32)")
    p.add_argument("--train", action="store_true",
                   help="time one training step (forward, cross-entropy, backward, SGD lr 0.01 momentum 0.9)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-/inter-op threads for every framework (default: all usable cores)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "fp16", "bf16"),
                   help="fp32 turns TF32 off; fp16/bf16 use autocast / a Keras mixed policy")
    p.add_argument("--include-copies", action="store_true",
                   help="time host-to-device input and device-to-host output copies too")
    p.add_argument("--budget", type=budget_seconds, default=1.0,
                   help="seconds of timed calls per cell, after warm-up, at most 3600 (default: 1.0)")
    p.add_argument("--min-runs", type=bounded_int(1, MAX_RUNS), default=10,
                   help=f"minimum timed calls per cell, 1..{MAX_RUNS} (default: 10)")
    p.add_argument("--warmup", type=bounded_int(0, MAX_WARMUP), default=3,
                   help=f"untimed calls per shape after the first, 0..{MAX_WARMUP} (default: 3)")
    p.add_argument("--runtimes", nargs="+", default=None, metavar="RUNTIME",
                   help=f"runtimes to run (names or families torch/tf/keras/ort, comma or space separated): "
                        f"{', '.join(RUNTIME_CHOICES)}; keras-jax, keras-torch (Keras 3 on JAX / PyTorch, in a "
                        "worker process) run only when named")
    p.add_argument("--seed", type=seed, default=0, help="seed for weights, inputs and labels (default: 0)")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak probe")
    p.add_argument("--memory", choices=("process", "subprocess"), default="process",
                   help="CPU memory: 'process' = the bench process's peak RSS (not comparable across runtimes); "
                        "'subprocess' = each runtime again in a fresh process, memory above its imports (comparable)")
    p.add_argument("--json", type=path_arg, default=None, metavar="PATH", help="write every cell and the environment")
    p.add_argument("--plot", type=path_arg, default=None, metavar="PATH", help="write a PNG plot")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr (the table still prints)")
    add_user_model_arguments(p)
    p.add_argument("--onnx", type=Path, metavar="FILE",
                   help="time this ONNX file in ONNX Runtime (instead of an export of the models); its inputs are "
                        "its declared shapes (--input NAME:SHAPE fixes dynamic dimensions)")
    p.add_argument("--generated", type=Path, action="append", metavar="DIR",
                   help="also time the twin `parity convert MODEL` wrote in DIR, in turn with the hand-written twin of "
                        "its framework (importing DIR/model.py runs its code); repeatable, one per framework")
    p.set_defaults(handler=run_bench)


def _add_flops(subparsers: Any) -> None:
    from parity.cli.own_models import own_models_epilog
    from parity.cli.user_models import add_user_model_arguments

    p = subparsers.add_parser(
        "flops", help="count forward FLOPs from the ONNX graph (2 per multiply-add)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Count the forward FLOPs of a zoo model, your own model (exported to ONNX) or an ONNX file.",
        epilog=own_models_epilog("flops", " --batch 1,8"))
    p.add_argument("model", nargs="?", help="zoo model name, or a path to an .onnx file")
    p.add_argument("--preset", default="small", help="model size preset (default: small)")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default: 1)")
    add_user_model_arguments(p)
    p.add_argument("--onnx", type=Path, metavar="FILE",
                   help="count this ONNX file (--input NAME:SHAPE fixes dynamic dimensions beyond the batch)")
    p.set_defaults(handler=run_flops)


# ============================================================================ parsing


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); anything else is a UsageError that shows what was received."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        batches = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--batch takes comma-separated positive integers such as 1,8,32; got {text!r}") from None
    if not batches or any(b < 1 for b in batches):
        raise UsageError(f"--batch takes comma-separated positive integers such as 1,8,32; got {text!r}")
    if max(batches) > BATCH_MAX:
        raise UsageError(f"--batch {max(batches):,} is over the limit of {BATCH_MAX:,}; give smaller batch sizes")
    return tuple(dict.fromkeys(batches))


def parse_runtimes(values: Sequence[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def _spec(name: str, preset: str) -> Any:
    import zoo

    try:
        return zoo.get(name, preset=preset)
    except zoo.UnknownModelError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:  # unknown preset or config field
        raise UsageError(str(exc)) from None


def _check_writable(path: Path | None, option: str) -> None:
    """Fail before a long run, not after it, when an output cannot be written (a real temporary file)."""
    from converters.errors import OutputError

    if path is not None:
        try:
            probe_writable_file(path, option)
        except OutputError as exc:
            raise UsageError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> Any:
    from parity.bench.results import BenchConfig

    if not 0 <= args.budget <= BUDGET_MAX_S:  # set from Python too, where argparse did not check it
        raise UsageError(f"--budget must be in 0..{BUDGET_MAX_S:g} seconds, got {args.budget}")
    config = BenchConfig(
        batches=parse_batches(args.batch), train=args.train, device=args.device, precision=args.precision,
        threads=args.threads, include_copies=args.include_copies, budget_s=args.budget, min_runs=args.min_runs,
        warmup=args.warmup, runtimes=parse_runtimes(args.runtimes), seed=args.seed, probe_peak=not args.no_peak,
        memory=getattr(args, "memory", "process"),
    )
    config.validate()
    return config


# ============================================================================ handlers


def run_bench(args: argparse.Namespace) -> int:
    """`parity bench`: 0 when at least one cell was measured, 1 when none could be."""
    from parity.cli.own_models import which_models

    config = config_from_args(args)
    which = which_models(args)
    _check_writable(args.json, "--json")
    _check_writable(args.plot, "--plot")
    _import_torch_first()
    if args.device == "cuda":
        check_some_gpu()
    if which == "zoo":
        spec = _spec(args.model, args.preset)
        check_input_memory([(i.name, i.shape, i.dtype) for i in spec.inputs], max(config.batches))
    else:
        from parity.cli.own_models import given_spec_from_args

        if args.model is not None:  # `parity bench model.onnx` reads as --onnx model.onnx
            args.onnx, args.model = Path(args.model), None
        spec = given_spec_from_args(args, config.batches)
    from parity.bench.engine import run_benchmark
    from parity.bench.generated import generated_twins

    twins = generated_twins(getattr(args, "generated", None), spec, config)  # refused before any timing
    result = run_benchmark(spec, config, progress=None if args.quiet else _progress, generated=twins)
    data = result.to_dict()
    print(format_table(data))
    from parity.report.decision_text import format_decision

    print(format_decision(data["decision"]))  # every claim is a number in the JSON's "decision"
    if args.json is not None:
        write_json(args.json, data)
        _progress(f"wrote {args.json}")
    if args.plot is not None:
        from parity.bench.plot import plot_bench

        plot_bench(data, args.plot)
        _progress(f"wrote {args.plot}")
    if not any(c.measured for c in result.cells):
        _progress("no runtime could be measured: see the reasons above")
        return 1
    return 0


def run_flops(args: argparse.Namespace) -> int:
    """`parity flops`: the forward FLOP count per batch size, by operator kind."""
    from parity.cli.own_models import count_onnx_file, which_models

    batches = parse_batches(args.batch)
    which = which_models(args)
    if which == "onnx":
        path = Path(args.onnx if args.onnx is not None else args.model)
        source, counts = str(path), count_onnx_file(path, args, batches)
    elif which == "own":
        if args.onnx is not None:
            raise UsageError("give --onnx FILE or --torch/--keras to count, not both")
        _import_torch_first()
        from parity.cli.own_models import given_spec_from_args

        spec = given_spec_from_args(args, batches)
        source, counts = spec.name, _count_spec(spec, batches)
    else:
        spec = _spec(args.model, args.preset)
        source, counts = f"{spec.name} ({spec.preset})", _count_spec(spec, batches)
    from parity.bench.flops import format_flops_table

    print(format_flops_table(source, counts))
    return 0


def _count_spec(spec: Any, batches: Sequence[int]) -> list[Any]:
    import contextlib

    from converters.errors import ConversionError
    from parity.bench.flops import count_flops, export_spec

    _import_torch_first()
    with tempfile.TemporaryDirectory(prefix="parity-flops-") as tmp:
        _progress(f"exporting {spec.name} to ONNX to count its FLOPs at batch {', '.join(map(str, batches))} ...")
        try:
            with contextlib.redirect_stdout(sys.stderr):
                path = export_spec(spec, tmp)
        except ConversionError as exc:
            raise UsageError(str(exc)) from None
        return [count_flops(path, b) for b in batches]


def _import_torch_first() -> None:
    """torch must be loaded before TensorFlow in a process; a machine without torch goes on without it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass


# ============================================================================ output


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON atomically (temporary file, then rename)."""
    write_json_atomic(path, data)


_COLUMNS = ("batch", "runtime", "median ms", "p90 ms", "p99 ms", "min ms", "stdev ms", "runs", "first ms",
            "samples/s", "GFLOP/s", "%peak", "mem MB")


def format_table(result: Mapping[str, Any]) -> str:
    """The terminal table: one row per cell, grouped by batch, fastest per batch marked '*'."""
    cells = list(result.get("cells", []))
    rows = [_row(c, _fastest_runtime(cells, c["batch"])) for c in sorted(cells, key=lambda c: c["batch"])]
    measured = [r for r in rows if len(r) == len(_COLUMNS)]
    widths = [max([len(h), *(len(r[i]) for r in measured)]) for i, h in enumerate(_COLUMNS)]
    widths[1] = max([widths[1], *(len(r[1]) for r in rows)])  # skipped rows name their runtime too
    lines = [_header(result), "  ".join(h.rjust(w) if i != 1 else h.ljust(w)
                                        for i, (h, w) in enumerate(zip(_COLUMNS, widths, strict=True)))]
    previous = None
    for cell, row in zip(sorted(cells, key=lambda c: c["batch"]), rows, strict=True):
        if previous is not None and cell["batch"] != previous:
            lines.append("")
        previous = cell["batch"]
        if len(row) == len(_COLUMNS):
            lines.append("  ".join(v.rjust(w) if i != 1 else v.ljust(w)
                                   for i, (v, w) in enumerate(zip(row, widths, strict=True))))
        else:
            lines.append(f"{row[0].rjust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")
    lines.append("* fastest median at that batch size; samples/s = batch / median; "
                 "first call (compile, warm-up) is not in the statistics")
    return "\n".join(lines)


def _fastest_runtime(cells: Sequence[Mapping[str, Any]], batch: int) -> str | None:
    ok = [c for c in cells if c["batch"] == batch and c.get("status") == "ok" and c.get("stats")]
    return min(ok, key=lambda c: c["stats"]["median_s"])["runtime"] if ok else None


def _row(cell: Mapping[str, Any], fastest: str | None) -> list[str]:
    mark = "*" if cell["runtime"] == fastest else " "
    name = f"{mark}{cell['runtime']}"
    if cell.get("status") != "ok" or not cell.get("stats"):
        return [str(cell["batch"]), name, f"{cell.get('status')}: {cell.get('reason', '')}"]
    s = cell["stats"]
    return [str(cell["batch"]), name, *(_ms(s[k]) for k in ("median_s", "p90_s", "p99_s", "min_s", "stdev_s")),
            str(s["count"]), _ms(cell.get("first_call_s")), _num(cell.get("throughput")),
            _num(cell.get("achieved_gflops")), _pct(cell.get("fraction_of_peak")),
            _num(cell["peak_memory_bytes"] / 2**20 if cell.get("peak_memory_bytes") else None)]


def _header(result: Mapping[str, Any]) -> str:
    from parity.bench.flops import format_flops
    from parity.env import device_name

    config, env = result.get("config", {}), result.get("environment", {})
    flops = ", ".join(f"b={b}: {format_flops(f) if f else 'n/a'}" for b, f in result.get("flops", {}).items())
    peak = result.get("peak")
    peak_text = (f"{peak['gflops']:.4g} GFLOP/s ({peak['dtype']} {peak['n']}^3 matmul on {peak['device']})"
                 if peak else "not measured")
    return "\n".join([
        f"{result.get('model')} ({result.get('preset')}) {result.get('task')} | device {config.get('device_resolved')}"
        f" ({device_name(env, str(config.get('device_resolved')))}) | precision {config.get('precision')} | threads {config.get('threads')}"
        f" | budget {config.get('budget_s')} s, min {config.get('min_runs')} runs"
        f" | copies {'timed' if config.get('include_copies') else 'not timed'}",
        f"forward FLOPs: {flops or 'n/a'} | machine peak: {peak_text}",
        *_load_warning(result),
    ])


def _load_warning(result: Mapping[str, Any]) -> list[str]:
    """A line when other processes kept the cores busy: CPU timings are then not trustworthy."""
    config = result.get("config", {})
    load = result.get("load_average_1min") or {}
    cores = (result.get("environment", {}).get("cpu") or {}).get("usable_cores") or 0
    busiest = max((v for v in (load.get("start"), load.get("end")) if v is not None), default=None)
    if busiest is None or config.get("device_resolved") != "cpu" or not cores:
        return []
    # the bench itself keeps up to `threads` cores busy; more load than the cores means competition
    if busiest <= cores:
        return []
    return [f"WARNING: host load average reached {busiest} on {cores} cores: other processes competed "
            "for the CPU during this run, so these timings overstate latency (OpenMP runtimes such as "
            "torch's suffer most; rerun on a quiet machine, or compare at --threads 1)"]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.4g}"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.3g}%"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ============================================================================ standalone entry


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m parity.cli.bench bench|flops ...`` (the same commands as ``parity``)."""
    parser = argparse.ArgumentParser(prog="parity")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"parity {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
