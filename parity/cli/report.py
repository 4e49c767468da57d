"""`parity report RESULT.json... -o report.html`: one self-contained HTML page of check and bench results."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from parity.cli.common import EXIT_OK
from parity.errors import UsageError


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="write one self-contained HTML page of check and bench results",
        description="Render saved results (`parity check --json`, `parity bench --json`) into one HTML file with "
                    "inline plots and styles (no network): environment, parity table, layer errors, gradients, "
                    "training steps, latency, throughput, roofline, the decision summary and skipped runtimes.")
    p.add_argument("results", nargs="+", type=Path, metavar="RESULT.json", help="check and/or bench results")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="PATH.html", help="the HTML file to write")
    p.set_defaults(handler=run_report)


def check_writable(path: Path) -> None:
    """Refuse an output that cannot be written before any work is done."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--out {path}: cannot write a file there; give a file path in an existing, writable folder")


def run_report(args: argparse.Namespace) -> int:
    from parity.report.html import write_report

    check_writable(args.out)
    write_report(args.results, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK
