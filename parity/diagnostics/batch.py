"""The batch for training-mode parity: large enough that every BatchNorm is well conditioned.

Training-mode BatchNorm divides by the batch's standard deviation per channel; over very
few values per channel (a batch of 2 on a 1x1 map) that amplifies rounding by 100x and
more. ``choose_batch`` raises the batch until every BatchNorm sees at least
``MIN_VALUES_PER_CHANNEL`` values per channel, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_VALUES_PER_CHANNEL = 8


@dataclass
class BatchChoice:
    """The batch size for training-mode parity and why: BatchNorm conditioning (see ``choose_batch``)."""

    requested: int
    used: int
    values_per_channel: dict[str, int]  # at the requested batch, per training-mode BatchNorm
    condition: dict[str, float]  # kappa per BatchNorm at the batch used
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        worst = max(self.condition.items(), key=lambda kv: kv[1], default=("", 0.0))
        return {"requested": self.requested, "used": self.used, "reason": self.reason,
                "min_values_per_channel": min(self.values_per_channel.values(), default=None),
                "worst_batchnorm_condition": {"layer": worst[0], "kappa": worst[1]} if worst[0] else None}


def batchnorm_stats(torch_model: Any, inputs: Sequence[np.ndarray]) -> tuple[dict[str, int], dict[str, float]]:
    """Per training-mode BatchNorm: values per channel, and kappa = max|x| / (max|y| sqrt(min_c var_c + eps)),
    how much it amplifies a relative rounding error of its input (about 1 when well conditioned)."""
    import torch
    from torch import nn

    from converters.torch_hooks import run_with_hooks

    counts: dict[str, int] = {}
    kappa: dict[str, float] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(mod: Any, args: Any, out: Any) -> None:
            x, y = args[0].detach().double(), out.detach().double()
            counts[name] = int(x.numel() // x.shape[1])
            var = x.var(dim=[0, *range(2, x.ndim)], unbiased=False)
            var = var[var > 0]
            if var.numel() and float(y.abs().max()) > 0:
                kappa[name] = float(x.abs().max() / (y.abs().max() * torch.sqrt(var.min() + mod.eps)))
        return record

    norms = [(n, m) for n, m in torch_model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return counts, kappa
    was = torch_model.training
    state = {k: v.clone() for k, v in torch_model.state_dict().items()}
    try:
        torch_model.train()
        run_with_hooks(torch_model, inputs, norms, hook)
    finally:
        torch_model.load_state_dict(state)
        torch_model.train(was)
    return counts, kappa


def choose_batch(spec: Any, torch_model: Any, batch: int, seed: int,
                 min_values: int = MIN_VALUES_PER_CHANNEL) -> BatchChoice:
    """``batch``, or the smallest larger one with which every training-mode BatchNorm normalises over
    at least ``min_values`` values per channel.

    Over 2 values per channel (a batch of 2 on a 1x1 map) the batch variance can be tiny
    and (x - mean) / sqrt(var + eps) amplifies the float32 rounding of its input by 100x
    and more (kappa, measured on resnet18 at batch 2: up to 185; at 8 values per channel
    at most 5); the two frameworks then differ by more than a port bug needs to show.
    That is a property of the data, not of either framework, so the batch is raised
    instead of the tolerance.
    """
    t_in = list(spec.inputs_for("torch", spec.example_inputs(batch, seed)).values())
    counts, kappa = batchnorm_stats(torch_model, t_in)
    if not counts or min(counts.values()) >= min_values:
        return BatchChoice(batch, batch, counts, kappa)
    per_sample = min(c / batch for c in counts.values())
    used = max(batch, int(math.ceil(min_values / per_sample)))
    worst = min(counts, key=lambda n: counts[n])
    _, kappa_used = batchnorm_stats(torch_model, list(spec.inputs_for("torch", spec.example_inputs(used, seed)).values()))
    reason = (f"BatchNorm {worst!r} would normalise over {counts[worst]} values per channel at batch {batch} "
              f"(kappa {kappa.get(worst, float('nan')):.3g}: float32 rounding amplified that much); batch {used} "
              f"gives it {int(per_sample * used)}, at least {min_values}")
    return BatchChoice(batch, used, counts, kappa_used, reason)
