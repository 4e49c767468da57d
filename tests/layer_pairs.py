"""Tiny twin pairs, one per layer kind, defined here and not in the zoo.

Each factory returns (torch module, keras model, input in torch layout, input layout).
Names are the same on both sides so a failure reads the same in either direction.
``PAIRS[kind](seed=0)`` builds a pair with every initialiser and the input seeded: the
torch modules are created under ``torch.manual_seed(seed)`` (global RNG restored after),
the Keras layers after ``keras.utils.set_random_seed(seed)`` (as ``zoo.spec`` does: each
unseeded Keras initializer draws its seed from it when the layer is created), and the
input comes from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Pair:
    torch_model: Any
    keras_model: Any
    x: np.ndarray  # torch layout
    layout: str  # "NC", "NCL", "NCHW", "NLC" (same in both), "ids"

    def keras_input(self) -> np.ndarray:
        perm = {"NCL": (0, 2, 1), "NCHW": (0, 2, 3, 1)}.get(self.layout)
        return np.ascontiguousarray(self.x.transpose(perm)) if perm else self.x


PAIRS: dict[str, Callable[..., Pair]] = {}


def _pair(factory: Callable[[np.random.Generator], Pair]) -> Callable[..., Pair]:
    """Register ``factory`` in PAIRS under its name, wrapped so that every build is seeded."""

    @functools.wraps(factory)
    def build(seed: int = 0) -> Pair:
        import keras
        import torch

        keras.utils.set_random_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return factory(np.random.default_rng(seed))

    PAIRS[factory.__name__] = build
    return build


def _seq(*layers: Any) -> Any:
    from torch import nn

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, layer in layers:
                self.add_module(name, layer)

        def forward(self, x: Any) -> Any:
            for child in self.children():
                x = child(x)
                if isinstance(x, tuple):  # RNNs return (output, state)
                    x = x[0]
            return x

    return Seq()


def _kseq(shape: tuple[int, ...], *layers: Any, dtype: str = "float32") -> Any:
    import keras

    x = inp = keras.Input(shape, dtype=dtype)
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x)


@_pair
def dense2d(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("fc", nn.Linear(8, 6))), _kseq((8,), L.Dense(6, name="fc")),
                rng.standard_normal((3, 8)).astype(np.float32), "NC")


@_pair
def dense3d(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("fc", nn.Linear(8, 6))), _kseq((5, 8), L.Dense(6, name="fc")),
                rng.standard_normal((3, 5, 8)).astype(np.float32), "NLC")


@_pair
def conv1d(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("conv", nn.Conv1d(3, 8, 3, dilation=2))), _kseq((12, 3), L.Conv1D(8, 3, dilation_rate=2, name="conv")),
                rng.standard_normal((3, 3, 12)).astype(np.float32), "NCL")


@_pair
def conv2d_stride(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("conv", nn.Conv2d(3, 8, 3, stride=2))), _kseq((9, 9, 3), L.Conv2D(8, 3, strides=2, name="conv")),
                rng.standard_normal((3, 3, 9, 9)).astype(np.float32), "NCHW")


@_pair
def conv2d_dilation(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("conv", nn.Conv2d(3, 8, 3, dilation=2))),
                _kseq((9, 9, 3), L.Conv2D(8, 3, dilation_rate=2, name="conv")),
                rng.standard_normal((3, 3, 9, 9)).astype(np.float32), "NCHW")


@_pair
def conv2d_groups(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("conv", nn.Conv2d(4, 8, 3, groups=2))), _kseq((8, 8, 4), L.Conv2D(8, 3, groups=2, name="conv")),
                rng.standard_normal((3, 4, 8, 8)).astype(np.float32), "NCHW")


@_pair
def depthwise(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("dw", nn.Conv2d(4, 8, 3, groups=4))),
                _kseq((8, 8, 4), L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")),
                rng.standard_normal((3, 4, 8, 8)).astype(np.float32), "NCHW")


@_pair
def conv_transpose2d(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("up", nn.ConvTranspose2d(4, 6, 3, stride=2))),
                _kseq((5, 5, 4), L.Conv2DTranspose(6, 3, strides=2, name="up")),
                rng.standard_normal((3, 4, 5, 5)).astype(np.float32), "NCHW")


@_pair
def batchnorm1d(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("fc", nn.Linear(8, 6)), ("bn", nn.BatchNorm1d(6))),
                _kseq((8,), L.Dense(6, name="fc"), L.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")),
                rng.standard_normal((3, 8)).astype(np.float32), "NC")


@_pair
def batchnorm2d(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("conv", nn.Conv2d(3, 8, 3)), ("bn", nn.BatchNorm2d(8))),
                _kseq((8, 8, 3), L.Conv2D(8, 3, name="conv"), L.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")),
                rng.standard_normal((3, 3, 8, 8)).astype(np.float32), "NCHW")


@_pair
def layernorm(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("fc", nn.Linear(8, 8)), ("ln", nn.LayerNorm(8))),
                _kseq((5, 8), L.Dense(8, name="fc"), L.LayerNormalization(epsilon=1e-5, name="ln")),
                rng.standard_normal((3, 5, 8)).astype(np.float32), "NLC")


@_pair
def groupnorm(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("conv", nn.Conv2d(3, 8, 3)), ("gn", nn.GroupNorm(2, 8))),
                _kseq((8, 8, 3), L.Conv2D(8, 3, name="conv"), L.GroupNormalization(2, epsilon=1e-5, name="gn")),
                rng.standard_normal((3, 3, 8, 8)).astype(np.float32), "NCHW")


@_pair
def embedding(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("emb", nn.Embedding(20, 8)), ("fc", nn.Linear(8, 4))),
                _kseq((5,), L.Embedding(20, 8, name="emb"), L.Dense(4, name="fc"), dtype="int64"),
                rng.integers(0, 20, (3, 5)).astype(np.int64), "ids")


@_pair
def lstm(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("lstm", nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True))),
                _kseq((5, 8), L.Bidirectional(L.LSTM(16, return_sequences=True), name="lstm_0"),
                      L.Bidirectional(L.LSTM(16, return_sequences=True), name="lstm_1")),
                rng.standard_normal((3, 5, 8)).astype(np.float32), "NLC")


@_pair
def gru(rng: np.random.Generator) -> Pair:
    from keras import layers as L
    from torch import nn

    return Pair(_seq(("gru", nn.GRU(8, 16, batch_first=True))),
                _kseq((5, 8), L.GRU(16, return_sequences=True, reset_after=True, name="gru")),
                rng.standard_normal((3, 5, 8)).astype(np.float32), "NLC")


@_pair
def mixed_parameter_free(rng: np.random.Generator) -> Pair:
    """Pooling, activations, dropout, residual add, concatenation and flatten between parametric layers."""
    import keras
    import torch
    from keras import layers as L
    from torch import nn

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.conv3 = nn.Conv2d(8, 4, 1)
            self.drop = nn.Dropout(0.5)
            self.fc = nn.Linear(12 * 2 * 2, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.relu(self.conv1(x))
            b = torch.nn.functional.gelu(self.conv2(a)) + a  # residual
            c = torch.cat([b, torch.sigmoid(self.conv3(b))], dim=1)  # channels
            c = torch.nn.functional.max_pool2d(c, 2)
            c = torch.nn.functional.avg_pool2d(c, 2)
            return self.fc(torch.flatten(self.drop(c), 1))

    x = inp = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    b = L.Add()([L.Conv2D(8, 3, padding="same", activation="gelu", name="conv2")(a), a])
    b2 = L.Conv2D(4, 1, activation="sigmoid", name="conv3")(b)
    c = L.Concatenate(axis=-1)([b, b2])
    c = L.AveragePooling2D(2)(L.MaxPooling2D(2)(c))
    out = L.Dense(5, name="fc")(L.Flatten()(L.Dropout(0.5, name="drop")(c)))
    return Pair(Mixed(), keras.Model(inp, out), rng.standard_normal((3, 3, 8, 8)).astype(np.float32), "NCHW")


@_pair
def attention(rng: np.random.Generator) -> Pair:
    """Self-attention, batch_first; torch packs Q, K, V into one projection, Keras has three."""
    import keras
    import torch
    from torch import nn

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    x = inp = keras.Input((5, 8))
    out = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    return Pair(SelfAttention(), keras.Model(inp, out), rng.standard_normal((3, 5, 8)).astype(np.float32), "NLC")

