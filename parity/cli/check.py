"""`parity check`: port a zoo twin, or your own pair (--torch/--keras), through ONNX and compare torch, tf
and ONNX Runtime."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from parity.cli.common import (
    EPILOG,
    EXIT_MISMATCH,
    EXIT_OK,
    batch_size,
    check_json_path,
    check_zoo_batch,
    nonneg_float,
    path_arg,
    positive_int,
    seed,
    text_arg,
)
from parity.cli.user_models import add_user_model_arguments
from parity.errors import ParityError

USER_EPILOG = """your own pair:
  parity check --torch pkg.module:factory --keras model.keras --input x:3x32x32:float32:NCHW
  (factories are imported and called: that runs your code, as any import does; .keras files load in safe mode)

"""


def add_command(sub: Any) -> None:
    check = sub.add_parser(
        "check", help="port a zoo twin or your own pair through ONNX and compare torch, tf and ONNX Runtime",
        description="Port a zoo twin (MODEL), or your own torch/Keras pair (--torch and --keras), through ONNX and "
                    "compare torch, tf, ONNX Runtime on the torch export and on the Keras export against the source.",
        epilog=USER_EPILOG + EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("model", nargs="?", help="zoo model name (see `parity list`); leave out with --torch/--keras")
    check.add_argument("--all", action="store_true", help="check every zoo model, both directions unless --from")
    check.add_argument("--from", dest="source", choices=("torch", "tf"),
                       help="framework of the source whose weights are ported, and whose layout --input/--inputs "
                            "use (default: torch)")
    check.add_argument("--preset", help="zoo preset (default: small; with a torchvision --checkpoint: standard)")
    check.add_argument("--batch", type=batch_size, default=2, help="batch size of the seeded inputs (default: 2)")
    check.add_argument("--seed", type=seed, default=0, help="seed for weights and inputs, 0..2**32-1 (default: 0)")
    check.add_argument("--atol", type=nonneg_float, help="absolute tolerance (default: the spec's, scaled to the output)")
    check.add_argument("--rtol", type=nonneg_float, help="relative tolerance (default: the spec's)")
    check.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    check.add_argument("--threads", type=positive_int, help="intra-op threads for all runtimes")
    check.add_argument("--precision", choices=("fp32", "tf32"), default="fp32",
                       help="fp32: TF32 off everywhere (strict); tf32: on, tolerances widened and reported")
    check.add_argument("--runtimes", metavar="A,B,...",
                       help="runtimes to run, comma separated, from torch, tf, keras-jax, keras-torch, ort-torch, "
                            "ort-tf (default: torch,tf,ort-torch,ort-tf; keras-* run the Keras twin on Keras 3's JAX "
                            "or PyTorch backend in a worker process)")
    check.add_argument("--exporter", choices=("dynamo", "legacy"),
                       help="torch ONNX exporter (default: dynamo, or what the zoo model needs)")
    check.add_argument("--no-lossless", dest="lossless", action="store_false",
                       help="let the torch exporter fold BatchNorm into convs (ported inference-only)")
    check.add_argument("--strict", action="store_true",
                       help="a semantic-defaults mismatch between the twins (epsilon, momentum, GELU form...) is an error")
    check.add_argument("--json", type=path_arg, metavar="PATH", help="write the result as JSON")
    check.add_argument("--save-outputs", type=Path, metavar="PATH.npz",
                       help="write every runtime's outputs (source layout; keys RUNTIME/OUTPUT) as .npz, atomically")
    check.add_argument("--out", type=path_arg, metavar="DIR",
                       help="keep the ONNX files, ported weights and port report (written only if the run "
                            "completes; a non-empty folder needs --overwrite)")
    check.add_argument("--overwrite", action="store_true", help="replace the files in a non-empty --out folder")
    check.add_argument("--allow-nonfinite", action="store_true",
                       help="port weights holding NaN or Inf instead of refusing them")
    check.add_argument("--checkpoint", type=Path, metavar="PATH",
                       help="source weights from a published checkpoint (see `parity import`), not randomized")
    check.add_argument("--text", type=text_arg, action="append", default=[], metavar="TEXT",
                       help="bert --checkpoint: a real input text (repeatable; one padded batch)")
    check.add_argument("--text-file", type=Path, metavar="PATH", help="bert --checkpoint: texts, one per line")
    diag = check.add_argument_group("diagnostics (layer-by-layer localisation also runs whenever a check fails)")
    diag.add_argument("--layers", action="store_true",
                      help="compare every named layer's activation in torch, Keras and ONNX Runtime; name the first "
                           "over tolerance")
    diag.add_argument("--grads", action="store_true",
                      help="compare every parameter's gradient of the same loss on the same batch")
    diag.add_argument("--train-steps", type=positive_int, nargs="?", const=5, default=0, metavar="N",
                      help="take N optimizer steps in both twins and compare losses, parameters and running "
                           "statistics (N defaults to 5)")
    diag.add_argument("--optimizer", choices=("sgd", "adam", "both"), default="both",
                      help="optimizer(s) for --train-steps (default: both)")
    diag.add_argument("--loss", choices=("mse", "xent"), default="mse",
                      help="loss for --grads/--train-steps: mse against seeded targets, or cross-entropy on seeded "
                           "labels (default: mse)")
    diag.add_argument("--plot", type=Path, metavar="PATH", help="plot layer error against depth (log scale) to PATH")
    diag.add_argument("--strict-tolerances", action="store_true",
                      help="take tolerances as given at every layer and step (no growth with depth or steps)")
    add_user_model_arguments(check).add_argument(
        "--compare-only", dest="port", action="store_false",
        help="do not port: compare the two models with the weights they have")
    check.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr (results still print)")
    check.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    """`parity check`: ``--out`` is left as it was unless the run completes (a verdict, passed or not)."""
    from converters.files import output_folder

    check_json_path(args.json, args.out)
    if args.all and args.out:
        raise ParityError("--out keeps one model's files; it cannot be combined with --all")
    with output_folder(args.out, overwrite=args.overwrite), allow_nonfinite(args.allow_nonfinite):
        return _cmd_check(args)


def allow_nonfinite(allowed: bool) -> Any:
    """While the command runs, NaN/Inf in ported weights is refused unless ``allowed``."""
    from converters.safety import nonfinite_weights_allowed

    return nonfinite_weights_allowed(allowed)


def _cmd_check(args: argparse.Namespace) -> int:
    from converters.files import write_json_atomic
    from parity.check import CheckOptions, run_check

    if args.torch or args.keras or args.input_specs or args.inputs_npz or not args.port:
        return cmd_check_user(args)
    if args.all == bool(args.model):
        raise ParityError("give one model name, or --all for every zoo model (not both)")
    if args.all and args.out:
        raise ParityError("--out keeps one model's files; it cannot be combined with --all")
    if args.all and args.plot:
        raise ParityError("--plot draws one model's layers; it cannot be combined with --all")
    if args.all and args.save_outputs:
        raise ParityError("--save-outputs keeps one check's outputs; it cannot be combined with --all")
    if args.all and args.checkpoint:
        raise ParityError("--checkpoint is one model's weights; it cannot be combined with --all")
    args.preset = args.preset or ("standard" if args.checkpoint else "small")
    if args.text_file:
        from parity.check.text import read_texts

        args.text = [*args.text, *read_texts(args.text_file)]
    import zoo

    models = zoo.names() if args.all else [args.model]
    check_zoo_batch(models, args.preset, args.batch)  # before any input is allocated
    sources = [args.source] if args.source else (["torch", "tf"] if args.all else ["torch"])
    results, total, started = [], len(models) * len(sources), time.perf_counter()
    for model in models:
        for source in sources:
            options = CheckOptions(
                model=model, source=source, preset=args.preset, batch=args.batch, seed=args.seed,
                atol=args.atol, rtol=args.rtol, device=args.device, threads=args.threads, precision=args.precision,
                exporter=args.exporter, lossless=args.lossless, strict=args.strict, out=args.out,
                checkpoint=args.checkpoint, texts=tuple(args.text),
                layers=args.layers, grads=args.grads, train_steps=args.train_steps, loss=args.loss, plot=args.plot,
                optimizers=("sgd", "adam") if args.optimizer == "both" else (args.optimizer,),
                strict_tolerances=args.strict_tolerances, save_outputs=args.save_outputs,
                runtimes=tuple(r.strip() for r in args.runtimes.split(",") if r.strip()) if args.runtimes else None,
            )
            t0 = time.perf_counter()
            result = run_check(options, progress=lambda _m: None) if args.quiet else run_check(options)
            results.append(result)
            _print(result)
            if args.all:  # [k/N] model direction ... verdict time
                print(f"[{len(results)}/{total}] {model} {result.source} -> {result.target} ... "
                      f"{'PASSED' if result.passed else 'FAILED'} {time.perf_counter() - t0:.1f} s\n", flush=True)
    passed = all(r.passed for r in results)
    if args.all:
        print(f"{sum(r.passed for r in results)} of {len(results)} checks passed in {time.perf_counter() - started:.1f} s")
        for r in results:
            if not r.passed:
                print(f"  FAILED: {r.model} --from {r.source}")
    if args.json:
        data = results[0].to_dict() if len(results) == 1 else {
            "passed": passed, "results": [r.to_dict() for r in results]}
        write_json_atomic(args.json, data)
    return EXIT_OK if passed else EXIT_MISMATCH


def _print(result: Any) -> None:
    from parity.check import format_table

    print(format_table(result))
    if any(part is not None for part in (result.layers, result.gradients, result.training)):
        from parity.diagnostics import format_diagnostics

        print(format_diagnostics(result))


def cmd_check_user(args: argparse.Namespace) -> int:
    """`parity check --torch ... --keras ...`: the user's pair through ``parity.api.check_pair``."""
    from parity.cli.user_check import run_user_check

    result = run_user_check(args)
    _print(result)
    if args.json:
        from converters.files import write_json_atomic

        write_json_atomic(args.json, result.to_dict())
    return EXIT_OK if result.passed else EXIT_MISMATCH
