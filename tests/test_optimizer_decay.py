"""The optimizers' own weight decay: compared by the lint (factor and coupled/decoupled semantics) and by
training parity, which builds each side from its own optimizer so that a mismatch diverges exactly at the
parameters decayed differently (tests/planted_bugs.py holds the twins and the optimizer pairs)."""

from __future__ import annotations

import pytest
from planted_bugs import build, user_optimizers

from converters.lint import lint_optimizers, optimizer_settings
from parity.diagnostics.training import train_parity
from parity.diagnostics.user_optimizers import pair_config
from parity.errors import UsageError


def _fields(findings: list) -> dict[str, tuple]:
    return {f.field: (f.source_value, f.target_value) for f in findings}


def test_lint_names_both_weight_decay_settings() -> None:
    import keras
    import torch

    params = list(torch.nn.Linear(2, 2).parameters())
    coupled = lint_optimizers(torch.optim.Adam(params, weight_decay=0.01), keras.optimizers.AdamW(weight_decay=0.01))
    assert _fields(coupled) == {"optimizer.decay": ("L2-coupled (wd*p added to the gradient)",
                                                    "decoupled (p -= lr*wd*p)")}
    assert "torch.optim.Adam" in coupled[0].message and "keras.optimizers.AdamW" in coupled[0].message
    # each framework's default AdamW decay: torch 0.01, Keras 0.004
    assert _fields(lint_optimizers(torch.optim.AdamW(params), keras.optimizers.AdamW())) == {
        "optimizer.weight_decay": (0.01, 0.004)}
    assert _fields(lint_optimizers(keras.optimizers.SGD(weight_decay=0.01), torch.optim.SGD(params, lr=0.1))) == {
        "optimizer.weight_decay": (0.01, 0.0), "optimizer.decay": ("decoupled (p -= lr*wd*p)", "none")}
    assert lint_optimizers(torch.optim.AdamW(params, weight_decay=0.004), keras.optimizers.AdamW()) == []
    groups = [{"params": params[:1], "weight_decay": 0.01}, {"params": params[1:], "weight_decay": 0.0}]
    assert optimizer_settings(torch.optim.AdamW(groups))["weight_decay"] == 0.01  # a no-decay group is no factor


def _failing(bug: str) -> tuple[set[str], set[str]]:
    """The parameters that fail after 3 steps with the mlp twins' own optimizers, and those that pass."""
    tm, km, spec = build("mlp", bug, 0)
    cfg = pair_config(user_optimizers(bug, tm, km), tm, km)
    run = train_parity(spec, tm, km, steps=3, optimizers=[cfg], batch=2, seed=0).runs[cfg.run_name]
    return {r.name for r in run.parameters if not r.passed}, {r.name for r in run.parameters if r.passed}


KERNELS = {"fc1.kernel", "fc2.kernel", "head.kernel"}
BIASES = {"fc1.bias", "fc2.bias", "head.bias"}


@pytest.mark.parametrize(("bug", "diverged"), [
    ("", set()),  # the same AdamW on both sides, biases excluded from decay on both
    ("bias_decayed_keras", BIASES),  # decayed on the Keras side only: the biases, and nothing else
    ("adam_l2_for_adamw", KERNELS),  # coupled on torch, decoupled on Keras: the decayed kernels
    ("adamw_default_decay", KERNELS | BIASES),  # 0.01 vs 0.004 on every parameter
])
def test_weight_decay_mismatch_diverges_at_the_decayed_parameters(bug: str, diverged: set[str]) -> None:
    failed, passed = _failing(bug)
    assert failed == diverged, (failed, passed)


def test_the_pair_must_be_one_torch_and_one_keras_optimizer() -> None:
    import keras

    with pytest.raises(UsageError, match="one torch and one Keras"):
        pair_config([keras.optimizers.Adam(), keras.optimizers.Adam()], None, None)


def test_check_models_prints_the_optimizer_lint_and_fails_training() -> None:
    from parity.api import check_models
    from parity.check.results import format_table

    tm, km, _ = build("mlp", "adam_l2_for_adamw", 0)
    result = check_models(tm, km, {"x": (8,)}, port=False, train_steps=2,
                          optimizers=user_optimizers("adam_l2_for_adamw", tm, km))
    table = format_table(result)
    assert "semantic mismatch: optimizer.decay differs: source 'optimizer torch.optim.Adam'" in table
    assert not result.passed and not result.failures  # outputs agree; training does not
    assert result.training.runs["Adam/AdamW"].first_divergence == "fc1.kernel"
