"""Small model pairs of a user's own (not zoo models) for tests/test_own_models.py.

The README's pair is ``examples/own_models.py``; here are variants that tests need: a
BatchNorm pair (running statistics a check must not move), shared instances for the
command line (so a test can hash the very model the CLI loaded), a mismatched twin, a
planted bug, and a two-input pair whose Keras input order differs from torch's.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bn_torch(seed: int = 0) -> Any:
    """Conv -> BatchNorm -> ReLU -> Flatten -> Linear over (N, 3, 6, 6), with trained-looking statistics."""
    import torch
    from torch import nn

    class BNNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 6 * 6, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BNNet()
        with torch.no_grad():
            model.bn.weight.uniform_(0.5, 1.5)
            model.bn.bias.uniform_(-0.5, 0.5)
            model.bn.running_mean.uniform_(-0.2, 0.2)
            model.bn.running_var.uniform_(0.5, 2.0)
    return model.train()  # left in training mode on purpose: a check must not move its statistics


def bn_keras() -> Any:
    import keras

    x = keras.Input((6, 6, 3), name="x")
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    h = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")(h)
    h = keras.layers.Flatten(name="flatten")(keras.layers.ReLU(name="relu")(h))
    return keras.Model(x, keras.layers.Dense(5, name="fc")(h), name="bn_net")


_SHARED: dict[str, Any] = {}


def shared_torch() -> Any:
    """The same BatchNorm torch model on every call (the CLI test hashes the instance it loaded)."""
    if "torch" not in _SHARED:
        _SHARED["torch"] = bn_torch(seed=3)
    return _SHARED["torch"]


def shared_keras() -> Any:
    if "keras" not in _SHARED:
        _SHARED["keras"] = bn_keras()
    return _SHARED["keras"]


def keras_too_wide() -> Any:
    """The README pair's Keras side with 12 outputs instead of 10: a mismatched twin."""
    import keras

    x = keras.Input((8, 8, 3), name="x")
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    h = keras.layers.Flatten(name="flatten")(keras.layers.ReLU(name="relu")(h))
    return keras.Model(x, keras.layers.Dense(12, name="fc")(h), name="too_wide")


def plant_transposed_kernel(keras_model: Any, layer: str = "conv") -> None:
    """A classic porting bug: the conv kernel's two spatial axes swapped (HWIO -> WHIO)."""
    kernel, bias = keras_model.get_layer(layer).get_weights()
    keras_model.get_layer(layer).set_weights([np.ascontiguousarray(kernel.transpose(1, 0, 2, 3)), bias])


def two_input_torch() -> Any:
    """forward(a, b) = a - 2 b: no weights, so a compare-only check needs no port."""
    from torch import nn

    class TwoInputs(nn.Module):
        def forward(self, a: Any, b: Any) -> Any:
            return a - 2 * b

    return TwoInputs()


def two_input_keras() -> Any:
    """The same function, with the Keras inputs declared in the other order (b first)."""
    import keras

    b = keras.Input((5,), name="b")
    a = keras.Input((5,), name="a")
    return keras.Model([b, a], keras.layers.Subtract(name="sub")([a, keras.layers.Rescaling(2.0, name="twice")(b)]),
                       name="two_inputs")
