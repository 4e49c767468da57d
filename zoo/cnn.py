"""Small CNN: a stride-2 'same' conv, BatchNorm, max-pooling and a Flatten->Dense head.

Traps it exercises: TF 'same' padding with stride 2 on an even input pads one pixel at
the end only (torch needs F.pad(0, 1, 0, 1) then padding=0), and Flatten runs over
C,H,W in torch but H,W,C in Keras, so the head's weight rows are permuted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo._config import resolve
from zoo.registry import register
from zoo.spec import ModelSpec, TensorSpec, Tolerance

BN_EPS = 1e-5  # torch's default, set explicitly on the Keras side (its default is 1e-3)
BN_MOMENTUM_TORCH = 0.1  # Keras uses the complement: 0.9


@dataclass(frozen=True)
class CNNConfig:
    in_channels: int = 3
    image: int = 16  # even, so stride-2 'same' padding is asymmetric
    channels: tuple[int, int] = (8, 16)
    classes: int = 10


PRESETS = {"small": CNNConfig(), "standard": CNNConfig(image=32, channels=(32, 64), classes=10)}

TOLERANCE = Tolerance(
    atol=1e-5,
    rtol=1e-5,
    reason=(
        "two 3x3 convs (K<=144) and a dense head; each runtime sums in its own order and "
        "folds BatchNorm into the conv differently, ~1e-6 of the output scale measured; "
        "1e-5 still catches a BatchNorm epsilon of 1e-3 or a wrong flatten order"
    ),
)


def _pooled_size(cfg: CNNConfig) -> int:
    if cfg.image % 4:
        raise ValueError(f"cnn image size must be a multiple of 4, got {cfg.image}")
    return cfg.image // 4  # stride-2 conv, then 2x2 max-pool


def build_torch(cfg: CNNConfig) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    c1, c2 = cfg.channels
    side = _pooled_size(cfg)

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cfg.in_channels, c1, 3, stride=2, padding=0, bias=False)
            self.bn1 = nn.BatchNorm2d(c1, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH)
            self.conv2 = nn.Conv2d(c1, c2, 3, stride=1, padding=1)
            self.bn2 = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(c2 * side * side, cfg.classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.pad(x, (0, 1, 0, 1))  # TF 'same' for k=3, s=2 on an even input
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            x = self.pool(x)
            return self.fc(torch.flatten(x, 1))

    return CNN()


def build_keras(cfg: CNNConfig) -> Any:
    import keras
    from keras import layers

    c1, c2 = cfg.channels
    _pooled_size(cfg)
    x = inputs = keras.Input((cfg.image, cfg.image, cfg.in_channels), name="x")
    x = layers.Conv2D(c1, 3, strides=2, padding="same", use_bias=False, name="conv1")(x)
    x = layers.BatchNormalization(epsilon=BN_EPS, momentum=1 - BN_MOMENTUM_TORCH, name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(c2, 3, padding="same", name="conv2")(x)
    x = layers.BatchNormalization(epsilon=BN_EPS, momentum=1 - BN_MOMENTUM_TORCH, name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    logits = layers.Dense(cfg.classes, name="fc")(x)
    return keras.Model(inputs, logits, name="cnn")


@register("cnn")
def spec(preset: str = "small", **overrides: Any) -> ModelSpec:
    cfg = resolve(PRESETS, preset, overrides, "cnn")
    return ModelSpec(
        name="cnn",
        family="cnn",
        preset=preset,
        config=cfg,
        inputs=(TensorSpec("x", (cfg.in_channels, cfg.image, cfg.image), layout="NCHW"),),
        outputs=(TensorSpec("logits", (cfg.classes,), layout="NC"),),
        tolerance=TOLERANCE,
        torch_builder=build_torch,
        keras_builder=build_keras,
        presets=tuple(PRESETS),
    )
