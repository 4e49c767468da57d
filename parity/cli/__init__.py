"""The `parity` command line: one module per command. Frameworks are imported only inside
the commands that need them, so `parity --help` stays fast."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from parity.cli.common import EPILOG, EXIT_OK, EXIT_USAGE, Parser
from parity.errors import ParityError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="parity",
        description="Port models between PyTorch and TensorFlow/Keras through ONNX, prove numerical parity, "
                    "and compare runtimes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    from parity.cli import bench, check, importer, info, port

    check.add_command(sub)
    info.add_commands(sub)
    port.add_command(sub)
    importer.add_command(sub)
    bench.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handler = args.handler
    try:
        return int(handler(args))  # type: ignore[misc]
    except ParityError as exc:
        print(f"parity {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `parity list | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
