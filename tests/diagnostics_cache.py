"""One `parity check MODEL --layers --grads --train-steps 5` per zoo model, shared by the test modules.

The whole check (build, export, port, four runtimes, then the three diagnostics) runs
once per model and test session; tests/test_localize.py and tests/test_grads_training.py
read different parts of the same result.
"""

from __future__ import annotations

import functools

from parity.check import CheckOptions, CheckResult, run_check

TRAIN_STEPS = 5


def _quiet(msg: str) -> None:
    pass


@functools.cache
def full_check(model: str, source: str = "torch") -> CheckResult:
    options = CheckOptions(model=model, source=source, batch=2, seed=0, layers=True, grads=True,
                           train_steps=TRAIN_STEPS, optimizers=("sgd", "adam"))
    return run_check(options, progress=_quiet)
