"""`parity port`: move a zoo twin's weights into the other framework's twin and save them."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from parity.errors import UsageError


def add_command(sub: Any) -> None:
    port = sub.add_parser(
        "port", help="port weights into the other framework's twin; write them, the ONNX file and a report",
        description="Port a zoo twin's weights through ONNX into the other framework's twin. Writes the ported "
                    "weights in the target's native format (torch: target.safetensors, Keras: target.weights.h5), "
                    "the ONNX file and port_report.json into --out, each atomically.")
    port.add_argument("model", help="zoo model name (see `parity list`)")
    port.add_argument("--from", dest="source", choices=("torch", "tf"), help="source framework (with a built twin)")
    port.add_argument("--to", dest="target", choices=("torch", "tf"), help="target framework (default: the other)")
    port.add_argument("--onnx", type=Path, metavar="FILE", help="port from this ONNX file instead of a built twin")
    port.add_argument("--weights", type=Path, metavar="FILE",
                      help="load the source twin's weights first (torch: .safetensors or .pt/.pth, read with "
                           "weights_only=True; Keras: .weights.h5); default: seeded random weights")
    port.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the outputs")
    port.add_argument("--preset", default="small")
    port.add_argument("--seed", type=int, default=0, help="seed of the source twin's weights (default: 0)")
    port.add_argument("--exporter", choices=("dynamo", "legacy"),
                      help="torch ONNX exporter (default: dynamo, or what the zoo model needs)")
    port.add_argument("--lossless", action="store_true",
                      help="keep BatchNorm statistics exact (torch exporters; tf2onnx always folds them)")
    port.add_argument("--strict", action="store_true", help="semantic-defaults mismatches are errors")
    port.set_defaults(handler=run_port)


def _load_source_weights(model: Any, framework: str, path: Path) -> None:
    if not path.is_file():
        raise UsageError(f"--weights {path}: no such file")
    if framework == "torch":
        import torch

        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickle code
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UsageError(f"--weights {path}: does not fit the torch twin (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    else:
        if not path.name.endswith(".weights.h5"):
            raise UsageError(f"--weights {path}: Keras weights must be a .weights.h5 file")
        model.load_weights(str(path))


def run_port(args: argparse.Namespace) -> int:
    import zoo
    from converters.files import write_json_atomic
    from parity.check.pipeline import OTHER, prepare_out_dir, save_weights_atomic

    if args.onnx is None and args.source is None:
        raise UsageError("give --from torch|tf (port a built twin) or --onnx FILE (port an existing ONNX file)")
    if args.onnx is not None and args.target is None:
        raise UsageError("with --onnx, say which twin receives the weights: --to torch or --to tf")
    target_fw = args.target or OTHER[args.source]
    if args.source is not None and target_fw == args.source:
        raise UsageError(f"--from and --to are both {target_fw}; port between frameworks")
    try:
        spec = zoo.get(args.model, preset=args.preset)
    except (zoo.UnknownModelError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    out = prepare_out_dir(args.out)
    assert out is not None

    import torch  # noqa: F401  (torch before TensorFlow)

    from converters.port import port_model
    from zoo.weights import randomize

    inputs = spec.example_inputs(2, args.seed)
    target = spec.build(target_fw, args.seed + 1)
    target_inputs = list(spec.inputs_for(target_fw, inputs).values())
    with tempfile.TemporaryDirectory(dir=out, prefix=".port-") as tmp:
        onnx_tmp = Path(tmp) / "source.onnx"
        if args.onnx is not None:
            source, source_inputs = args.onnx, []  # ported where it lies, then copied
        else:
            source = spec.build(args.source, args.seed)
            if args.weights:
                _load_source_weights(source, args.source, args.weights)
            else:
                randomize(source, args.source, args.seed)
            source_inputs = list(spec.inputs_for(args.source, inputs).values())
        report = port_model(source, target, source_inputs, target_inputs, onnx_path=onnx_tmp,
                            exporter=args.exporter or spec.torch_exporter, lossless=args.lossless, strict=args.strict,
                            input_names=spec.input_names, output_names=spec.output_names)
        if args.onnx is not None:
            shutil.copyfile(args.onnx, onnx_tmp)
        weights = save_weights_atomic(target, target_fw, out)
        os.replace(onnx_tmp, out / "source.onnx")
    write_json_atomic(out / "port_report.json", report.to_dict())
    exact = sum(1 for x in report.layers if x.exact)
    print(f"ported {len(report.layers)} layers into the {target_fw} twin of {spec.name} "
          f"({exact} exact, {len(report.layers) - exact} inference-only)")
    for w in report.warnings:
        print(f"  warning: {w}")
    for f in report.lint:
        print(f"  semantic mismatch: {f.message}")
    print(f"wrote {weights}, {out / 'source.onnx'}, {out / 'port_report.json'}")
    return 0
