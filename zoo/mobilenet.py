"""MobileNetV2 in torchvision's layout: inverted residuals, depthwise convs, ReLU6.

Module and layer names are torchvision's (``features.0.0``, ``features.2.conv.1.0``,
``classifier.1`` ...). Depthwise convs are torch ``Conv2d(groups=C)`` and Keras
``DepthwiseConv2D``; the residual connections are identities (no parameters).

Trap it exercises: the Keras twin uses TF ``padding='same'`` everywhere; for the
stride-2 convs on even inputs TF pads (0, 1), one pixel at the end only, which torch's
symmetric ``padding=1`` does not reproduce. The torch twin's stride-2 convs are
``Conv2dSame`` (a Conv2d that F.pads the TF amounts computed from the input size,
then convolves with padding=0), so it computes what the Keras twin computes
(torchvision's own MobileNetV2 pads symmetrically: its checkpoints map by name, but
its outputs differ from this twin's at the borders of stride-2 layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo._config import resolve
from zoo.registry import register
from zoo.spec import ModelSpec, TensorSpec, Tolerance

BN_EPS = 1e-5  # torch's default, set explicitly on the Keras side (its default is 1e-3)
BN_MOMENTUM_TORCH = 0.1  # Keras uses the complement: 0.9

# torchvision's inverted-residual setting: expansion t, output channels c, repeats n, first stride s
TORCHVISION_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


@dataclass(frozen=True)
class MobileNetV2Config:
    in_channels: int = 3
    image: int = 32  # even, so the stride-2 'same' padding is asymmetric
    stem_channels: int = 8
    setting: tuple[tuple[int, int, int, int], ...] = ((1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2))
    last_channels: int = 64
    classes: int = 10
    dropout: float = 0.2


PRESETS = {
    "small": MobileNetV2Config(),
    "standard": MobileNetV2Config(image=224, stem_channels=32, setting=TORCHVISION_SETTING,
                                  last_channels=1280, classes=1000),
}

TOLERANCE = Tolerance(
    atol=1e-4,
    rtol=1e-4,
    reason=(
        "52 convs in 17 inverted residuals (K <= 960 per pointwise dot product, 9 per depthwise "
        "one); torch vs Keras twin measured 2e-7 (small) and 5e-7 (standard) of the logit scale on "
        "CPU; BN folding and other runtimes' conv algorithms add more, hence 1e-4; symmetric "
        "instead of TF 'same' padding moves the logits by 6e-2 of their scale, a BN epsilon of 1e-3 by 1e-2"
    ),
)


def _blocks(cfg: MobileNetV2Config) -> list[tuple[int, int, int, int]]:
    """(input channels, output channels, stride, expansion) of features.1 ... features.n."""
    out, inp = [], cfg.stem_channels
    for t, c, n, s in cfg.setting:
        for i in range(n):
            out.append((inp, c, s if i == 0 else 1, t))
            inp = c
    return out


def build_torch(cfg: MobileNetV2Config) -> Any:
    import torch
    from torch import nn

    from zoo._torch_layers import Conv2dSame

    def conv_bn_relu6(inp: int, out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
        if stride > 1:
            conv: nn.Conv2d = Conv2dSame(inp, out, kernel, stride=stride, groups=groups, bias=False)
        else:
            conv = nn.Conv2d(inp, out, kernel, padding=kernel // 2, groups=groups, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(out, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH), nn.ReLU6())

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = inp * expand
            self.use_residual = stride == 1 and inp == out
            layers: list[nn.Module] = []
            if expand != 1:
                layers.append(conv_bn_relu6(inp, hidden, 1))
            layers += [
                conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
                nn.Conv2d(hidden, out, 1, bias=False),  # linear bottleneck
                nn.BatchNorm2d(out, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.use_residual else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks = _blocks(cfg)
            features: list[nn.Module] = [conv_bn_relu6(cfg.in_channels, cfg.stem_channels, 3, 2)]
            features += [InvertedResidual(*b) for b in blocks]
            features.append(conv_bn_relu6(blocks[-1][1], cfg.last_channels, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.last_channels, cfg.classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.features(x)
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return self.classifier(x)

    return MobileNetV2()


def build_keras(cfg: MobileNetV2Config) -> Any:
    import keras
    from keras import layers

    def bn(name: str) -> Any:
        return layers.BatchNormalization(epsilon=BN_EPS, momentum=1 - BN_MOMENTUM_TORCH, name=name)

    def conv_bn_relu6(x: Any, out: int, kernel: int, stride: int, prefix: str, depthwise: bool = False) -> Any:
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}.0")(x)
        else:
            x = layers.Conv2D(out, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}.0")(x)
        return layers.ReLU(max_value=6.0, name=f"{prefix}.2")(bn(f"{prefix}.1")(x))

    x = inputs = keras.Input((cfg.image, cfg.image, cfg.in_channels), name="x")
    x = conv_bn_relu6(x, cfg.stem_channels, 3, 2, "features.0")
    blocks = _blocks(cfg)
    for i, (inp, out, stride, expand) in enumerate(blocks, start=1):
        prefix, y, j = f"features.{i}.conv", x, 0
        if expand != 1:
            y = conv_bn_relu6(y, inp * expand, 1, 1, f"{prefix}.0")
            j = 1
        y = conv_bn_relu6(y, inp * expand, 3, stride, f"{prefix}.{j}", depthwise=True)
        y = layers.Conv2D(out, 1, padding="same", use_bias=False, name=f"{prefix}.{j + 1}")(y)
        y = bn(f"{prefix}.{j + 2}")(y)
        x = layers.Add(name=f"features.{i}.add")([x, y]) if stride == 1 and inp == out else y
    x = conv_bn_relu6(x, cfg.last_channels, 1, 1, f"features.{len(blocks) + 1}")
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    x = layers.Dropout(cfg.dropout, name="classifier.0")(x)
    logits = layers.Dense(cfg.classes, name="classifier.1")(x)
    return keras.Model(inputs, logits, name="mobilenet_v2")


@register("mobilenet_v2")
def spec(preset: str = "small", **overrides: Any) -> ModelSpec:
    cfg = resolve(PRESETS, preset, overrides, "mobilenet_v2")
    return ModelSpec(
        name="mobilenet_v2",
        family="mobilenet",
        preset=preset,
        config=cfg,
        inputs=(TensorSpec("x", (cfg.in_channels, cfg.image, cfg.image), layout="NCHW"),),
        outputs=(TensorSpec("logits", (cfg.classes,), layout="NC"),),
        tolerance=TOLERANCE,
        torch_builder=build_torch,
        keras_builder=build_keras,
        presets=tuple(PRESETS),
    )
