"""The `parity` command line. Frameworks are imported only inside the commands that need them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from parity.errors import ParityError

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2

EPILOG = """exit codes:
  0  every comparison passed (or the command succeeded)
  1  a parity failure: some runtime's outputs differ from the source beyond tolerance
  2  a usage or input error (unknown model, bad option, unwritable path, broken ONNX file)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep the message to one line
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="parity",
        description="Port models between PyTorch and TensorFlow/Keras through ONNX, prove numerical parity, "
                    "and compare runtimes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    check = sub.add_parser("check", help="port a zoo twin through ONNX and compare torch, tf and ONNX Runtime",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("model", nargs="?", help="zoo model name (see `parity list`)")
    check.add_argument("--all", action="store_true", help="check every zoo model, both directions unless --from")
    check.add_argument("--from", dest="source", choices=("torch", "tf"),
                       help="framework of the source twin whose weights are ported (default: torch)")
    check.add_argument("--preset", help="zoo preset (default: small; with a torchvision --checkpoint: standard)")
    check.add_argument("--batch", type=_positive_int, default=2, help="batch size of the seeded inputs (default: 2)")
    check.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default: 0)")
    check.add_argument("--atol", type=_nonneg_float, help="absolute tolerance (default: the spec's, scaled to the output)")
    check.add_argument("--rtol", type=_nonneg_float, help="relative tolerance (default: the spec's)")
    check.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    check.add_argument("--threads", type=_positive_int, help="intra-op threads for all runtimes")
    check.add_argument("--precision", choices=("fp32", "tf32"), default="fp32",
                       help="fp32: TF32 off everywhere (strict); tf32: on, tolerances widened and reported")
    check.add_argument("--exporter", choices=("dynamo", "legacy"),
                       help="torch ONNX exporter (default: dynamo, or what the zoo model needs)")
    check.add_argument("--no-lossless", dest="lossless", action="store_false",
                       help="let the torch exporter fold BatchNorm into convs (ported inference-only)")
    check.add_argument("--strict", action="store_true",
                       help="a semantic-defaults mismatch between the twins (epsilon, momentum, GELU form...) is an error")
    check.add_argument("--json", type=Path, metavar="PATH", help="write the result as JSON")
    check.add_argument("--out", type=Path, metavar="DIR", help="keep the ONNX files, ported weights and port report")
    check.add_argument("--checkpoint", type=Path, metavar="PATH",
                       help="source weights from a published checkpoint (see `parity import`), not randomized")
    check.add_argument("--text", action="append", default=[], metavar="TEXT",
                       help="bert --checkpoint: a real input text (repeatable; one padded batch)")
    check.add_argument("--text-file", type=Path, metavar="PATH", help="bert --checkpoint: texts, one per line")
    diag = check.add_argument_group("diagnostics (layer-by-layer localisation also runs whenever a check fails)")
    diag.add_argument("--layers", action="store_true",
                      help="compare every named layer's activation in torch, Keras and ONNX Runtime; name the first "
                           "over tolerance")
    diag.add_argument("--grads", action="store_true",
                      help="compare every parameter's gradient of the same loss on the same batch")
    diag.add_argument("--train-steps", type=_positive_int, nargs="?", const=5, default=0, metavar="N",
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

    doctor = sub.add_parser("doctor", help="print versions, devices, providers, threads and precision settings")
    doctor.add_argument("--json", action="store_true", help="print JSON")

    lst = sub.add_parser("list", help="list the zoo models")
    lst.add_argument("--json", action="store_true", help="print JSON")

    from parity import import_cmd, port_cmd

    port_cmd.add_command(sub)
    import_cmd.add_command(sub)
    try:
        from parity import bench_cli
    except ImportError:
        bench_cli = None  # type: ignore[assignment]
    if bench_cli is not None:
        bench_cli.add_commands(sub)
    return parser


def _check_json_path(path: Path | None) -> None:
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ParityError(f"--json {path}: cannot write a file there; give a path in an existing, writable folder")


def cmd_check(args: argparse.Namespace) -> int:
    from parity.check import CheckOptions, format_table, run_check, write_json_atomic

    _check_json_path(args.json)
    if args.all == bool(args.model):
        raise ParityError("give one model name, or --all for every zoo model (not both)")
    if args.all and args.out:
        raise ParityError("--out keeps one model's files; it cannot be combined with --all")
    if args.all and args.plot:
        raise ParityError("--plot draws one model's layers; it cannot be combined with --all")
    if args.all and args.checkpoint:
        raise ParityError("--checkpoint is one model's weights; it cannot be combined with --all")
    args.preset = args.preset or ("standard" if args.checkpoint else "small")
    if args.text_file:
        from parity.text import read_texts

        args.text = [*args.text, *read_texts(args.text_file)]
    import zoo

    models = zoo.names() if args.all else [args.model]
    sources = [args.source] if args.source else (["torch", "tf"] if args.all else ["torch"])
    results = []
    for model in models:
        for source in sources:
            options = CheckOptions(
                model=model, source=source, preset=args.preset, batch=args.batch, seed=args.seed,
                atol=args.atol, rtol=args.rtol, device=args.device, threads=args.threads, precision=args.precision,
                exporter=args.exporter, lossless=args.lossless, strict=args.strict, out=args.out,
                checkpoint=args.checkpoint, texts=tuple(args.text),
                layers=args.layers, grads=args.grads, train_steps=args.train_steps, loss=args.loss, plot=args.plot,
                optimizers=("sgd", "adam") if args.optimizer == "both" else (args.optimizer,),
                strict_tolerances=args.strict_tolerances,
            )
            result = run_check(options)
            print(format_table(result))
            if result.layers or result.gradients or result.training:
                from parity.diagnostics import format_diagnostics

                print(format_diagnostics(result))
            results.append(result)
    passed = all(r.passed for r in results)
    if args.all:
        print(f"\n{sum(r.passed for r in results)} of {len(results)} checks passed")
        for r in results:
            if not r.passed:
                print(f"  FAILED: {r.model} --from {r.source}")
    if args.json:
        data = results[0].to_dict() if len(results) == 1 else {
            "passed": passed, "results": [r.to_dict() for r in results]}
        write_json_atomic(args.json, data)
    return EXIT_OK if passed else EXIT_MISMATCH


def cmd_doctor(args: argparse.Namespace) -> int:
    from parity.env import capture

    env = capture()
    if args.json:
        print(json.dumps(env, indent=2, default=str))
        return EXIT_OK
    v = env["versions"]
    print("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    print(f"platform: {env['platform']} ({env['cpu_count']} CPUs)")
    t, tf, ort = env["torch"], env["tensorflow"], env["onnxruntime"]
    if t["available"]:
        print(f"torch: devices {t['devices']}, threads intra {t['intra_op_threads']} / inter {t['inter_op_threads']}, "
              f"TF32 matmul {t['tf32']['matmul']} / cuDNN conv {t['tf32']['cudnn_conv']}, CUDA {t['cuda']}")
    else:
        print(f"torch: not available ({t['error']})")
    if tf["available"]:
        print(f"tensorflow: devices {tf['devices']}, threads intra {tf['intra_op_threads']} / inter "
              f"{tf['inter_op_threads']} (0 = TF's default), TF32 {tf['tf32']}, oneDNN {'on' if tf['onednn'] else 'off'}")
    else:
        print(f"tensorflow: not available ({tf['error']})")
    if ort["available"]:
        print(f"onnxruntime: providers {ort['providers']}")
    else:
        print(f"onnxruntime: not available ({ort['error']})")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    import zoo

    rows = []
    for name in zoo.names():
        spec = zoo.get(name)
        row = {"name": name, "family": spec.family, "presets": list(spec.presets),
               "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "layout": s.layout}
                          for s in spec.inputs]}
        if args.json:
            row["parameters"] = _param_counts(spec)  # at the default (small) preset
            if spec.param_difference:
                row["parameter_difference"] = {"torch_minus_tf": spec.param_difference,
                                               "reason": spec.param_difference_reason}
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            shapes = ", ".join(f"{i['name']} {tuple(i['shape'])} {i['layout']}" for i in r["inputs"])
            print(f"{r['name']:<14}{r['family']:<14}presets: {', '.join(r['presets']):<18}inputs: {shapes}")
    return EXIT_OK


def _param_counts(spec: object) -> dict[str, int]:
    import torch  # noqa: F401  (before TensorFlow)

    tm = spec.build_torch(0)  # type: ignore[attr-defined]
    km = spec.build_keras(0)  # type: ignore[attr-defined]
    return {"torch": int(sum(p.numel() for p in tm.parameters())),
            "tf": int(sum(int(w.numpy().size) for w in km.trainable_weights))}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handlers = {"check": cmd_check, "doctor": cmd_doctor, "list": cmd_list}
    handler = handlers.get(args.command) or getattr(args, "handler", None)
    try:
        return int(handler(args))  # type: ignore[misc]
    except ParityError as exc:
        print(f"parity {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
