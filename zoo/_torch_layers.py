"""PyTorch building blocks the families share. Imported only inside ``build_torch``.

- :class:`Conv2dSame`: a ``Conv2d`` (so every rule for Conv2d applies) that reproduces
  TensorFlow's ``padding='same'`` for any stride: the padding is computed from the
  input size, and the extra pixel of an odd total goes at the end (bottom/right).
- :class:`ClassToken` and :class:`PositionEmbedding`: raw weights (no matmul) held by a
  module of their own, so that each has a module name its Keras twin layer shares.
- :func:`attention`: scaled dot-product attention over explicit q/k/v projections.
- :class:`SelfAttention`: the ``query``/``key``/``value`` (and optional ``out_proj``)
  Linear layers around :func:`attention`, shared by the BERT and ViT twins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TF 'same' along one axis of length ``size``."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow 'same' padding (asymmetric when the total is odd)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_pads(int(x.shape[-2]), self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = tf_same_pads(int(x.shape[-1]), self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


class ClassToken(nn.Module):
    """Prepends a learned token (parameter ``token``, shape (1, 1, dim)) to a (B, N, dim) sequence."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.trunc_normal_(self.token, std=0.02)  # torchvision starts from zeros; non-zero shows a bad port

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)


class PositionEmbedding(nn.Module):
    """Adds a learned (1, length, dim) table (parameter ``embedding``) to a (B, length, dim) sequence."""

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(1, length, dim))
        nn.init.normal_(self.embedding, std=0.02)  # as torchvision's ViT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.embedding


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              additive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over ``heads`` heads; q, k, v and the result are (B, L, E)."""
    batch, length, embed = q.shape
    d = embed // heads
    qh = q.reshape(batch, -1, heads, d).permute(0, 2, 1, 3)  # (B, h, L, d)
    kt = k.reshape(batch, -1, heads, d).permute(0, 2, 3, 1)  # (B, h, d, L)
    vh = v.reshape(batch, -1, heads, d).permute(0, 2, 1, 3)
    scores = torch.matmul(qh, kt) / math.sqrt(d)
    if additive_mask is not None:
        scores = scores + additive_mask
    probs = torch.softmax(scores, dim=-1)
    ctx = torch.matmul(probs, vh)  # (B, h, L, d)
    return ctx.permute(0, 2, 1, 3).reshape(batch, -1, embed)


class SelfAttention(nn.Module):
    """Self-attention with explicit ``query``, ``key``, ``value`` Linear projections (created in
    that order) and, with ``out_proj``, an ``out_proj`` Linear after :func:`attention`.

    The Keras twin is ``zoo._keras_layers.self_attention``, with the same layer names.
    """

    def __init__(self, hidden: int, heads: int, out_proj: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden) if out_proj else None

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor | None = None) -> torch.Tensor:
        ctx = attention(self.query(x), self.key(x), self.value(x), self.heads, additive_mask)
        return self.out_proj(ctx) if self.out_proj is not None else ctx
