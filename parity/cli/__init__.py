"""The `parity` command line: one module per command. Frameworks are imported only inside
the commands that need them, so `parity --help` stays fast."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from parity.cli.common import EPILOG, EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Parser
from parity.errors import ParityError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="parity",
        description="Port models between PyTorch and TensorFlow/Keras through ONNX, prove numerical parity, "
                    "and compare runtimes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"parity {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    from parity.cli import bench, check, importer, info, port, sweep

    check.add_command(sub)
    info.add_commands(sub)
    port.add_command(sub)
    importer.add_command(sub)
    bench.add_commands(sub)
    sweep.add_command(sub)
    from parity.cli import diff, report, schema

    for command in (diff, report, schema):
        command.add_command(sub)
    from parity.cli import convert

    convert.add_command(sub)
    return parser


def package_version() -> str:
    """The installed distribution's version (pyproject's), or 'unknown' from a bare source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("parity")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from parity.cli.quiet import filtered_stderr

    with filtered_stderr():  # TensorFlow's start-up lines stay off the terminal
        return run_handler(args)


def run_handler(args: argparse.Namespace) -> int:
    """The one error boundary: the user's errors exit 2 with one line, Ctrl-C 130, our bugs 3 with a traceback."""
    try:
        return int(args.handler(args))
    except ParityError as exc:
        print(f"parity {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except MemoryError as exc:  # a size the machine cannot hold: the input's size, not our bug
        print(f"parity {args.command}: error: out of memory ({type(exc).__name__}: {one_line(exc)}); use a "
              "smaller --batch or --preset, or a machine with more memory", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\nparity {args.command}: interrupted; no output files were left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `parity list | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception:  # our own bug: show it whole, never dressed as the user's mistake
        traceback.print_exc()
        print(f"parity {args.command}: internal error (a bug in parity, not in your input); please report it "
              "with the traceback above", file=sys.stderr)
        return EXIT_BUG


def one_line(exc: BaseException) -> str:
    """The error's message on one line (framework messages often span several)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text if len(text) <= 600 else text[:597] + "..."


if __name__ == "__main__":
    raise SystemExit(main())
