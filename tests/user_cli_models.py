"""A user's own tiny model pair, written outside the zoo, for the command-line tests
(``user_cli_models:torch_net`` and ``user_cli_models:keras_net``).

Conv(3->4, 3x3, valid) -> BatchNorm -> ReLU -> Flatten -> Dense(144->5) on a 3x8x8 image:
torch takes NCHW, Keras NHWC, so the Dense weights need the flatten-order transform.
FLOPs at batch 1, by hand (2 per multiply-add): conv 2 * (4*6*6) * (3*3*3) = 7,776; dense
2 * 144 * 5 = 1,440; total 9,216. ``linear_net`` (Linear 10 -> 5): 2 * 10 * 5 = 100.

The torch factory returns its model in *training* mode with non-trivial BatchNorm statistics,
as a user's factory might: a port that ran it in training mode would change its statistics.
``shared_torch`` / ``shared_keras`` return one instance per process, so a test can hash the
very object the command line loaded.
"""

from __future__ import annotations

from typing import Any

CONV_PAIR_FLOPS = 2 * (4 * 6 * 6) * (3 * 3 * 3) + 2 * 144 * 5
LINEAR_FLOPS = 2 * 10 * 5
_SHARED: dict[str, Any] = {}


def torch_net(seed: int = 0) -> Any:
    """The torch model, seeded; BatchNorm statistics randomised; left in training mode."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential()
        model.add_module("conv", nn.Conv2d(3, 4, 3))
        model.add_module("bn", nn.BatchNorm2d(4))
        model.add_module("relu", nn.ReLU())
        model.add_module("flat", nn.Flatten())
        model.add_module("fc", nn.Linear(144, 5))
        with torch.no_grad():
            model.bn.weight.uniform_(0.5, 1.5)
            model.bn.bias.uniform_(-0.5, 0.5)
            model.bn.running_mean.uniform_(-0.5, 0.5)
            model.bn.running_var.uniform_(0.5, 1.5)
    return model.train()


def keras_net(dense_units: int = 5) -> Any:
    """The Keras counterpart (NHWC), BatchNorm epsilon and momentum as torch's."""
    import keras

    inp = keras.Input((8, 8, 3), name="x")
    y = keras.layers.Conv2D(4, 3, name="conv")(inp)
    y = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")(y)
    y = keras.layers.ReLU(name="relu")(y)
    y = keras.layers.Flatten(name="flat")(y)
    y = keras.layers.Dense(dense_units, name="fc")(y)
    return keras.Model(inp, y, name="user_cli_net")


def keras_wrong() -> Any:
    """Not the torch model's twin: its dense layer has 6 units instead of 5."""
    return keras_net(dense_units=6)


def shared_torch() -> Any:
    if "torch" not in _SHARED:
        _SHARED["torch"] = torch_net(seed=1)
    return _SHARED["torch"]


def shared_keras() -> Any:
    if "keras" not in _SHARED:
        import numpy as np

        model = keras_net()
        rng = np.random.default_rng(3)
        model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in model.get_weights()])
        _SHARED["keras"] = model
    return _SHARED["keras"]


def linear_net() -> Any:
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Linear(10, 5).eval()
