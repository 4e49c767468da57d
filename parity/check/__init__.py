"""`parity check`: export, port, run every runtime on the same inputs and compare."""

from parity.check.pipeline import run_check
from parity.check.results import CheckOptions, CheckResult, format_table

__all__ = ["CheckOptions", "CheckResult", "format_table", "run_check"]
