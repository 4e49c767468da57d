"""ResNet-18 and ResNet-50 in torchvision's block layout.

BasicBlock (two 3x3 convs) and Bottleneck (1x1, 3x3, 1x1 with the stride on the 3x3,
"ResNet v1.5"), a conv1x1+BN downsample shortcut where the shape changes, global
average pooling and a fully connected head. Module and layer names are torchvision's
(``layer2.0.downsample.0`` ...), so torchvision checkpoints map by name.

Traps it exercises: torch pads symmetrically (conv7x7 s2 p3, 3x3 s2 p1, maxpool p1)
where Keras 'same' would pad one pixel at the end only, so the Keras twin pads
explicitly with ZeroPadding2D and convolves 'valid'. Zero padding before the max-pool
equals torch's -inf padding because the input is a ReLU output (>= 0).

Keras orders a functional model's layers by distance to the output, which would put
the shortcut conv between conv2 and bn2; the shortcut is therefore a nested
``keras.Sequential`` named like torch's ``downsample`` Sequential, so the flattened
Keras layer order equals torch's forward order.
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
class ResNetConfig:
    block: str = "basic"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101/152)
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    width: int = 8  # channels after the stem; torchvision: 64
    in_channels: int = 3
    image: int = 32
    classes: int = 10


PRESETS_18 = {
    "small": ResNetConfig(block="basic", layers=(2, 2, 2, 2), width=8, image=32, classes=10),
    "standard": ResNetConfig(block="basic", layers=(2, 2, 2, 2), width=64, image=224, classes=1000),
}
PRESETS_50 = {
    "small": ResNetConfig(block="bottleneck", layers=(2, 1, 1, 1), width=8, image=32, classes=10),
    "standard": ResNetConfig(block="bottleneck", layers=(3, 4, 6, 3), width=64, image=224, classes=1000),
}

TOLERANCE_18 = Tolerance(
    atol=1e-4,
    rtol=1e-4,
    reason=(
        "18 conv layers with K up to 4608 (sqrt(K)*eps ~ 8e-6 per layer) and residual sums that keep "
        "earlier errors; torch vs Keras twin measured 2e-7 (small) and 5e-7 (standard) of the logit "
        "scale on CPU; runtimes that fold BatchNorm into the convs or pick other conv algorithms add "
        "more, hence 1e-4; a BN epsilon of 1e-3 or a pixel of padding on the wrong side moves >5e-3"
    ),
)
TOLERANCE_50 = Tolerance(
    atol=1e-4,
    rtol=1e-4,
    reason=(
        "53 conv layers and 16 residual sums, K up to 4608 per dot product; torch vs Keras twin "
        "measured 5e-7 of the logit scale at small and standard on CPU (BatchNorm renormalises, so "
        "depth adds little); BN folding and conv algorithms of other runtimes add more, hence 1e-4; "
        "a BN epsilon of 1e-3 moves the logits by 7e-3 of their scale"
    ),
)

EXPANSION = {"basic": 1, "bottleneck": 4}


def _check(cfg: ResNetConfig) -> None:
    if cfg.block not in EXPANSION:
        raise ValueError(f"resnet block must be 'basic' or 'bottleneck', got {cfg.block!r}")
    if cfg.image % 32:
        raise ValueError(f"resnet image size must be a multiple of 32, got {cfg.image}")


def _stages(cfg: ResNetConfig) -> list[tuple[int, int, int]]:
    """(stage index, planes, first stride) for layer1..layer4."""
    return [(i + 1, cfg.width * 2**i, 1 if i == 0 else 2) for i in range(4)]


def build_torch(cfg: ResNetConfig) -> Any:
    import torch
    from torch import nn

    _check(cfg)
    expansion = EXPANSION[cfg.block]

    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH)

    class BasicBlock(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = bn(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
            self.bn2 = bn(planes)
            self.downsample = downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return torch.relu(out + identity)

    class Bottleneck(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = bn(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn2 = bn(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = bn(planes * 4)
            self.downsample = downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            out = torch.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            identity = x if self.downsample is None else self.downsample(x)
            return torch.relu(out + identity)

    block_cls = BasicBlock if cfg.block == "basic" else Bottleneck

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cfg.in_channels, cfg.width, 7, stride=2, padding=3, bias=False)
            self.bn1 = bn(cfg.width)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            inplanes = cfg.width
            for index, planes, stride in _stages(cfg):
                blocks = []
                for b in range(cfg.layers[index - 1]):
                    s = stride if b == 0 else 1
                    downsample = None
                    if s != 1 or inplanes != planes * expansion:
                        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * expansion, 1, stride=s, bias=False),
                                                   bn(planes * expansion))
                    blocks.append(block_cls(inplanes, planes, s, downsample))
                    inplanes = planes * expansion
                self.add_module(f"layer{index}", nn.Sequential(*blocks))
            self.fc = nn.Linear(inplanes, cfg.classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            for index in range(1, 5):
                x = getattr(self, f"layer{index}")(x)
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return self.fc(x)

    return ResNet()


def build_keras(cfg: ResNetConfig) -> Any:
    import keras
    from keras import layers

    _check(cfg)
    expansion = EXPANSION[cfg.block]

    def bn(name: str) -> Any:
        return layers.BatchNormalization(epsilon=BN_EPS, momentum=1 - BN_MOMENTUM_TORCH, name=name)

    def conv(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
        """torch Conv2d(padding=kernel // 2): explicit symmetric zero padding, then 'valid'."""
        if kernel > 1:
            x = layers.ZeroPadding2D(kernel // 2, name=f"{name}.pad")(x)
        return layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)

    def block(x: Any, inplanes: int, planes: int, stride: int, prefix: str) -> Any:
        shortcut = x
        if cfg.block == "basic":
            out = layers.ReLU()(bn(f"{prefix}.bn1")(conv(x, planes, 3, stride, f"{prefix}.conv1")))
            out = bn(f"{prefix}.bn2")(conv(out, planes, 3, 1, f"{prefix}.conv2"))
        else:
            out = layers.ReLU()(bn(f"{prefix}.bn1")(conv(x, planes, 1, 1, f"{prefix}.conv1")))
            out = layers.ReLU()(bn(f"{prefix}.bn2")(conv(out, planes, 3, stride, f"{prefix}.conv2")))
            out = bn(f"{prefix}.bn3")(conv(out, planes * expansion, 1, 1, f"{prefix}.conv3"))
        if stride != 1 or inplanes != planes * expansion:
            shortcut = keras.Sequential([
                layers.Conv2D(planes * expansion, 1, strides=stride, padding="valid", use_bias=False,
                              name=f"{prefix}.downsample.0"),
                bn(f"{prefix}.downsample.1"),
            ], name=f"{prefix}.downsample")(x)
        return layers.ReLU()(layers.Add()([out, shortcut]))

    x = inputs = keras.Input((cfg.image, cfg.image, cfg.in_channels), name="x")
    x = layers.ReLU(name="relu")(bn("bn1")(conv(x, cfg.width, 7, 2, "conv1")))
    x = layers.ZeroPadding2D(1, name="maxpool.pad")(x)  # zeros == torch's -inf padding after a ReLU
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    inplanes = cfg.width
    for index, planes, stride in _stages(cfg):
        for b in range(cfg.layers[index - 1]):
            x = block(x, inplanes, planes, stride if b == 0 else 1, f"layer{index}.{b}")
            inplanes = planes * expansion
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    logits = layers.Dense(cfg.classes, name="fc")(x)
    return keras.Model(inputs, logits, name="resnet18" if cfg.block == "basic" else "resnet50")


def _spec(name: str, presets: dict[str, ResNetConfig], tolerance: Tolerance, preset: str,
          overrides: dict[str, Any]) -> ModelSpec:
    cfg = resolve(presets, preset, overrides, name)
    _check(cfg)
    return ModelSpec(
        name=name,
        family="resnet",
        preset=preset,
        config=cfg,
        inputs=(TensorSpec("x", (cfg.in_channels, cfg.image, cfg.image), layout="NCHW"),),
        outputs=(TensorSpec("logits", (cfg.classes,), layout="NC"),),
        tolerance=tolerance,
        torch_builder=build_torch,
        keras_builder=build_keras,
        presets=tuple(presets),
    )


@register("resnet18")
def spec_resnet18(preset: str = "small", **overrides: Any) -> ModelSpec:
    return _spec("resnet18", PRESETS_18, TOLERANCE_18, preset, overrides)


@register("resnet50")
def spec_resnet50(preset: str = "small", **overrides: Any) -> ModelSpec:
    return _spec("resnet50", PRESETS_50, TOLERANCE_50, preset, overrides)
