"""U-Net: a conv encoder, ConvTranspose2d up-sampling and skip concatenation.

Each level is a double conv (3x3 conv, BatchNorm, ReLU, twice); the encoder halves the
resolution with 2x2 max-pooling, the decoder doubles it with a 2x2 stride-2 transposed
conv, concatenates the encoder's feature map at that resolution *before* the
up-sampled one, and applies a double conv; a 1x1 conv gives per-pixel logits.

Traps it exercises: the concatenation axis differs (channels are axis 1 in torch, -1 in
Keras), the transposed conv's kernel layout differs ((I, O, kh, kw) in torch,
(kh, kw, O, I) in Keras, no flip), and the output is an image (NCHW vs NHWC).
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
class UNetConfig:
    in_channels: int = 3
    classes: int = 2  # output channels (per-pixel logits)
    base: int = 8  # channels of the first level; level i has base * 2**i
    depth: int = 2  # number of down-sampling steps
    image: int = 32


PRESETS = {
    "small": UNetConfig(),
    # Ronneberger et al. 2015: 64 ... 1024 channels over four down-sampling steps; padded convs
    # with BatchNorm (the common PyTorch implementation) so the output keeps the input size
    "standard": UNetConfig(in_channels=3, classes=2, base=64, depth=4, image=256),
}

TOLERANCE = Tolerance(
    atol=1e-4,
    rtol=1e-4,
    reason=(
        "2*(2*depth+1) 3x3 convs plus transposed convs along the longest path (K up to 9216 at "
        "standard: sqrt(K)*eps ~ 1e-5 per layer); torch vs Keras twin measured 2e-7 (small) and "
        "1.7e-6 (standard) of the output scale on CPU; BN folding and other conv algorithms add more, "
        "hence 1e-4; a BN epsilon of 1e-3 moves the output by 6e-3 of its scale, a skip concatenated "
        "in the wrong order or a flipped transposed-conv kernel by order 1"
    ),
)


def _check(cfg: UNetConfig) -> None:
    if cfg.image % 2**cfg.depth:
        raise ValueError(f"unet image size must be a multiple of 2**depth = {2**cfg.depth}, got {cfg.image}")


def build_torch(cfg: UNetConfig) -> Any:
    import torch
    from torch import nn

    _check(cfg)

    class DoubleConv(nn.Module):
        def __init__(self, inp: int, out: int, upsample: bool = False) -> None:
            super().__init__()
            if upsample:  # decoder level: registered first because it runs first
                self.upconv = nn.ConvTranspose2d(inp, inp // 2, 2, stride=2)
            self.conv1 = nn.Conv2d(inp, out, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(out, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH)
            self.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(out, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH)

        def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
            if skip is not None:
                x = torch.cat([skip, self.upconv(x)], dim=1)  # channels: axis 1 (Keras: -1)
            x = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(x)))

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [cfg.base * 2**i for i in range(cfg.depth + 1)]
            self.down = nn.ModuleList(
                [DoubleConv(cfg.in_channels, widths[0])]
                + [DoubleConv(widths[i - 1], widths[i]) for i in range(1, cfg.depth + 1)])
            self.pool = nn.MaxPool2d(2)
            self.up = nn.ModuleList([DoubleConv(widths[i], widths[i - 1], upsample=True)
                                     for i in range(cfg.depth, 0, -1)])
            self.head = nn.Conv2d(widths[0], cfg.classes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for i, block in enumerate(self.down):
                x = block(x if i == 0 else self.pool(x))
                skips.append(x)
            skips.pop()
            for block in self.up:
                x = block(x, skips.pop())
            return self.head(x)

    return UNet()


def build_keras(cfg: UNetConfig) -> Any:
    import keras
    from keras import layers

    _check(cfg)

    def double_conv(x: Any, out: int, prefix: str) -> Any:
        for j in (1, 2):
            x = layers.Conv2D(out, 3, padding="same", use_bias=False, name=f"{prefix}.conv{j}")(x)
            x = layers.BatchNormalization(epsilon=BN_EPS, momentum=1 - BN_MOMENTUM_TORCH, name=f"{prefix}.bn{j}")(x)
            x = layers.ReLU(name=f"{prefix}.relu{j}")(x)
        return x

    widths = [cfg.base * 2**i for i in range(cfg.depth + 1)]
    x = inputs = keras.Input((cfg.image, cfg.image, cfg.in_channels), name="x")
    skips = []
    for i in range(cfg.depth + 1):
        if i:
            x = layers.MaxPooling2D(2, name=f"down.{i}.pool")(x)
        x = double_conv(x, widths[i], f"down.{i}")
        skips.append(x)
    skips.pop()
    for j, i in enumerate(range(cfg.depth, 0, -1)):
        up = layers.Conv2DTranspose(widths[i] // 2, 2, strides=2, padding="valid", name=f"up.{j}.upconv")(x)
        x = layers.Concatenate(axis=-1, name=f"up.{j}.concat")([skips.pop(), up])
        x = double_conv(x, widths[i - 1], f"up.{j}")
    y = layers.Conv2D(cfg.classes, 1, name="head")(x)
    return keras.Model(inputs, y, name="unet")


@register("unet")
def spec(preset: str = "small", **overrides: Any) -> ModelSpec:
    cfg = resolve(PRESETS, preset, overrides, "unet")
    _check(cfg)
    return ModelSpec(
        name="unet",
        family="unet",
        preset=preset,
        config=cfg,
        inputs=(TensorSpec("x", (cfg.in_channels, cfg.image, cfg.image), layout="NCHW"),),
        outputs=(TensorSpec("y", (cfg.classes, cfg.image, cfg.image), layout="NCHW"),),
        tolerance=TOLERANCE,
        torch_builder=build_torch,
        keras_builder=build_keras,
        presets=tuple(PRESETS),
    )
