"""`parity sweep`: a matrix of checks (or benches) over models, directions, presets, batches, seeds ...
as Ray tasks on a local or remote cluster; one JSON per cell, resumable."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from parity.cli.common import EPILOG, EXIT_MISMATCH, EXIT_OK, nonneg_float, positive_int
from parity.errors import UsageError

SWEEP_EPILOG = """examples:
  parity sweep --models all --directions both --out sweep/         every zoo check, both directions
  parity sweep --models mlp,cnn --seeds 0,1,2 --batch 1,8          a 2 x 3 x 2 matrix
  parity sweep --kind bench --models mlp --batch 1,32 --runtimes ort-cpu,torch-eager
  parity sweep --config sweep.toml --address head-node:6379        on an existing Ray cluster
  parity sweep --models mlp --torch pkg.mod:make_torch --keras model.keras --input x:3x32x32:float32:NCHW \
      --name mine --directions both                                a zoo model and your own pair

A config file is TOML ([sweep] table of the axes; [[pair]] tables with name, torch, keras, inputs and
optional tolerance for your own pairs) or JSON of the same shape; YAML is not read.

A rerun with the same --out skips cells whose result file matches their parameters (hash).
Every node of a cluster needs the resource bench_slot: ray start ... --resources '{"bench_slot": 1}'.
In a sweep, exit code 1 means a cell failed parity or crashed twice (an error cell); Ctrl-C keeps the
finished cells, cancels the rest and exits 130.

