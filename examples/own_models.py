"""A user's own model pair, written outside the zoo: Conv2d -> ReLU -> Flatten -> Linear in both frameworks.

The README's "Check your own models" section checks this pair from Python, the command
line and pytest; ``tests/test_own_models.py`` runs each of those snippets for real.
The layers carry the same names on both sides (``conv``, ``fc``), so even a compare-only
check (``port=False``) can name the first layer that differs.
"""

from __future__ import annotations

from typing import Any

CHANNELS, SIZE, CLASSES = 3, 8, 10


def torch_model(seed: int = 0) -> Any:
    """The PyTorch side: takes (N, 3, 8, 8) images, returns (N, 10) logits."""
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(CHANNELS, 8, 3, padding=1)
            self.fc = nn.Linear(8 * SIZE * SIZE, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyNet().eval()


def keras_model(seed: int = 1) -> Any:
    """The Keras side: takes (N, 8, 8, 3) images (channels-last), returns (N, 10) logits."""
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    x = keras.Input((SIZE, SIZE, CHANNELS), name="x")
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv", kernel_initializer=init)(x)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    return keras.Model(x, keras.layers.Dense(CLASSES, name="fc", kernel_initializer=init)(h), name="tiny_net")
