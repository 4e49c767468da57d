"""`parity port`: move a zoo twin's weights, or a user's own model's, into the other framework's model
(or from an ONNX file into one), and save them with the ONNX file and the port report."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from parity.cli.common import path_arg, seed
from parity.errors import UsageError

_EPILOG = """your own models:
  parity port --torch pkg.module:factory --keras model.keras --input x:3x32x32:float32:NCHW --from torch --out DIR
  parity port --torch pkg.module:factory --keras pkg.module:factory --input ids:7:int64 --from tf --out DIR
  parity port --onnx model.onnx --to torch --torch pkg.module:factory --out DIR
  --from picks the source of the pair; the other model receives the weights. --input shapes are without the
  batch, in the source's layout; LAYOUT is the torch side's (NCHW/NCL: Keras sees channels-last), inferred from
  the models where unambiguous. The source model is never modified. Importing pkg.module runs its code.
"""


def add_command(sub: Any) -> None:
    from parity.cli.user_models import add_user_model_arguments

    port = sub.add_parser(
        "port", help="port weights into the other framework's model; write them, the ONNX file and a report",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Port a zoo twin's weights, or your own model's (--torch/--keras), through ONNX into the other "
                    "framework's model. Writes the ported weights in the target's native format (torch: "
                    "target.safetensors, Keras: target.weights.h5), the ONNX file (source.onnx) and "
                    "port_report.json into --out, each atomically.")
    port.add_argument("model", nargs="?", help="zoo model name (see `parity list`); or give --torch and --keras")
    port.add_argument("--from", dest="source", choices=("torch", "tf"),
                      help="source framework: the zoo twin, or which of --torch/--keras is the source")
    port.add_argument("--to", dest="target", choices=("torch", "tf"), help="target framework (default: the other)")
    port.add_argument("--onnx", type=Path, metavar="FILE",
                      help="port from this ONNX file instead of a source model (into the zoo twin, or into "
                           "--torch/--keras with --to)")
    port.add_argument("--weights", type=Path, metavar="FILE",
                      help="load the source model's weights first (torch: .safetensors or .pt/.pth, read with "
                           "weights_only=True; Keras: .weights.h5); default: the zoo twin's seeded random weights, "
                           "or your model's own")
    port.add_argument("--out", type=path_arg, required=True, metavar="DIR",
                      help="folder for the outputs (written only if the port succeeds; a non-empty folder needs "
                           "--overwrite)")
    port.add_argument("--overwrite", action="store_true", help="replace the files in a non-empty --out folder")
    port.add_argument("--allow-nonfinite", action="store_true",
                      help="port weights holding NaN or Inf instead of refusing them")
    port.add_argument("--preset", default="small")
    port.add_argument("--seed", type=seed, default=0,
                      help="seed of the zoo twin's weights and of the example inputs (default: 0)")
    port.add_argument("--exporter", choices=("dynamo", "legacy"),
                      help="torch ONNX exporter (default: dynamo, or what the zoo model needs)")
    port.add_argument("--lossless", action="store_true",
                      help="keep BatchNorm statistics exact (torch exporters; tf2onnx always folds them)")
    port.add_argument("--strict", action="store_true", help="semantic-defaults mismatches are errors")
    port.add_argument("--fold-batchnorm", action="store_true",
                      help="also write a serving copy beside the ported model (serving.keras / serving.safetensors): "
                           "each BatchNorm folded into the convolution before it; inference-only, not for training")
    add_user_model_arguments(port)
    port.set_defaults(handler=run_port)


def _load_source_weights(model: Any, framework: str, path: Path) -> None:
    """The source model's trained weights (``--weights``); every way a file can fail is one line."""
    from parity.check.weights_file import load_weights_file

    load_weights_file(model, framework, path)


