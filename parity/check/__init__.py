"""`parity check`: export, port, run every runtime on the same inputs and compare."""

from parity.check.pipeline import CheckOptions, CheckResult, format_table, run_check

__all__ = ["CheckOptions", "CheckResult", "format_table", "run_check"]
