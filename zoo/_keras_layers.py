"""Keras building blocks the families share. Imported only inside ``build_keras``.

:func:`self_attention` is the twin of ``zoo._torch_layers.SelfAttention``: Dense layers
named ``<prefix>.query``/``.key``/``.value`` (and ``.out_proj``) around :func:`attention`.

The raw-weight layers mirror zoo._torch_layers: the same class names, the same
weight names (``token``, ``embedding``) and shapes, so the weights copy one to one.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="parity_zoo")
class ClassToken(keras.layers.Layer):
    """Prepends a learned token (weight ``token``, shape (1, 1, dim)) to a (B, N, dim) sequence."""

    def build(self, input_shape: Any) -> None:
        self.token = self.add_weight(name="token", shape=(1, 1, int(input_shape[-1])),
                                     initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, x: Any) -> Any:
        token = ops.broadcast_to(ops.cast(self.token, x.dtype), (ops.shape(x)[0], 1, ops.shape(x)[-1]))
        return ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        n = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], n, input_shape[2])


@keras.saving.register_keras_serializable(package="parity_zoo")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned (1, length, dim) table (weight ``embedding``) to a (B, length, dim) sequence."""

    def build(self, input_shape: Any) -> None:
        self.embedding = self.add_weight(name="embedding", shape=(1, int(input_shape[1]), int(input_shape[2])),
                                         initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, x: Any) -> Any:
        return x + ops.cast(self.embedding, x.dtype)


def attention(q: Any, k: Any, v: Any, heads: int, additive_mask: Any = None) -> Any:
    """softmax(q k^T / sqrt(d) + mask) v, the same operations in the same order as the torch twin.

    q and k take the same number of operations to reach the scores, so Keras lists the
    query projection before the key projection (its layer order is by graph depth).
    """
    length, embed = int(q.shape[1]), int(q.shape[2])
    d = embed // heads
    qh = ops.transpose(ops.reshape(q, (-1, length, heads, d)), (0, 2, 1, 3))  # (B, h, L, d)
    kt = ops.transpose(ops.reshape(k, (-1, length, heads, d)), (0, 2, 3, 1))  # (B, h, d, L)
    vh = ops.transpose(ops.reshape(v, (-1, length, heads, d)), (0, 2, 1, 3))
    scores = ops.matmul(qh, kt) / math.sqrt(d)
    if additive_mask is not None:
        scores = scores + additive_mask
    probs = ops.softmax(scores, axis=-1)
    ctx = ops.matmul(probs, vh)
    return ops.reshape(ops.transpose(ctx, (0, 2, 1, 3)), (-1, length, embed))


def self_attention(x: Any, hidden: int, heads: int, prefix: str, additive_mask: Any = None,
                   out_proj: bool = False) -> Any:
    """Self-attention over ``x`` (B, L, hidden) with Dense layers ``{prefix}.query``, ``.key``,
    ``.value`` and, with ``out_proj``, ``{prefix}.out_proj`` (created in that order, as the
    torch twin creates its Linear layers)."""
    q = keras.layers.Dense(hidden, name=f"{prefix}.query")(x)
    k = keras.layers.Dense(hidden, name=f"{prefix}.key")(x)
    v = keras.layers.Dense(hidden, name=f"{prefix}.value")(x)
    ctx = attention(q, k, v, heads, additive_mask)
    return keras.layers.Dense(hidden, name=f"{prefix}.out_proj")(ctx) if out_proj else ctx