def run_port(args: argparse.Namespace) -> int:
    """`parity port`: a zoo twin, or a user's own pair (``--torch``/``--keras``), or an ONNX file, into a target."""
    from parity.check.pipeline import OTHER

    own = bool(args.torch or args.keras)
    if own and args.model is not None:
        raise UsageError(f"got the zoo model {args.model!r} and --torch/--keras; give one of them")
    if not own and args.model is None:
        raise UsageError("give a zoo model name (see `parity list`) or your own models: --torch pkg.module:factory "
                         "--keras FILE|pkg.module:factory --input NAME:SHAPE --from torch|tf")
    if not own and (args.input_specs or args.inputs_npz):
        raise UsageError(f"--input/--inputs describe your own models; the zoo model {args.model!r} has its own inputs")
    if args.onnx is None and args.source is None:
        raise UsageError("give --from torch|tf (port a source model) or --onnx FILE (port an existing ONNX file)")
    if args.onnx is not None and args.target is None:
        raise UsageError("with --onnx, say which model receives the weights: --to torch or --to tf")
    if args.onnx is not None and args.weights is not None:
        raise UsageError("--weights loads a source model's weights; with --onnx the file is the source")
    if args.weights is not None and not args.weights.is_file():
        raise UsageError(f"--weights {args.weights}: no such file; give the source model's weights file")
    target_fw = args.target or OTHER[args.source]
    if args.source is not None and target_fw == args.source:
        raise UsageError(f"--from and --to are both {target_fw}; port between frameworks")
    if args.onnx is not None and not args.onnx.is_file():
        raise UsageError(f"--onnx {args.onnx}: no such file; give an .onnx file")
    from converters.files import output_folder
    from converters.safety import nonfinite_weights_allowed

    with output_folder(args.out, overwrite=args.overwrite), nonfinite_weights_allowed(args.allow_nonfinite):
        return _port_own(args, target_fw) if own else _port_zoo(args, target_fw)


