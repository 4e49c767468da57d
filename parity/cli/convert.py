"""`parity convert`: generate the twin of a model in the other framework as readable source code
(``model.py``), port its weights into it, and check it against the source on every runtime."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from parity.cli.common import (
    EPILOG,
    EXIT_MISMATCH,
    EXIT_OK,
    batch_size,
    check_json_path,
    path_arg,
    positive_int,
    seed,
)
from parity.cli.convert_checkpoint import add_checkpoint_arguments, convert_checkpoint_args
from parity.cli.user_models import add_user_model_arguments
from parity.errors import UsageError

CONVERT_EPILOG = """examples:
  parity convert resnet18 --from torch --to tf --out twin/
  parity convert --torch examples/own_models.py:torch_model --input x:3x8x8:float32:NCHW --to tf --out twin/
  parity convert bert --from tf --to torch --out twin/ --layers --grads --train-steps 3
  parity convert --onnx model.onnx --to torch --out twin/
  parity convert resnet18 --fold-batchnorm --out serve/          (a serving twin: inference only)
  parity convert bert --checkpoint minilm/ --text-file examples/sentences.txt --to tf --out twin/

"""


def add_command(sub: Any) -> None:
    cmd = sub.add_parser(
        "convert", help="generate the twin in the other framework as readable source, with its weights, proven equal",
        description="Generate the other framework's twin of a model as readable source code: a Keras 3 functional "
                    "model or a torch.nn.Module (model.py), with the ported weights (model.weights.h5 or "
                    "model.safetensors), the source ONNX file, port_report.json and parity.json (the check of "
                    "the generated twin against the source on torch, tf, ort-torch and ort-tf).",
        epilog=CONVERT_EPILOG + EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("model", nargs="?", help="zoo model name (see `parity list`); leave out with --torch/--keras")
    cmd.add_argument("--from", dest="source", choices=("torch", "tf"), help="the zoo twin to convert (default: torch)")
    cmd.add_argument("--to", dest="target", choices=("torch", "tf"),
                     help="the framework of the generated twin (default: the other one)")
    cmd.add_argument("--preset", default="small", help="zoo preset (default: small)")
    cmd.add_argument("--out", type=path_arg, metavar="DIR", required=True,
                     help="the folder to write (written whole or not at all; an existing non-empty one needs "
                          "--overwrite)")
    cmd.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    cmd.add_argument("--json", type=path_arg, metavar="PATH", help="also write the parity result as JSON here")
    cmd.add_argument("--batch", type=batch_size, default=2, help="batch size of the seeded inputs (default: 2)")
    cmd.add_argument("--seed", type=seed, default=0, help="seed for weights and inputs (default: 0)")
    cmd.add_argument("--layers", action="store_true", help="also compare every named layer's activation")
    cmd.add_argument("--grads", action="store_true", help="also compare every parameter's gradient")
    cmd.add_argument("--train-steps", type=positive_int, nargs="?", const=3, default=0, metavar="N",
                     help="also take N optimizer steps in both and compare (N defaults to 3)")
    group = add_user_model_arguments(cmd)
    group.add_argument("--onnx", type=Path, metavar="FILE",
                       help="an ONNX file instead of a model (needs --to); the twin is compared with ONNX Runtime on "
                            "the file. --input NAME:SHAPE:DTYPE:NCHW marks an image input (default: every float "
                            "input of rank 4)")
    cmd.add_argument("--name", default="", help="your model's name in the generated code (default: its class's)")
    add_checkpoint_arguments(cmd)
    cmd.add_argument("--fold-batchnorm", action="store_true",
                     help="write the serving twin: each BatchNorm folded into the convolution before it (inference-"
                          "only: for serving, not training; refuses --layers, --grads and --train-steps)")
    cmd.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    cmd.set_defaults(handler=cmd_convert)


def _progress(quiet: bool) -> Any:
    if quiet:
        return None
    return lambda message: print(f"[parity] {message}", file=sys.stderr, flush=True)


def cmd_convert(args: argparse.Namespace) -> int:
    from converters.files import write_json_atomic
    from parity.convert import OTHER, convert_models, convert_onnx, convert_zoo

    check_json_path(args.json, args.out)
    if args.onnx is not None:
        return _cmd_onnx(args, convert_onnx)
    user = args.torch or args.keras
    if user and args.model:
        raise UsageError("give a zoo MODEL or your own model (--torch/--keras), not both")
    if not user and not args.model:
        raise UsageError("give a zoo MODEL (see `parity list`) or your own model: --torch MODULE:FACTORY or --keras "
                         "FILE|MODULE:FACTORY")
    if args.torch and args.keras:
        raise UsageError("give one model to convert: --torch or --keras, not both")
    source = "torch" if args.torch else "tf" if args.keras else (args.source or "torch")
    if args.target is not None and args.target != OTHER[source]:
        raise UsageError(f"--to {args.target}: the source is a {source} model, so the twin is {OTHER[source]}; "
                         f"use --to {OTHER[source]}")
    options = dict(layers=args.layers, grads=args.grads, train_steps=args.train_steps, batch=args.batch,
                   seed=args.seed, overwrite=args.overwrite, progress=_progress(args.quiet),
                   fold_batchnorm=args.fold_batchnorm)
    if args.checkpoint is not None or args.text or args.text_file:
        result = convert_checkpoint_args(args, source, options)
    elif user:
        result = convert_models(_load(args), _inputs(args), args.out, name=args.name,
                                input_layouts={n: lay for n, _, _, lay in args.input_specs if lay}, **options)
    else:
        result = convert_zoo(args.model, args.out, source=source, preset=args.preset, **options)
    if args.json is not None:
        write_json_atomic(args.json, result.data)  # as parity.json: every path final
    lines = [f"parity convert {result.result.model}: {source} -> {OTHER[source]}, wrote {Path(args.out) / 'model.py'}"]
    lines += [f"  {c.a:<10} {c.b:<6} {c.output:<10} max_abs {c.max_abs:.2e} <= atol {c.atol:.2e}: "
              f"{'ok' if c else 'FAILED'}" for c in result.result.comparisons]
    lines += [f"  {note}" for note in result.result.notes if note.startswith("inference-only: BatchNorm folded")]
    lines += diagnostic_lines(result.result)
    lines.append("PASSED" if result.passed else "FAILED" if not all(result.result.comparisons) else
                 "FAILED: the outputs agree; a requested diagnostic does not (see above)")
    print("\n".join(lines))
    return EXIT_OK if result.passed else EXIT_MISMATCH


def diagnostic_lines(result: Any) -> list[str]:
    """One line per requested diagnostic: its verdict, or why it was not run (``parity check``'s reason)."""
    from parity.diagnostics import NotCompared

    lines = []
    if result.layers is not None:
        first = result.layers.first_divergence
        lines.append(f"  layers: {'ok' if result.layers.passed else f'FAILED, first divergence at {first}'}")
    for what in ("gradients", "training"):
        part = getattr(result, what)
        if isinstance(part, NotCompared):
            lines.append(f"  {part.format()}")
        elif part is not None:
            first = getattr(part, "first_divergence", None)
            lines.append(f"  {what}: {'ok' if part.passed else 'FAILED'}"
                         + (f", first divergent parameter {first}" if first and not part.passed else ""))
    return lines


def _cmd_onnx(args: argparse.Namespace, convert_onnx: Any) -> int:
    import json

    from converters.files import write_json_atomic

    if args.model or args.torch or args.keras:
        raise UsageError("--onnx converts the file alone: leave out MODEL, --torch and --keras")
    if args.fold_batchnorm:
        raise UsageError("--fold-batchnorm needs a source model to check the serving twin against: give a zoo MODEL "
                         "or --torch/--keras, not --onnx")
    if args.target is None:
        raise UsageError("--onnx needs --to tf or --to torch: the framework of the generated twin")
    spatial = {n for n, _, _, lay in args.input_specs if lay in ("NCHW", "NCL")} if args.input_specs else None
    result = convert_onnx(args.onnx, args.target, args.out, spatial_inputs=spatial, batch=args.batch,
                          seed=args.seed, overwrite=args.overwrite, progress=_progress(args.quiet))
    if args.json is not None:
        write_json_atomic(args.json, json.loads((Path(args.out) / "parity.json").read_text()))
    lines = [f"parity convert {args.onnx.name}: -> {args.target}, wrote {Path(args.out) / 'model.py'}"]
    lines += [f"  {c.a:<10} {c.b:<10} {c.output:<10} max_abs {c.max_abs:.2e} <= atol {c.atol:.2e}: "
              f"{'ok' if c else 'FAILED'}" for c in result.comparisons]
    lines.append("PASSED" if result.passed else "FAILED")
    print("\n".join(lines))
    return EXIT_OK if result.passed else EXIT_MISMATCH


def _load(args: argparse.Namespace) -> Any:
    from parity.cli.user_models import load_keras, load_torch

    return load_torch(args.torch) if args.torch else load_keras(args.keras)


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    if args.inputs_npz is not None:
        from parity.cli.user_models import load_npz_inputs

        return load_npz_inputs(args.inputs_npz)
    if not args.input_specs:
        raise UsageError("give the inputs: --input NAME:SHAPE[:DTYPE][:LAYOUT] per input (shape without the batch "
                         "dimension, in your model's layout), or --inputs data.npz")
    from zoo.spec import TensorSpec

    return {name: TensorSpec(name, shape, dtype) for name, shape, dtype, _ in args.input_specs}
