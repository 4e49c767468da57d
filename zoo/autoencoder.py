"""Convolutional autoencoder with a dense bottleneck.

Encoder: stride-2 4x4 convs with ReLU, flatten, Dense to the latent code (``encoder.fc``).
Decoder: Dense back to C*H*W (``decoder.fc``), reshape to feature maps, stride-2 4x4
transposed convs with ReLU, and a sigmoid on the reconstruction.

The trap this model exists for: flattening and reshaping run over (C, H, W) in torch
and (H, W, C) in Keras. ``encoder.fc``'s input rows and ``decoder.fc``'s output
columns (and bias) are therefore permuted between the twins: a port that copies
Dense kernels with a plain transpose gets both wrong. Torch's reshape is
``view(B, C, H, W)``; Keras' is ``Reshape((H, W, C))``.

Padding: torch Conv2d(k=4, s=2, p=1) pads symmetrically; the Keras twin pads
explicitly (ZeroPadding2D(1), then 'valid'). ConvTranspose2d(k=4, s=2, p=1) crops one
pixel on each side of the full (2H+2) output, which is what Conv2DTranspose
'same' does for k - s = 2 (an even total, split evenly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo._config import resolve
from zoo.registry import register
from zoo.spec import ModelSpec, TensorSpec, Tolerance


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 3
    image: int = 16
    channels: tuple[int, ...] = (4, 8)  # encoder widths; each conv halves the resolution
    latent: int = 8


PRESETS = {
    "small": AutoencoderConfig(),
    # a DCGAN-sized convolutional autoencoder on 64x64 RGB images
    "standard": AutoencoderConfig(in_channels=3, image=64, channels=(32, 64, 128, 256), latent=128),
}

TOLERANCE = Tolerance(
    atol=1e-5,
    rtol=1e-5,
    reason=(
        "at most 2*len(channels) convs plus two dense layers (K up to 4096 at standard, "
        "sqrt(K)*eps ~ 8e-6) and a sigmoid that damps errors; torch vs Keras twin measured 2e-7 of "
        "the output scale at small and standard; 1e-5 leaves room for other runtimes and catches "
        "bottleneck Dense layers ported without the (C,H,W) -> (H,W,C) permutation (2e-3 to 7e-3)"
    ),
)


def _feature_shape(cfg: AutoencoderConfig) -> tuple[int, int, int]:
    """(C, H, W) of the encoder's last feature map, in torch's order."""
    side = cfg.image // 2 ** len(cfg.channels)
    if side < 1 or cfg.image % 2 ** len(cfg.channels):
        raise ValueError(f"autoencoder image {cfg.image} must be a multiple of 2**{len(cfg.channels)}")
    return cfg.channels[-1], side, side


def build_torch(cfg: AutoencoderConfig) -> Any:
    import torch
    from torch import nn

    c, h, w = _feature_shape(cfg)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [cfg.in_channels, *cfg.channels]
            for i in range(len(cfg.channels)):
                self.add_module(f"conv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1))
            self.fc = nn.Linear(c * h * w, cfg.latent)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i in range(len(cfg.channels)):
                x = torch.relu(getattr(self, f"conv{i + 1}")(x))
            return self.fc(torch.flatten(x, 1))  # flattens (C, H, W)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(cfg.latent, c * h * w)
            widths = [*reversed(cfg.channels), cfg.in_channels]
            for i in range(len(cfg.channels)):
                self.add_module(f"deconv{i + 1}",
                                nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1))

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.fc(z)).view(-1, c, h, w)  # reshapes to (C, H, W)
            n = len(cfg.channels)
            for i in range(n):
                x = getattr(self, f"deconv{i + 1}")(x)
                x = torch.relu(x) if i < n - 1 else torch.sigmoid(x)
            return x

    class Autoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = Encoder()
            self.decoder = Decoder()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.encoder(x))

    return Autoencoder()


def build_keras(cfg: AutoencoderConfig) -> Any:
    import keras
    from keras import layers

    c, h, w = _feature_shape(cfg)
    n = len(cfg.channels)
    x = inputs = keras.Input((cfg.image, cfg.image, cfg.in_channels), name="x")
    for i, width in enumerate(cfg.channels):
        x = layers.ZeroPadding2D(1, name=f"encoder.pad{i + 1}")(x)
        x = layers.Conv2D(width, 4, strides=2, padding="valid", activation="relu", name=f"encoder.conv{i + 1}")(x)
    x = layers.Flatten(name="encoder.flatten")(x)  # flattens (H, W, C)
    z = layers.Dense(cfg.latent, name="encoder.fc")(x)
    x = layers.Dense(c * h * w, activation="relu", name="decoder.fc")(z)
    x = layers.Reshape((h, w, c), name="decoder.reshape")(x)  # reshapes to (H, W, C)
    widths = [*reversed(cfg.channels), cfg.in_channels][1:]
    for i, width in enumerate(widths):
        x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", name=f"decoder.deconv{i + 1}",
                                   activation="relu" if i < n - 1 else "sigmoid")(x)
    return keras.Model(inputs, x, name="autoencoder")


@register("autoencoder")
def spec(preset: str = "small", **overrides: Any) -> ModelSpec:
    cfg = resolve(PRESETS, preset, overrides, "autoencoder")
    _feature_shape(cfg)
    return ModelSpec(
        name="autoencoder",
        family="autoencoder",
        preset=preset,
        config=cfg,
        inputs=(TensorSpec("x", (cfg.in_channels, cfg.image, cfg.image), layout="NCHW"),),
        outputs=(TensorSpec("reconstruction", (cfg.in_channels, cfg.image, cfg.image), layout="NCHW"),),
        tolerance=TOLERANCE,
        torch_builder=build_torch,
        keras_builder=build_keras,
        presets=tuple(PRESETS),
    )
