"""`parity import`: load a published checkpoint into a zoo twin, account for every key, save the twin's weights."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from converters.files import atomic_path
from parity.cli.common import path_arg
from parity.errors import UsageError


def add_command(sub: Any) -> None:
    cmd = sub.add_parser(
        "import", help="import a published checkpoint (Hugging Face BERT, torchvision state dict) into a zoo twin",
        description="Load a checkpoint into the torch twin of MODEL: bert takes a Hugging Face folder (config.json "
                    "+ model.safetensors; the config decides the sizes); resnet18, resnet50 and mobilenet_v2 take a "
                    "torchvision state dict (.safetensors, or .pth/.pt read with weights_only=True) at --preset. "
                    "Prints which keys were consumed and which were left unused, and why; with --out, writes the "
                    "twin's weights (MODEL.safetensors, its config in the metadata) and import_report.json, each "
                    "atomically. Port them on with `parity check MODEL --checkpoint PATH`.")
    cmd.add_argument("model", help="bert, resnet18, resnet50 or mobilenet_v2")
    cmd.add_argument("path", type=path_arg, help="the checkpoint: a Hugging Face folder, or a state-dict file")
    cmd.add_argument("--preset", help="twin size for state-dict checkpoints (default: standard, torchvision's sizes)")
    cmd.add_argument("--out", type=path_arg, metavar="DIR",
                     help="write MODEL.safetensors and import_report.json here (only if the import succeeds)")
    cmd.add_argument("--overwrite", action="store_true", help="replace the files in a non-empty --out folder")
    cmd.set_defaults(handler=run_import)


def save_state_atomic(model: Any, path: Path, metadata: dict[str, str]) -> Path:
    """The torch model's state dict as safetensors, written to a temporary file and renamed into place."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def run_import(args: argparse.Namespace) -> int:
    from converters.files import output_folder

    if not args.path.exists():
        raise UsageError(f"{args.path}: no such file or folder")
    with output_folder(args.out, overwrite=args.overwrite) as out:
        return _import(args, out)


def _import(args: argparse.Namespace, out: Path | None) -> int:
    import torch  # noqa: F401  (torch before TensorFlow)

    from converters.checkpoints import import_checkpoint
    from converters.files import write_json_atomic

    imported = import_checkpoint(args.model, args.path, preset=args.preset)
    for line in imported.summary():
        print(line)
    if out is not None:
        meta = {"zoo_model": imported.name, "preset": str(imported.spec.preset), "source": imported.path,
                "config": json.dumps(dataclasses.asdict(imported.spec.config))}
        weights = save_state_atomic(imported.model, out / f"{imported.name}.safetensors", meta)
        write_json_atomic(out / "import_report.json", imported.to_dict())
        print(f"wrote {weights} and {out / 'import_report.json'}")
    return 0
