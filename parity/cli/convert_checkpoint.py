"""`parity convert MODEL --checkpoint DIR [--text-file FILE]`: the Keras twin of a published torch checkpoint,
generated from its ONNX export and checked as `parity check --checkpoint` checks the hand-written twin."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from parity.cli.common import text_arg
from parity.errors import UsageError


def add_checkpoint_arguments(cmd: Any) -> None:
    cmd.add_argument("--checkpoint", type=Path, metavar="PATH",
                     help="MODEL's torch weights from a published checkpoint (see `parity import`), not randomized; "
                          "the twin is generated from its export")
    cmd.add_argument("--text", type=text_arg, action="append", default=[], metavar="TEXT",
                     help="bert --checkpoint: a real input text (repeatable; one padded batch)")
    cmd.add_argument("--text-file", type=Path, metavar="PATH", help="bert --checkpoint: texts, one per line")


def convert_checkpoint_args(args: argparse.Namespace, source: str, options: dict[str, Any]) -> Any:
    """The ``ConvertResult`` of ``--checkpoint`` (refusing what does not combine with it)."""
    from parity.check.text import read_texts
    from parity.convert import convert_checkpoint

    if args.checkpoint is None:
        raise UsageError("--text/--text-file need --checkpoint DIR (the checkpoint's tokenizer tokenises them)")
    if not args.model or args.torch or args.keras:
        raise UsageError("--checkpoint imports into a zoo MODEL's torch twin: give MODEL, not --torch/--keras")
    if source != "torch":
        raise UsageError("--checkpoint imports a PyTorch checkpoint, so the source is torch: use --from torch")
    if options.pop("fold_batchnorm", False):
        raise UsageError("--fold-batchnorm is not available with --checkpoint")
    texts = [*args.text, *(read_texts(args.text_file) if args.text_file else [])]
    return convert_checkpoint(args.model, args.checkpoint, args.out, texts=tuple(texts), **options)
