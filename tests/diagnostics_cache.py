"""One `parity check MODEL --layers --grads --train-steps 5` per zoo model, shared by the test modules.

The whole check (build, export, port, four runtimes, then the three diagnostics) runs
once per model and test session; tests/test_localize.py, tests/test_grads_training.py and
tests/test_zoo_check.py read different parts of the same result. Its files (the ONNX exports,
the ported weights, the port report) stay in a temporary folder until the session ends.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from parity.check import CheckOptions, CheckResult, run_check

TRAIN_STEPS = 5

# ResNet-50's full diagnostics (layers, gradients, 5 SGD and 5 Adam steps) take 30-50 s on 2 cores;
# `make test` leaves them to `make test-slow`. Its family stays covered by resnet18's diagnostics and
# by the fast zoo matrix (tests/test_zoo_check.py, both directions, resnet50 included).
HEAVY = ("resnet50",)


def zoo_params(models: list[str]) -> list[object]:
    """``models`` as pytest parameters, the heavy ones marked slow."""
    import pytest

    return [pytest.param(m, marks=pytest.mark.slow) if m in HEAVY else m for m in models]


def _quiet(msg: str) -> None:
    pass


@functools.cache
def full_check(model: str, source: str = "torch") -> CheckResult:
    out = Path(tempfile.mkdtemp(prefix=f"parity-{model}-{source}-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    options = CheckOptions(model=model, source=source, batch=2, seed=0, layers=True, grads=True,
                           train_steps=TRAIN_STEPS, optimizers=("sgd", "adam"), out=out)
    return run_check(options, progress=_quiet)
