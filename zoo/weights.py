"""Make a freshly built twin's parameters non-trivial, so a port can be checked.

Fresh models hide bugs: Keras biases start at zero (and exporters drop zero biases),
BatchNorm statistics start at mean 0 / variance 1 (an epsilon mix-up is then
invisible). ``randomize`` gives every bias and normalisation statistic a seeded value.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def randomize(model: Any, framework: str, seed: int = 0) -> None:
    """Seeded non-trivial biases and BatchNorm statistics, in place."""
    rng = np.random.default_rng(seed)
    if framework == "torch":
        _randomize_torch(model, rng)
    elif framework == "tf":
        _randomize_keras(model, rng)
    else:
        raise ValueError(f"unknown framework {framework!r}")


_RANGES = {  # parameter role -> uniform range
    "bias": (-0.1, 0.1),
    "gamma": (0.5, 1.5),
    "beta": (-0.5, 0.5),
    "mean": (-0.5, 0.5),
    # small variances make an epsilon mix-up (1e-3 vs 1e-5) visible in the outputs
    "var": (0.05, 1.5),
}


def _draw(rng: np.random.Generator, role: str, shape: tuple[int, ...]) -> np.ndarray:
    low, high = _RANGES[role]
    return rng.uniform(low, high, shape).astype(np.float32)


def _randomize_torch(model: Any, rng: np.random.Generator) -> None:
    import torch
    from torch import nn

    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        for module in model.modules():
            roles: dict[str, str] = {}
            if isinstance(module, norms):
                roles = {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"}
            for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                role = roles.get(name) or ("bias" if name.startswith("bias") else None)
                if role is not None and tensor.is_floating_point():
                    tensor.copy_(torch.from_numpy(_draw(rng, role, tuple(tensor.shape))))


def _randomize_keras(model: Any, rng: np.random.Generator) -> None:
    roles = {"bias": "bias", "gamma": "gamma", "beta": "beta", "moving_mean": "mean", "moving_variance": "var"}
    for var in model.weights:
        role = roles.get(var.name.split("/")[-1].split(":")[0])
        if role is not None:
            var.assign(_draw(rng, role, tuple(int(d) for d in var.shape)))
