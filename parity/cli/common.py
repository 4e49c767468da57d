"""What every command shares: exit codes, the parser class, option types, path checks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from parity.errors import ParityError

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2

EPILOG = """exit codes:
  0  every comparison passed (or the command succeeded)
  1  a parity failure: some runtime's outputs differ from the source beyond tolerance
  2  a usage or input error (unknown model, bad option, unwritable path, broken ONNX file)
"""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep the message to one line
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {value}")
    return value


def check_json_path(path: Path | None) -> None:
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ParityError(f"--json {path}: cannot write a file there; give a path in an existing, writable folder")