"""

# command-line option -> SweepSpec field, for the axes given as comma-separated lists
_LISTS = {"models": str, "directions": str, "presets": str, "batch": int, "seeds": int, "exporters": str,
          "devices": str, "precisions": str, "runtimes": str}
_FIELD = {"batch": "batches"}


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "sweep", help="run a matrix of checks or benches as Ray tasks (local or cluster), resumable",
        description="Expand a matrix of cells ((zoo models and your own pairs) x directions x presets x batches x seeds x exporters x "
                    "devices x precisions) and run each cell as a Ray task in its own worker process; write "
                    "one JSON per cell to --out and a summary table.",
        epilog=SWEEP_EPILOG + EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="the matrix as TOML ([sweep] table) or JSON; options given here override its keys")
    p.add_argument("--kind", choices=("check", "bench"), help="what each cell runs (default: check)")
    p.add_argument("--models", metavar="LIST", help="zoo models, comma-separated, or 'all'")
    p.add_argument("--directions", metavar="LIST", help="torch, tf or both (default: torch)")
    p.add_argument("--presets", metavar="LIST", help="zoo presets (default: small)")
    p.add_argument("--batch", metavar="LIST", help="batch sizes, one cell each (default: 2)")
    p.add_argument("--seeds", metavar="LIST", help="seeds (default: 0)")
    p.add_argument("--exporters", metavar="LIST", help="torch exporters: dynamo, legacy (default: the model's)")
    p.add_argument("--devices", metavar="LIST", help="auto, cpu, cuda; a cuda cell asks Ray for a GPU")
    p.add_argument("--precisions", metavar="LIST", help="fp32, tf32 (bench also fp16, bf16)")
    p.add_argument("--layers", action="store_true", default=None, help="check cells: compare every layer")
    p.add_argument("--grads", action="store_true", default=None, help="check cells: compare gradients")
    p.add_argument("--train-steps", type=positive_int, metavar="N", help="check cells: N training steps")
    p.add_argument("--runtimes", metavar="LIST", help="bench cells: runtimes or families (default: all)")
    p.add_argument("--train", action="store_true", default=None, help="bench cells: time a training step")
    p.add_argument("--budget", dest="budget_s", type=nonneg_float, help="bench cells: seconds per runtime")
    p.add_argument("--min-runs", type=positive_int, help="bench cells: minimum timed calls")
    own = p.add_argument_group("your own pair (as `parity check --torch/--keras/--input`; importing a module "
                               "runs its code); checked beside --models")
    own.add_argument("--torch", metavar="MODULE:FACTORY", help="the torch.nn.Module: pkg.module:factory or "
                                                               "path/file.py:factory")
    own.add_argument("--keras", metavar="FILE|MODULE:FACTORY", help="the keras.Model: a .keras file or "
                                                                    "pkg.module:factory")
    own.add_argument("--input", dest="pair_inputs", action="append", metavar="NAME:SHAPE[:DTYPE][:LAYOUT]",
                     help="one input without the batch, in the torch model's layout (repeat per input)")
    own.add_argument("--name", dest="pair_name", default="user", metavar="NAME", help="the pair's name in cell ids (default: user)")
    own.add_argument("--tolerance", type=nonneg_float, metavar="TOL",
                     help="the pair's atol and rtol, relative to the output scale (default: 1e-5)")
    p.add_argument("--out", default="sweep-results",
                   help="results folder: cells/<id>.json and sweep.json (default: sweep-results)")
    p.add_argument("--no-html", dest="html", action="store_false",
                   help="do not write OUT/report.html (every cell's result on one page, as `parity report`)")
    p.add_argument("--address", help="join this Ray cluster (e.g. head-node:6379 or 'auto'); default: start a "
                                     "local one")
    p.add_argument("--num-cpus", type=positive_int, help="local cluster: CPUs to offer (default: all)")
    p.set_defaults(handler=cmd_sweep)


def spec_from_args(args: argparse.Namespace) -> Any:
    """The ``SweepSpec`` of a config file (if any) with the options given on the command line on top."""
    from parity.sweep import SweepSpec, load_sweep_file

    base = load_sweep_file(args.config) if args.config else SweepSpec(models=())
    changes: dict[str, Any] = {}
    for option, kind in _LISTS.items():
        text = getattr(args, option)
        if text is None:
            continue
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            changes[_FIELD.get(option, option)] = tuple(kind(t) for t in items)
        except ValueError:
            raise UsageError(f"--{option} takes comma-separated integers such as 1,8; got {text!r}") from None
    for name in ("kind", "layers", "grads", "train_steps", "train", "budget_s", "min_runs"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    pair = pair_from_args(args)
    if pair is not None:
        changes["pairs"] = (*base.pairs, pair)
    spec = dataclasses.replace(base, **changes)
    if not spec.models and not spec.pairs:
        raise UsageError("give the models to sweep: --models mlp,cnn (or all), your own pair (--torch, --keras, "
                         "--input), or a --config file with `models` or [[pair]] tables")
    return spec


def pair_from_args(args: argparse.Namespace) -> Any:
    """The pair of ``--torch``/``--keras``/``--input`` (validated), or None when none of them is given."""
    from parity.sweep.pairs import UserPair

    given = [f for f, v in (("--torch", args.torch), ("--keras", args.keras), ("--input", args.pair_inputs)) if v]
    if not given:
        if args.pair_name != "user" or args.tolerance is not None:
            raise UsageError("--name and --tolerance describe your own pair; give it with --torch, --keras and --input")
        return None
    missing = [f for f in ("--torch", "--keras", "--input") if f not in given]
    if missing:
        raise UsageError(f"your own pair needs --torch, --keras and --input; {', '.join(missing)} missing")
    pair = UserPair(name=args.pair_name, torch=args.torch, keras=args.keras, inputs=tuple(args.pair_inputs),
                    tolerance=args.tolerance)
    pair.validate("the command line")
    return pair


def cmd_sweep(args: argparse.Namespace) -> int:
    from parity.sweep import run_sweep

    if not args.out.strip():
        raise UsageError(f"--out {args.out!r}: give a folder for the results, e.g. --out sweep-results")
    out = Path(args.out)
    spec = spec_from_args(args)
    cells = spec.cells()
    try:
        report = run_sweep(cells, out, address=args.address, num_cpus=args.num_cpus, html=args.html)
    except KeyboardInterrupt:
        print("parity sweep: interrupted; finished cells are saved, rerun the same command to run the rest")
        return 130
    return finish(report, out)


def finish(report: Any, out: Path) -> int:
    """Print the summary table and where the results are; the exit code: 0 if every cell passed, else 1."""
    from parity.sweep import format_summary

    print(format_summary(report.records))
    page = f", HTML report {report.html}" if report.html else ""
    print(f"results: {out / 'cells'}/*.json, index {report.index}{page}")
    return EXIT_OK if report.passed else EXIT_MISMATCH
