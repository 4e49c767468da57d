"""`parity check --torch ... --keras ...`: the command line's side of ``parity.api.check_pair``."""

from __future__ import annotations

import argparse
from typing import Any

from parity.check.results import CheckOptions, CheckResult
from parity.cli.user_models import load_keras, load_npz_inputs, load_torch
from parity.errors import UsageError

# zoo-only options, and the flag that names them
ZOO_ONLY = {"model": "a zoo MODEL name", "all": "--all", "checkpoint": "--checkpoint", "preset": "--preset",
            "text": "--text", "text_file": "--text-file"}


def _inputs(args: argparse.Namespace, source: str) -> tuple[Any, dict[str, str]]:
    """The inputs (arrays from --inputs, else shapes from --input) and the layouts --input states."""
    from zoo.spec import TensorSpec

    specs = {name: (shape, dtype, layout) for name, shape, dtype, layout in args.input_specs}
    if len(specs) != len(args.input_specs):
        raise UsageError("--input names an input twice; give each input once")
    layouts = {name: layout for name, (_, _, layout) in specs.items() if layout is not None}
    if args.inputs_npz is None:
        if not specs:
            raise UsageError(f"give the inputs: --input NAME:SHAPE[:DTYPE][:LAYOUT] per input (shape without the "
                             f"batch dimension, in the {source} model's layout), or --inputs data.npz")
        return {n: TensorSpec(n, shape, dtype) for n, (shape, dtype, _) in specs.items()}, layouts
    arrays = load_npz_inputs(args.inputs_npz)
    for name, (shape, _, _) in specs.items():
        if name not in arrays:
            raise UsageError(f"--input {name}: {args.inputs_npz} has no array {name!r} (it has {sorted(arrays)})")
        if tuple(arrays[name].shape[1:]) != shape:
            raise UsageError(f"--input {name}: shape {shape} but {args.inputs_npz} holds {arrays[name].shape[1:]} "
                             "(without the batch dimension)")
    return arrays, layouts


def run_user_check(args: argparse.Namespace) -> CheckResult:
    """Load both models, build the options from ``args``, and check the pair."""
    from zoo.spec import Tolerance

    given = [flag for key, flag in ZOO_ONLY.items() if getattr(args, key, None)]
    if given:
        raise UsageError(f"{', '.join(given)} is for zoo models; with --torch/--keras leave it out")
    if not args.torch or not args.keras:
        raise UsageError("your own pair needs both --torch MODULE:FACTORY and --keras FILE|MODULE:FACTORY")
    if args.plot and not args.layers:
        args.layers = True
    source = args.source or "torch"
    inputs, layouts = _inputs(args, source)
    torch_model = load_torch(args.torch)
    keras_model = load_keras(args.keras)
    tolerance = None
    if args.atol is not None or args.rtol is not None:
        from parity.check.user import DEFAULT_TOLERANCE

        absolute = args.atol is not None
        tolerance = Tolerance(args.atol if absolute else DEFAULT_TOLERANCE.atol,
                              args.rtol if args.rtol is not None else DEFAULT_TOLERANCE.rtol,
                              reason="--atol/--rtol on the command line" + (" (atol absolute)" if absolute else ""),
                              scale_relative=not absolute)
    options = CheckOptions(
        model="", source=source, batch=args.batch, seed=args.seed, device=args.device, threads=args.threads,
        precision=args.precision, exporter=args.exporter, lossless=args.lossless, strict=args.strict, out=args.out,
        layers=args.layers, grads=args.grads, train_steps=args.train_steps, loss=args.loss, plot=args.plot,
        optimizers=("sgd", "adam") if args.optimizer == "both" else (args.optimizer,),
        strict_tolerances=args.strict_tolerances, port=args.port, save_outputs=args.save_outputs,
        runtimes=tuple(r.strip() for r in args.runtimes.split(",") if r.strip()) if args.runtimes else None)
    from parity.api import check_pair, print_progress

    pair = (torch_model, keras_model) if source == "torch" else (keras_model, torch_model)
    return check_pair(*pair, inputs, options, input_layouts=layouts, tolerance=tolerance, progress=print_progress)
