"""``assert_parity``: a parity check as a test assertion, for your own CI.

Raises ``AssertionError`` with the comparison table and the layer-by-layer localisation
(it runs whenever a comparison fails) naming the first diverging layer. The pytest plugin
(``parity.pytest_plugin``, registered as the ``pytest11`` entry point ``parity``) wraps it
in the ``parity_check`` fixture. Importing this module imports no framework.
"""

from __future__ import annotations

from typing import Any

from parity.check.results import CheckResult, format_table

__all__ = ["assert_parity", "failure_message"]


def failure_message(result: CheckResult) -> str:
    """The table, the diagnostics, and one line naming the first diverging layer (if localised)."""
    from parity.diagnostics import format_diagnostics

    lines = [format_table(result)]
    if any(part is not None for part in (result.layers, result.gradients, result.training)):
        lines.append(format_diagnostics(result))
    first = result.layers.first_divergence if result.layers is not None else None
    lines.append(f"first diverging layer: {first}" if first else
                 "first diverging layer: none found (every compared layer is within tolerance)")
    return "\n".join(lines)


def assert_parity(source: Any, target: Any, inputs: Any, **kwargs: Any) -> CheckResult:
    """``parity.check_models(source, target, inputs, **kwargs)``; raise AssertionError unless it passed."""
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    from parity.api import check_models

    result = check_models(source, target, inputs, **kwargs)
    if not result.passed:
        raise AssertionError("parity check failed:\n" + failure_message(result))
    return result
