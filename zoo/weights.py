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


def _stats(rng: np.random.Generator, c: int) -> dict[str, np.ndarray]:
    return {
        "gamma": rng.uniform(0.5, 1.5, c).astype(np.float32),
        "beta": rng.uniform(-0.5, 0.5, c).astype(np.float32),
        "mean": rng.uniform(-0.5, 0.5, c).astype(np.float32),
        # small variances make an epsilon mix-up (1e-3 vs 1e-5) visible in the outputs
        "var": rng.uniform(0.05, 1.5, c).astype(np.float32),
    }


def _randomize_torch(model: Any, rng: np.random.Generator) -> None:
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                s = _stats(rng, module.num_features)
                module.weight.copy_(torch.from_numpy(s["gamma"]))
                module.bias.copy_(torch.from_numpy(s["beta"]))
                module.running_mean.copy_(torch.from_numpy(s["mean"]))
                module.running_var.copy_(torch.from_numpy(s["var"]))
            elif getattr(module, "bias", None) is not None and isinstance(module.bias, torch.nn.Parameter):
                module.bias.copy_(torch.from_numpy(rng.uniform(-0.1, 0.1, module.bias.shape).astype(np.float32)))


def _randomize_keras(model: Any, rng: np.random.Generator) -> None:
    import keras

    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            s = _stats(rng, int(layer.gamma.shape[0]))
            for var, key in ((layer.gamma, "gamma"), (layer.beta, "beta"), (layer.moving_mean, "mean"),
                             (layer.moving_variance, "var")):
                if var is not None:
                    var.assign(s[key])
        elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.uniform(-0.1, 0.1, tuple(layer.bias.shape)).astype(np.float32))


def _all_layers(model: Any) -> list[Any]:
    import keras

    out = []
    for layer in model.layers:
        out.extend(_all_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out
