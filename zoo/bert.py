"""BERT encoder with pooler, named after Hugging Face's ``BertModel``.

Token, position and token-type embeddings (summed in that order), LayerNorm, then
``layers`` post-norm encoder layers: self-attention with explicit query/key/value
projections and a padding mask, an output projection, residual + LayerNorm, an exact-GELU
feed-forward, residual + LayerNorm; the pooler is dense + tanh on the first token.
Outputs: ``last_hidden_state`` (B, L, hidden) and ``pooler_output`` (B, hidden).

Layer names are Hugging Face's (``embeddings.word_embeddings``,
``encoder.layer.0.attention.self.query``, ``encoder.layer.0.output.LayerNorm``,
``pooler.dense`` ...), so a ``bert-base-uncased`` state dict maps by name
(position ids are computed, not a buffer).

Traps it exercises: LayerNorm epsilon 1e-12 (Keras' default is 1e-3), exact (erf)
GELU, and the padding mask: ``attention_mask`` is 1 where a token is attended; both
twins add (1 - mask) * float32.min to the attention scores, as Hugging Face does, so
pad positions get exactly zero weight and their token ids cannot move any valid output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo._config import resolve
from zoo._sequences import token_batch
from zoo.registry import register
from zoo.spec import ModelSpec, TensorSpec, Tolerance

FLOAT32_MIN = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class BertConfig:
    vocab: int = 100
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    intermediate: int = 64
    max_positions: int = 32
    type_vocab: int = 2
    layer_norm_eps: float = 1e-12
    seq_len: int = 16


PRESETS = {
    "small": BertConfig(),
    # BERT-base (Devlin et al. 2019; bert-base-uncased)
    "standard": BertConfig(vocab=30522, hidden=768, layers=12, heads=12, intermediate=3072,
                           max_positions=512, type_vocab=2, layer_norm_eps=1e-12, seq_len=128),
}

TOLERANCE = Tolerance(
    atol=2e-5,
    rtol=2e-5,
    reason=(
        "per layer: matmuls with K = hidden or intermediate (<= 3072), a softmax and LayerNorms "
        "that renormalise; torch vs Keras twin measured 3e-7 (small) and 1.4e-6 (standard, 12 "
        "layers) of the output scale on CPU; 2e-5 leaves >10x for other runtimes and still "
        "catches tanh-GELU (6e-5 at small, 1.1e-4 at standard) and a Keras-default LayerNorm "
        "epsilon (6e-4)"
    ),
)


def _check(cfg: BertConfig) -> None:
    if cfg.hidden % cfg.heads:
        raise ValueError(f"bert hidden size {cfg.hidden} is not a multiple of heads {cfg.heads}")
    if cfg.seq_len > cfg.max_positions:
        raise ValueError(f"bert seq_len {cfg.seq_len} exceeds max_positions {cfg.max_positions}")


def _inputs(cfg: BertConfig, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids, mask = token_batch(batch, cfg.seq_len, cfg.vocab, rng)
    lengths = mask.sum(axis=1)
    # sentence A then sentence B inside each valid span; pads are type 0, as HF tokenizers do
    split = np.array([rng.integers(1, n + 1) for n in lengths])[:, None]
    types = ((np.arange(cfg.seq_len)[None, :] >= split) & (mask == 1)).astype(np.int64)
    if cfg.type_vocab < 2:
        types[:] = 0
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def build_torch(cfg: BertConfig) -> Any:
    import torch
    from torch import nn

    from zoo._torch_layers import SelfAttention

    _check(cfg)
    eps = cfg.layer_norm_eps

    class Embeddings(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(cfg.vocab, cfg.hidden)
            self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
            self.token_type_embeddings = nn.Embedding(cfg.type_vocab, cfg.hidden)
            self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=eps)

        def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
            x = x + self.token_type_embeddings(token_type_ids)
            return self.LayerNorm(x)

    class DenseNorm(nn.Module):  # HF's BertSelfOutput / BertOutput: dense, residual, LayerNorm
        def __init__(self, inp: int) -> None:
            super().__init__()
            self.dense = nn.Linear(inp, cfg.hidden)
            self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=eps)

        def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
            return self.LayerNorm(self.dense(x) + residual)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self = SelfAttention(cfg.hidden, cfg.heads)
            self.output = DenseNorm(cfg.hidden)

        def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
            return self.output(self.self(h, additive_mask), h)

    class Intermediate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(cfg.hidden, cfg.intermediate)
            self.act = nn.GELU()  # exact (erf)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.dense(x))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = Attention()
            self.intermediate = Intermediate()
            self.output = DenseNorm(cfg.intermediate)

        def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
            a = self.attention(h, additive_mask)
            return self.output(self.intermediate(a), a)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.ModuleList([Layer() for _ in range(cfg.layers)])

        def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
            for layer in self.layer:
                h = layer(h, additive_mask)
            return h

    class Pooler(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(cfg.hidden, cfg.hidden)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.dense(h[:, 0]))

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = Embeddings()
            self.encoder = Encoder()
            self.pooler = Pooler()

        def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            additive = (1.0 - attention_mask.to(torch.float32))[:, None, None, :] * FLOAT32_MIN
            h = self.encoder(self.embeddings(input_ids, token_type_ids), additive)
            return h, self.pooler(h)

    return Bert()


def build_keras(cfg: BertConfig) -> Any:
    import keras
    from keras import layers, ops

    from zoo._keras_layers import self_attention

    _check(cfg)
    eps = cfg.layer_norm_eps

    def layer_norm(name: str) -> Any:
        return layers.LayerNormalization(axis=-1, epsilon=eps, name=name)

    ids = keras.Input((cfg.seq_len,), dtype="int64", name="input_ids")
    types = keras.Input((cfg.seq_len,), dtype="int64", name="token_type_ids")
    attention_mask = keras.Input((cfg.seq_len,), dtype="int64", name="attention_mask")
    additive = ops.expand_dims(1.0 - ops.cast(attention_mask, "float32"), (1, 2)) * FLOAT32_MIN
    # 0, 1, ..., L-1 per row, built from the input: a constant made here would be captured by
    # the exported tf.function as an extra graph input
    positions = ops.cumsum(ops.ones_like(ids), axis=1) - 1

    x = layers.Embedding(cfg.vocab, cfg.hidden, name="embeddings.word_embeddings")(ids)
    x = x + layers.Embedding(cfg.max_positions, cfg.hidden, name="embeddings.position_embeddings")(positions)
    x = x + layers.Embedding(cfg.type_vocab, cfg.hidden, name="embeddings.token_type_embeddings")(types)
    h = layer_norm("embeddings.LayerNorm")(x)
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}"
        ctx = self_attention(h, cfg.hidden, cfg.heads, f"{p}.attention.self", additive)
        a = layer_norm(f"{p}.attention.output.LayerNorm")(
            layers.Dense(cfg.hidden, name=f"{p}.attention.output.dense")(ctx) + h)
        f = layers.Dense(cfg.intermediate, name=f"{p}.intermediate.dense")(a)
        f = keras.activations.gelu(f, approximate=False)
        h = layer_norm(f"{p}.output.LayerNorm")(layers.Dense(cfg.hidden, name=f"{p}.output.dense")(f) + a)
    pooled = layers.Dense(cfg.hidden, activation="tanh", name="pooler.dense")(h[:, 0])
    return keras.Model([ids, types, attention_mask], [h, pooled], name="bert")


@register("bert")
def spec(preset: str = "small", **overrides: Any) -> ModelSpec:
    cfg = resolve(PRESETS, preset, overrides, "bert")
    _check(cfg)
    return ModelSpec(
        name="bert",
        family="bert",
        preset=preset,
        config=cfg,
        inputs=(TensorSpec("input_ids", (cfg.seq_len,), dtype="int64", layout="NL", low=0, high=cfg.vocab),
                TensorSpec("token_type_ids", (cfg.seq_len,), dtype="int64", layout="NL", low=0, high=cfg.type_vocab),
                TensorSpec("attention_mask", (cfg.seq_len,), dtype="int64", layout="NL", low=0, high=2)),
        outputs=(TensorSpec("last_hidden_state", (cfg.seq_len, cfg.hidden), layout="NLC"),
                 TensorSpec("pooler_output", (cfg.hidden,), layout="NC")),
        tolerance=TOLERANCE,
        torch_builder=build_torch,
        keras_builder=build_keras,
        presets=tuple(PRESETS),
        make_inputs=_inputs,
    )