def _port_zoo(args: argparse.Namespace, target_fw: str) -> int:
    import zoo
    from parity.check.pipeline import prepare_out_dir

    try:
        spec = zoo.get(args.model, preset=args.preset)
    except (zoo.UnknownModelError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    out = prepare_out_dir(args.out)
    assert out is not None

    import torch  # noqa: F401  (torch before TensorFlow)

    from zoo.weights import randomize

    inputs = spec.example_inputs(2, args.seed)
    target = spec.build(target_fw, args.seed + 1)
    target_inputs = list(spec.inputs_for(target_fw, inputs).values())
    if args.onnx is not None:
        source, source_inputs = args.onnx, []
    else:
        source = spec.build(args.source, args.seed)
        if args.weights:
            _load_source_weights(source, args.source, args.weights)
        else:
            randomize(source, args.source, args.seed)
        source_inputs = list(spec.inputs_for(args.source, inputs).values())
    report, weights = _port_and_write(args, source, target, target_fw, source_inputs, target_inputs, out,
                                      exporter=args.exporter or spec.torch_exporter, input_names=spec.input_names,
                                      output_names=spec.output_names)
    _print_summary(report, f"the {target_fw} twin of {spec.name}", weights, out)
    _serving_copy(args, target, target_fw, out, target_inputs)
    return 0


def _port_own(args: argparse.Namespace, target_fw: str) -> int:
    """The user's pair: ``--from`` picks the source; or ``--onnx FILE --to`` into the user's model."""
    import torch  # noqa: F401  (torch before TensorFlow)

    from parity.check.pipeline import OTHER, prepare_out_dir
    from parity.cli.own_models import load_models, pair, torch_target_inputs

    option = {"torch": "--torch pkg.module:factory", "tf": "--keras FILE|pkg.module:factory"}
    notes: list[str] = []
    given = {"torch": args.torch, "tf": args.keras}
    if args.onnx is not None:
        if not given[target_fw]:
            raise UsageError(f"--onnx FILE --to {target_fw}: give the model that receives the weights with "
                             f"{option[target_fw]}")
        if given[OTHER[target_fw]]:
            raise UsageError(f"--onnx FILE is the source: drop {option[OTHER[target_fw]].split()[0]}, "
                             "or drop --onnx to port from that model")
    else:
        missing = [option[fw] for fw in ("torch", "tf") if not given[fw]]
        if missing:
            raise UsageError(f"porting your own models needs both: add {missing[0]} (--from {args.source} ports "
                             f"from the {'torch' if args.source == 'torch' else 'Keras'} model into the other)")
    out = prepare_out_dir(args.out)
    assert out is not None
    torch_model, keras_model = load_models(args)
    models = {"torch": torch_model, "tf": keras_model}
    target = models[target_fw]
    if args.onnx is not None:
        target_inputs = torch_target_inputs(args.onnx, target, args, args.seed) if target_fw == "torch" else None
        report, weights = _port_and_write(args, args.onnx, target, target_fw, [], target_inputs, out)
    else:
        source = models[args.source]
        if args.weights:
            _load_source_weights(source, args.source, args.weights)
        described = pair(args, source, target, seed=args.seed)
        spec, inputs = described.spec, described.inputs
        source_inputs = list(spec.inputs_for(args.source, inputs).values())
        target_inputs = list(spec.inputs_for(target_fw, inputs).values())
        report, weights = _port_and_write(args, source, target, target_fw, source_inputs, target_inputs, out,
                                          input_names=list(spec.inputs_for(args.source, inputs)))
        notes = list(described.notes)  # how the inputs were paired and laid out
    name = args.torch if target_fw == "torch" else args.keras
    _print_summary(report, f"the {'torch' if target_fw == 'torch' else 'Keras'} model {name}", weights, out, notes)
    _serving_copy(args, target, target_fw, out, target_inputs)
    return 0


def _serving_copy(args: argparse.Namespace, target: Any, target_fw: str, out: Path, inputs: list[Any] | None) -> None:
    """--fold-batchnorm: the ported model's folded copy beside it (``parity.serving.write_serving_copy``)."""
    if not args.fold_batchnorm:
        return
    from parity.serving import SERVING_NOTE, write_serving_copy

    path, folded, gap = write_serving_copy(target, target_fw, out, inputs)
    measured = f"; max |serving - ported| {gap:.2e} on the example inputs" if gap is not None else ""
    print(f"wrote {path}: {folded} BatchNorms folded ({SERVING_NOTE}){measured}")


def _port_and_write(args: argparse.Namespace, source: Any, target: Any, target_fw: str, source_inputs: list[Any],
                    target_inputs: list[Any] | None, out: Path, **names: Any) -> tuple[Any, Path]:
    """``port_model`` into ``target``, then its weights, the ONNX file and the report, each atomically."""
    from converters.files import write_json_atomic
    from converters.port import port_model
    from parity.check.pipeline import save_weights_atomic

    names.setdefault("exporter", args.exporter or "dynamo")
    with tempfile.TemporaryDirectory(dir=out, prefix=".port-") as tmp:
        onnx_tmp = Path(tmp) / "source.onnx"
        report = port_model(source, target, source_inputs, target_inputs, onnx_path=onnx_tmp,
                            lossless=args.lossless, strict=args.strict, **names)
        if args.onnx is not None:
            shutil.copyfile(args.onnx, onnx_tmp)  # ported where it lies, then copied
        weights = save_weights_atomic(target, target_fw, out)
        os.replace(onnx_tmp, out / "source.onnx")
    write_json_atomic(out / "port_report.json", report.to_dict())
    return report, weights


def _print_summary(report: Any, into: str, weights: Path, out: Path, notes: list[str] | None = None) -> None:
    exact = sum(1 for x in report.layers if x.exact)
    print(f"ported {len(report.layers)} layers into {into} ({exact} exact, {len(report.layers) - exact} "
          "inference-only)")
    for w in report.warnings:
        print(f"  warning: {w}")
    for f in report.lint:
        print(f"  semantic mismatch: {f.message}")
    for note in notes or []:
        print(f"  note: {note}")
    print(f"wrote {weights}, {out / 'source.onnx'}, {out / 'port_report.json'}")
