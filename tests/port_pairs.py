"""Twin pairs written the way a user writes them: not zoo models, not one-layer pairs.

Each pair ``NAME`` has two factories, ``NAME_torch(seed=0)`` and ``NAME_keras(seed=0)``,
that return a built model (importable as ``tests.port_pairs:NAME_torch``), with the same
layer names on both sides, every initializer seeded (torch under ``torch.manual_seed``,
global RNG restored afterwards; Keras after ``keras.utils.set_random_seed``) and biases
and BatchNorm statistics made non-trivial (``zoo.weights.randomize``: fresh statistics,
mean 0 and variance 1, would hide a BatchNorm that is ported wrongly).

``PAIRS[NAME]`` describes the pair: its inputs (by name, torch layout, in torch's argument
order), the order of the Keras model's inputs, and each output's layout; ``torch_inputs``
and ``keras_inputs`` draw seeded inputs for either side, ``to_torch_layout`` turns the
Keras outputs into torch's layout.

- ``vision``: stride-2 conv (TF 'same' padding), Conv -> ReLU -> BN, Conv -> BN, depthwise
  conv with depth multiplier 2, global average pooling, dense head.
- ``preact``: pre-activation residual blocks (BN -> ReLU -> Conv), a projection and an
  identity shortcut, a BatchNorm after the residual Add.
- ``two_in_two_out``: an image and a vector in, logits and a feature map out.
- ``swapped_inputs``: the Keras model takes its inputs in the other order than torch's
  ``forward`` (matched by name), with same-shape dense layers on each input that come in
  another order in each framework (matched by layer name, not by position).
- ``subclassed``: a ``keras.layers.Dense`` subclass and an ``nn.Linear`` subclass.
- ``dilated_tcn``: a dilated 1-D CNN over (batch, channels, length).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.weights import randomize

_TO_KERAS = {"NCHW": (0, 2, 3, 1), "NCL": (0, 2, 1)}
_TO_TORCH = {"NCHW": (0, 3, 1, 2), "NCL": (0, 2, 1)}


@dataclass(frozen=True)
class Input:
    """One model input: ``shape`` without the batch, in torch's layout."""

    name: str
    shape: tuple[int, ...]
    layout: str  # "NCHW" | "NCL" | "NC" | "NLC"
    dtype: str = "float32"


