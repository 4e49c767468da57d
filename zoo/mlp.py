"""Multi-layer perceptron: Dense/Linear layers with ReLU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo._config import resolve
from zoo.registry import register
from zoo.spec import ModelSpec, TensorSpec, Tolerance


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 32
    hidden: tuple[int, ...] = (64, 64)
    classes: int = 10


PRESETS = {"small": MLPConfig(), "standard": MLPConfig(in_features=784, hidden=(512, 512), classes=10)}

TOLERANCE = Tolerance(
    atol=1e-5,
    rtol=1e-5,
    reason=(
        "float32 matmuls summed in a different order by each runtime differ by about "
        "sqrt(K)*eps*|y| (K<=784 here: ~3e-6 of the output scale); 1e-5 of the output "
        "scale leaves room for three layers and still catches any mis-ported weight"
    ),
)


def layer_names(cfg: MLPConfig) -> list[str]:
    return [f"fc{i + 1}" for i in range(len(cfg.hidden))] + ["head"]


def build_torch(cfg: MLPConfig) -> Any:
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            sizes = [cfg.in_features, *cfg.hidden]
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
                self.add_module(f"fc{i + 1}", nn.Linear(a, b))
            self.head = nn.Linear(sizes[-1], cfg.classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i in range(len(cfg.hidden)):
                x = torch.relu(getattr(self, f"fc{i + 1}")(x))
            return self.head(x)

    return MLP()


def build_keras(cfg: MLPConfig) -> Any:
    import keras

    x = inputs = keras.Input((cfg.in_features,), name="x")
    for i, width in enumerate(cfg.hidden):
        x = keras.layers.Dense(width, activation="relu", name=f"fc{i + 1}")(x)
    logits = keras.layers.Dense(cfg.classes, name="head")(x)
    return keras.Model(inputs, logits, name="mlp")


@register("mlp")
def spec(preset: str = "small", **overrides: Any) -> ModelSpec:
    cfg = resolve(PRESETS, preset, overrides, "mlp")
    return ModelSpec(
        name="mlp",
        family="mlp",
        preset=preset,
        config=cfg,
        inputs=(TensorSpec("x", (cfg.in_features,), layout="NC"),),
        outputs=(TensorSpec("logits", (cfg.classes,), layout="NC"),),
        tolerance=TOLERANCE,
        torch_builder=build_torch,
        keras_builder=build_keras,
        presets=tuple(PRESETS),
    )
