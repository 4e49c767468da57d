"""The pytest plugin (entry point ``pytest11``: ``parity``): the ``parity_check`` fixture.

``def test_port(parity_check): parity_check(torch_model, keras_model, {"x": (3, 32, 32)})``
runs ``parity.testing.assert_parity`` and returns the CheckResult. ``--parity-device``
sets the device of every such check (default: auto). Loading the plugin imports no
framework, so it costs nothing at pytest startup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "parity checks of torch/Keras model pairs")
    group.addoption("--parity-device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="device for the parity_check fixture's checks (default: auto)")


@pytest.fixture
def parity_check(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``parity_check(source, target, inputs, **kwargs)``: assert parity, return the CheckResult."""
    device = request.config.getoption("parity_device", default="auto")

    def check(source: Any, target: Any, inputs: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        from parity.testing import assert_parity

        kwargs.setdefault("device", device)
        return assert_parity(source, target, inputs, **kwargs)

    return check