@dataclass(frozen=True)
class PortPair:
    """How to feed a pair and read its outputs; the models come from ``torch(seed)`` and ``keras(seed)``."""

    name: str
    torch: Callable[..., Any]
    keras: Callable[..., Any]
    inputs: tuple[Input, ...]  # torch's argument order
    keras_order: tuple[str, ...]  # the Keras model's input names, in its order
    outputs: tuple[str, ...]  # each output's layout in torch, in order

    def arrays(self, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded inputs by name, torch layout."""
        rng = np.random.default_rng(seed)
        return {i.name: rng.standard_normal((batch, *i.shape)).astype(i.dtype) for i in self.inputs}

    def torch_inputs(self, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [arrays[i.name] for i in self.inputs]

    def keras_inputs(self, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        layout = {i.name: i.layout for i in self.inputs}
        return [_transpose(arrays[n], _TO_KERAS.get(layout[n])) for n in self.keras_order]

    def to_torch_layout(self, keras_outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [_transpose(y, _TO_TORCH.get(layout)) for y, layout in zip(keras_outputs, self.outputs, strict=True)]


def _transpose(a: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(perm)) if perm else a


def _seeded_torch(build: Callable[[], Any]) -> Callable[..., Any]:
    """``build`` under ``torch.manual_seed(seed)`` (the global RNG restored), in eval mode, randomized."""

    @functools.wraps(build)
    def factory(seed: int = 0) -> Any:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build()
        randomize(model, "torch", seed + 100)
        return model.eval()

    return factory


def _seeded_keras(build: Callable[[], Any]) -> Callable[..., Any]:
    """``build`` after ``keras.utils.set_random_seed(seed)``, randomized."""

    @functools.wraps(build)
    def factory(seed: int = 0) -> Any:
        import keras

        keras.utils.set_random_seed(seed)
        model = build()
        randomize(model, "tf", seed + 200)
        return model

    return factory


def _bn_keras(name: str) -> Any:
    """A Keras BatchNormalization with torch's defaults (epsilon 1e-5, momentum 0.9 in Keras's convention)."""
    import keras

    return keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name)


# ----------------------------------------------------------------------------- (a) vision


@_seeded_torch
def vision_torch() -> Any:
    import torch
    from torch import nn

    class Vision(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(16)
            self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.pad(x, (0, 1, 0, 1))  # TF 'same' for k=3, s=2 on an even size
            x = self.bn1(torch.relu(self.conv1(x)))  # BatchNorm after the activation
            x = torch.relu(self.bn2(self.conv2(x)))  # BatchNorm right after the conv
            x = torch.relu(self.dw(x))
            return self.fc(x.mean(dim=(2, 3)))

    return Vision()


@_seeded_keras
def vision_keras() -> Any:
    import keras
    from keras import layers as L

    x = inp = keras.Input((16, 16, 3), name="x")
    x = _bn_keras("bn1")(L.ReLU()(L.Conv2D(8, 3, strides=2, padding="same", name="conv1")(x)))
    x = L.ReLU()(_bn_keras("bn2")(L.Conv2D(16, 3, padding="same", use_bias=False, name="conv2")(x)))
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu", name="dw")(x)
    out = L.Dense(10, name="fc")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name="vision")


# ----------------------------------------------------------------------------- (b) pre-activation residual


@_seeded_torch
def preact_torch() -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin)
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pre = torch.relu(self.bn1(x))
            out = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
            return out + (self.shortcut(pre) if self.shortcut is not None else x)

    class PreAct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.block1 = Block(8, 16)
            self.block2 = Block(16, 16)
            self.bn_out = nn.BatchNorm2d(16)
            self.fc = nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.block2(self.block1(self.stem(x)))
            return self.fc(torch.relu(self.bn_out(x)).mean(dim=(2, 3)))

    return PreAct()


@_seeded_keras
def preact_keras() -> Any:
    import keras
    from keras import layers as L

    def block(x: Any, name: str, cout: int, project: bool) -> Any:
        pre = L.ReLU()(_bn_keras(f"{name}.bn1")(x))
        out = L.Conv2D(cout, 3, padding="same", use_bias=False, name=f"{name}.conv1")(pre)
        out = L.Conv2D(cout, 3, padding="same", use_bias=False, name=f"{name}.conv2")(
            L.ReLU()(_bn_keras(f"{name}.bn2")(out)))
        short = L.Conv2D(cout, 1, use_bias=False, name=f"{name}.shortcut")(pre) if project else x
        return L.Add()([out, short])

    x = inp = keras.Input((8, 8, 3), name="x")
    x = L.Conv2D(8, 3, padding="same", name="stem")(x)
    x = block(block(x, "block1", 16, True), "block2", 16, False)
    x = L.GlobalAveragePooling2D()(L.ReLU()(_bn_keras("bn_out")(x)))
    return keras.Model(inp, L.Dense(5, name="fc")(x), name="preact")


# ----------------------------------------------------------------------------- (c) two inputs, two outputs


@_seeded_torch
def two_in_two_out_torch() -> Any:
    import torch
    from torch import nn

    class TwoInTwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.meta_fc = nn.Linear(4, 6)
            self.head = nn.Linear(12, 3)

        def forward(self, image: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            fmap = torch.relu(self.bn(self.conv(image)))
            pooled = fmap.mean(dim=(2, 3))
            logits = self.head(torch.cat([pooled, torch.tanh(self.meta_fc(meta))], dim=1))
            return logits, fmap

    return TwoInTwoOut()


@_seeded_keras
def two_in_two_out_keras() -> Any:
    import keras
    from keras import layers as L

    image = keras.Input((8, 8, 3), name="image")
    meta = keras.Input((4,), name="meta")
    fmap = L.ReLU()(_bn_keras("bn")(L.Conv2D(6, 3, padding="same", name="conv")(image)))
    pooled = L.GlobalAveragePooling2D()(fmap)
    logits = L.Dense(3, name="head")(L.Concatenate()([pooled, L.Dense(6, activation="tanh", name="meta_fc")(meta)]))
    return keras.Model([image, meta], [logits, fmap], name="two_in_two_out")


# ----------------------------------------------------------------------------- (d) input order differs


@_seeded_torch
def swapped_inputs_torch() -> Any:
    import torch
    from torch import nn

    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc_a = nn.Linear(6, 8)
            self.enc_b = nn.Linear(6, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.enc_a(a)) * torch.sigmoid(self.enc_b(b)))

    return Swapped()


@_seeded_keras
def swapped_inputs_keras() -> Any:
    import keras
    from keras import layers as L

    # The Keras model takes (b, a) where torch's forward takes (a, b), and builds enc_b first: its layer
    # order (enc_b, enc_a, head) differs from torch's forward order, with enc_a and enc_b the same shape.
    b = keras.Input((6,), name="b")
    a = keras.Input((6,), name="a")
    gate = L.Dense(8, activation="sigmoid", name="enc_b")(b)
    x = L.Multiply()([gate, L.Dense(8, activation="relu", name="enc_a")(a)])
    return keras.Model([b, a], L.Dense(2, name="head")(x), name="swapped_inputs")


# ----------------------------------------------------------------------------- (e) subclassed dense layers


@_seeded_torch
def subclassed_torch() -> Any:
    import torch
    from torch import nn

    class ScaledLinear(nn.Linear):
        """A user's Linear subclass (what it adds does not change the parameters)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)

    class Subclassed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = ScaledLinear(10, 16)
            self.fc2 = ScaledLinear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)))

    return Subclassed()


