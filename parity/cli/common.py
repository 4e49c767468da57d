"""What every command shares: exit codes, the parser class, option types, path checks."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from parity.errors import ParityError

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EPILOG = """exit codes:
  0    every comparison passed (or the command succeeded)
  1    a parity failure: some runtime's outputs differ from the source beyond tolerance
  2    a usage or input error (bad option or file, unwritable or non-empty --out, broken ONNX file)
  3    a bug in parity itself (the traceback is printed: please report it)
  130  interrupted (Ctrl-C); no output files are left behind
"""
SEED_MAX = 2**32 - 1  # numpy's and TensorFlow's seeds are 32-bit
BATCH_MAX = 1 << 20  # beyond a million rows a check or a benchmark cell is a typo, not a plan
INPUT_BYTES_MAX = 4 << 30  # the seeded inputs of one batch; activations need several times more
BUDGET_MAX_S = 3600.0  # one benchmark cell; longer runs are a typo (and inf would never end)
TOLERANCE_MAX = 1e6  # an atol/rtol beyond this accepts anything: it is not a check any more


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


def batch_size(text: str) -> int:
    """A positive batch size, at most ``BATCH_MAX``."""
    value = positive_int(text)
    if value > BATCH_MAX:
        raise argparse.ArgumentTypeError(f"expected a batch size of at most {BATCH_MAX:,}, got {value:,}")
    return value


def seed(text: str) -> int:
    """A seed in 0..2**32-1 (numpy and TensorFlow take 32-bit seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a seed in 0..{SEED_MAX} (2**32-1), got {value}")
    return value


def nonneg_float(text: str) -> float:
    """A finite tolerance in [0, TOLERANCE_MAX]: nan and inf would pass anything."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r} (it would accept any difference)")
    if value < 0 or value > TOLERANCE_MAX:
        raise argparse.ArgumentTypeError(f"expected a number in 0..{TOLERANCE_MAX:g}, got {value:g}")
    return value


def budget_seconds(text: str) -> float:
    """Seconds of timed calls per benchmark cell: finite, in [0, BUDGET_MAX_S]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= BUDGET_MAX_S:
        raise argparse.ArgumentTypeError(f"expected seconds in 0..{BUDGET_MAX_S:g}, got {text!r}")
    return value


def path_arg(text: str) -> Path:
    """A path that is not empty (``Path('')`` would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return Path(text)


def text_arg(text: str) -> str:
    """An input text that is not blank (a blank one tokenises to nothing but padding)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a non-blank text, got {text!r}")
    return text


def check_json_path(path: Path | None, out: Path | None = None) -> None:
    """Prove ``--json PATH`` writable (a real temporary file) and apart from ``--out`` before any work."""
    if path is None:
        return
    from converters.files import probe_writable_file

    if out is not None:
        json_path, out_path = path.resolve(), out.resolve()
        if json_path == out_path or out_path in json_path.parents:
            raise ParityError(f"--json {path} lies in --out {out}, which holds the run's files; write the JSON "
                              "outside that folder")
    probe_writable_file(path, "--json")


def check_zoo_batch(models: list[str], preset: str, batch: int) -> None:
    """``check_input_memory`` for zoo models; an unknown name is left for the check to report."""
    import zoo

    for name in models:
        try:
            spec = zoo.get(name, preset=preset)
        except (zoo.UnknownModelError, ValueError):
            continue
        check_input_memory([(i.name, i.shape, i.dtype) for i in spec.inputs], batch)


def check_input_memory(inputs: list[tuple[str, tuple[int, ...], str]], batch: int) -> None:
    """Refuse a batch whose seeded inputs alone would exceed ``INPUT_BYTES_MAX``, before allocating them."""
    import numpy as np

    total = sum(batch * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                for _, shape, dtype in inputs)
    if total > INPUT_BYTES_MAX:
        raise ParityError(f"--batch {batch}: the inputs alone would take {total / 2**30:.1f} GiB (limit "
                          f"{INPUT_BYTES_MAX / 2**30:.0f} GiB, activations need several times more); use a smaller "
                          "--batch")


def bounded_int(low: int, high: int) -> Any:
    """An argparse type: an integer in ``low..high``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, got {value}")
        return value
    return parse


def check_some_gpu() -> None:
    """``--device cuda`` with no runtime that sees a GPU is the user's option (exit 2), not a failed measurement."""
    from parity.errors import DeviceUnavailableError
    from parity.runners import check_device

    reasons = []
    for kind in ("torch", "tf", "ort"):
        try:
            check_device("cuda", (kind,))
            return
        except DeviceUnavailableError as exc:
            reasons.append(str(exc))
        except ImportError as exc:  # a framework that is not installed cannot use the GPU either
            reasons.append(f"{kind}: not installed ({exc})")
    raise DeviceUnavailableError(f"--device cuda: no runtime here sees a GPU ({reasons[0]}); use --device cpu or auto")
