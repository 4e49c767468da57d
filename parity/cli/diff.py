"""`parity diff A.json B.json`: what changed between two check or bench results; exit 1 on a regression."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from parity.cli.common import EXIT_MISMATCH, EXIT_OK
from parity.errors import UsageError


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "diff", help="compare two check or bench results; exit 1 on a regression past the thresholds",
        description="Compare two results of `parity check --json` or `parity bench --json` (A before, B after): "
                    "parity errors by output, layer, parameter and optimizer; latency by device, task, runtime "
                    "and batch. Exits 1 when a regression passes a threshold, naming the cell.")
    p.add_argument("before", type=Path, help="the earlier result (JSON)")
    p.add_argument("after", type=Path, help="the later result (JSON)")
    p.add_argument("--max-slowdown", type=_above_one, default=1.10, metavar="RATIO",
                   help="a median this many times the earlier one, with its 95%% bootstrap interval above 1, is a "
                        "regression (default: 1.10)")
    p.add_argument("--max-error-growth", type=_above_one, default=10.0, metavar="RATIO",
                   help="an error this many times the earlier one is a regression (errors under 1e-3 x atol count "
                        "as 1e-3 x atol: round-off; default: 10)")
    p.add_argument("--regressions-only", action="store_true", help="print only the regressions and the count")
    p.set_defaults(handler=run_diff)


def _above_one(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ratio such as 1.10, got {text!r}") from None
    if not value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a ratio >= 1 (1.10 allows 10%% growth), got {value}")
    return value


def read_result(path: Path) -> dict[str, Any]:
    """A result file parsed as JSON; ``UsageError`` naming the file when it cannot be."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file; give a JSON result written by `parity check/bench --json`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a JSON {type(data).__name__}, not a parity result object")
    return data


def run_diff(args: argparse.Namespace) -> int:
    from parity.report.diff import diff, format_diff, load_warnings

    before, after = read_result(args.before), read_result(args.after)
    changes = diff(before, after, max_slowdown=args.max_slowdown, max_error_growth=args.max_error_growth)
    print(f"parity diff {args.before} -> {args.after}")
    for line in load_warnings(before, after):
        print(line)
    print(format_diff(changes, only_regressions=args.regressions_only))
    return EXIT_MISMATCH if any(c.regression for c in changes) else EXIT_OK
