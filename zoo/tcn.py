"""Temporal convolutional network (Bai, Kolter and Koltun 2018): dilated causal Conv1d blocks.

Block i has two causal convs with dilation 2**i, each followed by a ReLU, and a
residual connection (a 1x1 conv ``downsample`` where the channel count changes); a
1x1 conv ``head`` gives an output per time step. Weight normalisation and dropout of
the paper are left out: neither changes inference once folded, and Keras has no
weight-norm layer to twin.

Traps it exercises: causal padding pads (k-1)*dilation steps on the left only (torch
F.pad then padding=0; Keras padding='causal'), dilation, and the 1-D layouts (NCL in
torch, NLC in Keras; Conv1d weights (O, I, k) vs Conv1D kernels (k, I, O)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo._config import resolve
from zoo.registry import register
from zoo.spec import ModelSpec, TensorSpec, Tolerance


@dataclass(frozen=True)
class TCNConfig:
    in_channels: int = 4
    channels: tuple[int, ...] = (8, 8, 16)  # one residual block per entry, dilation 2**i
    kernel_size: int = 3
    seq_len: int = 32
    out_channels: int = 5


PRESETS = {
    "small": TCNConfig(),
    # the paper's sequential-MNIST model: 8 levels of 25 channels, kernel 7, 784 steps, 10 classes
    "standard": TCNConfig(in_channels=1, channels=(25,) * 8, kernel_size=7, seq_len=784, out_channels=10),
}

TOLERANCE = Tolerance(
    atol=1e-5,
    rtol=1e-5,
    reason=(
        "2 convs per block with short dot products (K = kernel*channels <= 175) and residual sums; "
        "rounding ~sqrt(K)*eps per layer over <= 17 layers; torch vs Keras twin measured 1e-7 "
        "(small) and 4e-7 (standard) of the output scale; 1e-5 leaves room for other runtimes and "
        "catches right- instead of left-padding or a wrong dilation (errors of order 1)"
    ),
)


def build_torch(cfg: TCNConfig) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TemporalBlock(nn.Module):
        def __init__(self, inp: int, out: int, dilation: int) -> None:
            super().__init__()
            self.left = (cfg.kernel_size - 1) * dilation
            self.conv1 = nn.Conv1d(inp, out, cfg.kernel_size, dilation=dilation)
            self.conv2 = nn.Conv1d(out, out, cfg.kernel_size, dilation=dilation)
            self.downsample = nn.Conv1d(inp, out, 1) if inp != out else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv1(F.pad(x, (self.left, 0))))  # causal: pad on the left only
            y = torch.relu(self.conv2(F.pad(y, (self.left, 0))))
            res = x if self.downsample is None else self.downsample(x)
            return torch.relu(y + res)

    class TCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [cfg.in_channels, *cfg.channels]
            self.blocks = nn.Sequential(*[TemporalBlock(widths[i], widths[i + 1], 2**i)
                                          for i in range(len(cfg.channels))])
            self.head = nn.Conv1d(widths[-1], cfg.out_channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.blocks(x))

    return TCN()


def build_keras(cfg: TCNConfig) -> Any:
    import keras
    from keras import layers

    x = inputs = keras.Input((cfg.seq_len, cfg.in_channels), name="x")
    widths = [cfg.in_channels, *cfg.channels]
    for i in range(len(cfg.channels)):
        prefix, d = f"blocks.{i}", 2**i
        y = layers.Conv1D(widths[i + 1], cfg.kernel_size, dilation_rate=d, padding="causal", name=f"{prefix}.conv1")(x)
        y = layers.ReLU(name=f"{prefix}.relu1")(y)
        y = layers.Conv1D(widths[i + 1], cfg.kernel_size, dilation_rate=d, padding="causal", name=f"{prefix}.conv2")(y)
        y = layers.ReLU(name=f"{prefix}.relu2")(y)
        res = x if widths[i] == widths[i + 1] else layers.Conv1D(widths[i + 1], 1, name=f"{prefix}.downsample")(x)
        x = layers.ReLU(name=f"{prefix}.relu")(layers.Add(name=f"{prefix}.add")([y, res]))
    y = layers.Conv1D(cfg.out_channels, 1, name="head")(x)
    return keras.Model(inputs, y, name="tcn")


@register("tcn")
def spec(preset: str = "small", **overrides: Any) -> ModelSpec:
    cfg = resolve(PRESETS, preset, overrides, "tcn")
    return ModelSpec(
        name="tcn",
        family="tcn",
        preset=preset,
        config=cfg,
        inputs=(TensorSpec("x", (cfg.in_channels, cfg.seq_len), layout="NCL"),),
        outputs=(TensorSpec("y", (cfg.out_channels, cfg.seq_len), layout="NCL"),),
        tolerance=TOLERANCE,
        torch_builder=build_torch,
        keras_builder=build_keras,
        presets=tuple(PRESETS),
    )
