"""Vision Transformer (Dosovitskiy et al. 2021) in torchvision's layout.

A stride-``patch`` conv embeds the patches, a learned class token is prepended, a
learned position embedding is added, then ``layers`` pre-norm encoder blocks
(x + attn(ln_1(x)); x + mlp(ln_2(x))), a final LayerNorm, and a head on the class token.

Names follow torchvision's ``vit_b_16`` (``conv_proj``, ``encoder.layers.encoder_layer_0.ln_1``,
``mlp.0`` / ``mlp.3``, ``encoder.ln``, ``heads.head``) with two deliberate differences:
attention uses explicit ``self_attention.query/key/value/out_proj`` Linear/Dense layers
(torchvision's ``nn.MultiheadAttention`` packs q, k, v into one ``in_proj_weight`` of
(3E, E): split it in three to load a checkpoint), and the two raw weights live in
modules of their own so they have a layer name: ``class_token.token`` (1, 1, E) and
``encoder.pos_embedding.embedding`` (1, N+1, E) (torchvision: ``class_token`` and
``encoder.pos_embedding``). On the Keras side these are the ``ClassToken`` and
``PositionEmbedding`` layers of zoo._keras_layers, with the same weight names.

Traps it exercises: LayerNorm epsilon 1e-6 (Keras' default is 1e-3), exact GELU, and
patch order: the conv output flattens row-major over (h, w) on both sides (torch
(B, E, h, w) -> (B, h*w, E), Keras (B, h, w, E) -> (B, h*w, E)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo._config import resolve
from zoo.registry import register
from zoo.spec import ModelSpec, TensorSpec, Tolerance


@dataclass(frozen=True)
class ViTConfig:
    in_channels: int = 3
    image: int = 32
    patch: int = 8
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    mlp: int = 64
    classes: int = 10
    layer_norm_eps: float = 1e-6


PRESETS = {
    "small": ViTConfig(),
    # ViT-B/16 (torchvision vit_b_16)
    "standard": ViTConfig(image=224, patch=16, hidden=768, layers=12, heads=12, mlp=3072, classes=1000),
}

TOLERANCE = Tolerance(
    atol=2e-5,
    rtol=2e-5,
    reason=(
        "a patch conv with K = 3*16*16 = 768, then per block matmuls with K <= 3072, a softmax "
        "and pre-norm LayerNorms, with a residual stream that keeps earlier errors; torch vs "
        "Keras twin measured 2e-7 (small) and 7e-7 (standard, 12 blocks) of the logit scale on "
        "CPU; 2e-5 leaves >10x for other runtimes and still catches tanh-GELU (6e-5 at small, "
        "1.7e-4 at standard) and a Keras-default LayerNorm epsilon (1e-2)"
    ),
)


def _check(cfg: ViTConfig) -> None:
    if cfg.image % cfg.patch:
        raise ValueError(f"vit image size {cfg.image} is not a multiple of the patch size {cfg.patch}")
    if cfg.hidden % cfg.heads:
        raise ValueError(f"vit hidden size {cfg.hidden} is not a multiple of heads {cfg.heads}")


def _tokens(cfg: ViTConfig) -> int:
    return (cfg.image // cfg.patch) ** 2 + 1


def build_torch(cfg: ViTConfig) -> Any:
    import torch
    from torch import nn

    from zoo._torch_layers import ClassToken, PositionEmbedding, SelfAttention

    _check(cfg)
    eps = cfg.layer_norm_eps

    class EncoderBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(cfg.hidden, eps=eps)
            self.self_attention = SelfAttention(cfg.hidden, cfg.heads, out_proj=True)
            self.ln_2 = nn.LayerNorm(cfg.hidden, eps=eps)
            self.mlp = nn.Sequential(nn.Linear(cfg.hidden, cfg.mlp), nn.GELU(), nn.Dropout(0.0),
                                     nn.Linear(cfg.mlp, cfg.hidden), nn.Dropout(0.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.self_attention(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos_embedding = PositionEmbedding(_tokens(cfg), cfg.hidden)
            self.layers = nn.Sequential()
            for i in range(cfg.layers):
                self.layers.add_module(f"encoder_layer_{i}", EncoderBlock())
            self.ln = nn.LayerNorm(cfg.hidden, eps=eps)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ln(self.layers(self.pos_embedding(x)))

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_proj = nn.Conv2d(cfg.in_channels, cfg.hidden, cfg.patch, stride=cfg.patch)
            self.class_token = ClassToken(cfg.hidden)
            self.encoder = Encoder()
            self.heads = nn.Sequential()
            self.heads.add_module("head", nn.Linear(cfg.hidden, cfg.classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (B, h*w, E), row-major patches
            x = self.encoder(self.class_token(x))
            return self.heads(x[:, 0])

    return ViT()


def build_keras(cfg: ViTConfig) -> Any:
    import keras
    from keras import layers

    from zoo._keras_layers import ClassToken, PositionEmbedding, self_attention

    _check(cfg)
    eps = cfg.layer_norm_eps

    x = inputs = keras.Input((cfg.image, cfg.image, cfg.in_channels), name="x")
    x = layers.Conv2D(cfg.hidden, cfg.patch, strides=cfg.patch, padding="valid", name="conv_proj")(x)
    x = layers.Reshape((_tokens(cfg) - 1, cfg.hidden), name="patches")(x)
    x = ClassToken(name="class_token")(x)
    x = PositionEmbedding(name="encoder.pos_embedding")(x)
    for i in range(cfg.layers):
        p = f"encoder.layers.encoder_layer_{i}"
        h = layers.LayerNormalization(epsilon=eps, name=f"{p}.ln_1")(x)
        x = x + self_attention(h, cfg.hidden, cfg.heads, f"{p}.self_attention", out_proj=True)
        h = layers.LayerNormalization(epsilon=eps, name=f"{p}.ln_2")(x)
        h = keras.activations.gelu(layers.Dense(cfg.mlp, name=f"{p}.mlp.0")(h), approximate=False)
        x = x + layers.Dense(cfg.hidden, name=f"{p}.mlp.3")(h)
    x = layers.LayerNormalization(epsilon=eps, name="encoder.ln")(x)
    logits = layers.Dense(cfg.classes, name="heads.head")(x[:, 0])
    return keras.Model(inputs, logits, name="vit")


@register("vit")
def spec(preset: str = "small", **overrides: Any) -> ModelSpec:
    cfg = resolve(PRESETS, preset, overrides, "vit")
    _check(cfg)
    return ModelSpec(
        name="vit",
        family="vit",
        preset=preset,
        config=cfg,
        inputs=(TensorSpec("x", (cfg.in_channels, cfg.image, cfg.image), layout="NCHW"),),
        outputs=(TensorSpec("logits", (cfg.classes,), layout="NC"),),
        tolerance=TOLERANCE,
        torch_builder=build_torch,
        keras_builder=build_keras,
        presets=tuple(PRESETS),
    )
