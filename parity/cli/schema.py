"""`parity schema check|bench`: print the published JSON Schema of a result."""

from __future__ import annotations

import argparse
import json
from typing import Any

from parity.cli.common import EXIT_OK


def add_command(sub: Any) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of `parity check --json` or `parity bench --json`",
                       description="Print the published JSON Schema (draft 2020-12) of a result file.")
    p.add_argument("kind", choices=("check", "bench"))
    p.set_defaults(handler=run_schema)


def run_schema(args: argparse.Namespace) -> int:
    from parity.report.schema import SCHEMAS

    print(json.dumps(SCHEMAS[args.kind], indent=2, sort_keys=True))
    return EXIT_OK