@_seeded_keras
def subclassed_keras() -> Any:
    import keras

    class MyDense(keras.layers.Dense):
        """A user's Dense subclass (today's `type(layer) is Dense` checks would miss it)."""

        def call(self, inputs: Any) -> Any:
            return super().call(inputs)

    x = inp = keras.Input((10,), name="x")
    x = MyDense(16, activation="relu", name="fc1")(x)
    return keras.Model(inp, MyDense(4, name="fc2")(x), name="subclassed")


# ----------------------------------------------------------------------------- (f) dilated 1-D CNN


@_seeded_torch
def dilated_tcn_torch() -> Any:
    import torch
    from torch import nn

    class DilatedTCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv1d(4, 8, 3, dilation=1)
            self.conv2 = nn.Conv1d(8, 8, 3, dilation=2)
            self.bn = nn.BatchNorm1d(8)
            self.conv3 = nn.Conv1d(8, 6, 3, dilation=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv1(nn.functional.pad(x, (2, 0))))  # causal padding
            x = self.bn(torch.relu(self.conv2(nn.functional.pad(x, (4, 0)))))
            return self.conv3(nn.functional.pad(x, (8, 0)))

    return DilatedTCN()


@_seeded_keras
def dilated_tcn_keras() -> Any:
    import keras
    from keras import layers as L

    x = inp = keras.Input((24, 4), name="x")
    x = L.Conv1D(8, 3, dilation_rate=1, padding="causal", activation="relu", name="conv1")(x)
    x = _bn_keras("bn")(L.Conv1D(8, 3, dilation_rate=2, padding="causal", activation="relu", name="conv2")(x))
    return keras.Model(inp, L.Conv1D(6, 3, dilation_rate=4, padding="causal", name="conv3")(x), name="dilated_tcn")


PAIRS: dict[str, PortPair] = {p.name: p for p in (
    PortPair("vision", vision_torch, vision_keras, (Input("x", (3, 16, 16), "NCHW"),), ("x",), ("NC",)),
    PortPair("preact", preact_torch, preact_keras, (Input("x", (3, 8, 8), "NCHW"),), ("x",), ("NC",)),
    PortPair("two_in_two_out", two_in_two_out_torch, two_in_two_out_keras,
             (Input("image", (3, 8, 8), "NCHW"), Input("meta", (4,), "NC")), ("image", "meta"), ("NC", "NCHW")),
    PortPair("swapped_inputs", swapped_inputs_torch, swapped_inputs_keras,
             (Input("a", (6,), "NC"), Input("b", (6,), "NC")), ("b", "a"), ("NC",)),
    PortPair("subclassed", subclassed_torch, subclassed_keras, (Input("x", (10,), "NC"),), ("x",), ("NC",)),
    PortPair("dilated_tcn", dilated_tcn_torch, dilated_tcn_keras, (Input("x", (4, 24), "NCL"),), ("x",), ("NCL",)),
)}
