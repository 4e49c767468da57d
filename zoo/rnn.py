"""Recurrent sequence models: a bidirectional-LSTM classifier and a per-step GRU tagger.

Inputs are token ids (int64, right-padded with 0) and an attention mask (1 valid,
0 pad). Embeddings are multiplied by the mask, so pad ids cannot move any output, and
per-step outputs are zeroed at pad positions.

``lstm``: Embedding, a stacked bidirectional LSTM (torch ``nn.LSTM(num_layers=2,
bidirectional=True, batch_first=True)``; Keras one ``Bidirectional(LSTM)`` per layer),
and a classifier on the last valid step. The backward direction must start at each
sequence's last valid step: torch packs the batch (``pack_padded_sequence``), Keras
passes the mask to the recurrent layers (masked steps keep the state). Packing makes
the torch twin exportable by the legacy (TorchScript) ONNX exporter only: torch.export
(the dynamo exporter) rejects the data-dependent shapes of a packed sequence. With
``packed=False`` neither side packs or masks: both directions run over the padded
length with zero inputs at pads, a different function (it depends on how much padding
a sequence has, never on pad ids) that the dynamo exporter can export.
The last valid step is selected by multiplying with a one-hot and summing (exact).

``gru``: Embedding, a unidirectional GRU with ``reset_after=True`` on the Keras side
(torch's gate semantics) and a Dense head per step. A forward-only recurrence never
sees the right-padding before a valid step, so neither side needs packing or a mask.

Naming convention (torch has one module for all stacked layers, Keras one layer per
stacked layer): a single-layer torch RNN module ``gru`` is twinned by the Keras layer
``gru``; a stacked one, ``lstm`` with parameters ``*_l{i}`` (and ``*_l{i}_reverse``), by
the Keras layers ``lstm.l0``, ``lstm.l1`` ... (a Bidirectional layer's forward/backward
sub-layers hold the two directions). See :func:`keras_rnn_names`.

Parameterisations differ: torch has two biases per gate (b_ih, b_hh). Keras LSTM has
one (port: b_ih + b_hh), so its count is lower by 4*hidden per layer and direction;
Keras GRU with reset_after=True keeps both (bias shape (2, 3*hidden)), so GRU counts agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo._config import resolve
from zoo._sequences import token_batch
from zoo.registry import register
from zoo.spec import ModelSpec, TensorSpec, Tolerance


def keras_rnn_names(torch_name: str, num_layers: int) -> list[str]:
    """Keras layer names that twin the torch RNN module ``torch_name`` of ``num_layers`` layers."""
    return [torch_name] if num_layers == 1 else [f"{torch_name}.l{i}" for i in range(num_layers)]


@dataclass(frozen=True)
class LSTMConfig:
    vocab: int = 50
    embed: int = 16
    hidden: int = 16
    layers: int = 2
    seq_len: int = 12
    classes: int = 4
    # True: the backward direction starts at each sequence's last valid step (torch packs,
    # Keras masks); exportable by torch's legacy ONNX exporter only. False: both directions
    # run over the whole padded length with zero inputs at pads (still independent of pad
    # ids, but dependent on the amount of padding); exportable by the dynamo exporter too.
    packed: bool = True


@dataclass(frozen=True)
class GRUConfig:
    vocab: int = 50
    embed: int = 16
    hidden: int = 24
    layers: int = 1
    seq_len: int = 12
    classes: int = 6  # per-step output size (tags)


LSTM_PRESETS = {
    "small": LSTMConfig(),
    # a common text-classification bi-LSTM: 300-d embeddings (GloVe size), 2 x 256 per direction
    "standard": LSTMConfig(vocab=20000, embed=300, hidden=256, layers=2, seq_len=128, classes=2),
}
GRU_PRESETS = {
    "small": GRUConfig(),
    # a sequence tagger of the usual size: 256-d embeddings, 2 stacked layers of 512
    "standard": GRUConfig(vocab=10000, embed=256, hidden=512, layers=2, seq_len=128, classes=32),
}

LSTM_TOLERANCE = Tolerance(
    atol=1e-5,
    rtol=1e-5,
    reason=(
        "gates are sigmoid/tanh of K = embed+hidden term dot products (<= 812 at standard); the "
        "saturating activations damp rounding and the cell state adds ~eps per step; torch vs "
        "Keras twin measured 2e-7 (small, 12 steps) and 3e-7 (standard, 128 steps) of the logit "
        "scale; 1e-5 leaves room for other runtimes and catches unsummed biases or reordered gates"
    ),
)
GRU_TOLERANCE = Tolerance(
    atol=1e-5,
    rtol=1e-5,
    reason=(
        "as the LSTM: K = embed+hidden <= 1024 per gate dot product, damped by sigmoid/tanh, "
        "~eps per step; torch vs Keras twin measured 1e-7 (small) and 4e-7 (standard, 2 layers, "
        "128 steps) of the output scale; 1e-5 leaves room for other runtimes and catches swapped "
        "r/z gates or reset_after=False"
    ),
)


def _lstm_inputs(cfg: LSTMConfig, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids, mask = token_batch(batch, cfg.seq_len, cfg.vocab, rng)
    return {"input_ids": ids, "attention_mask": mask}


def _gru_inputs(cfg: GRUConfig, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids, mask = token_batch(batch, cfg.seq_len, cfg.vocab, rng)
    return {"input_ids": ids, "attention_mask": mask}


def build_lstm_torch(cfg: LSTMConfig) -> Any:
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    def _last_valid_step(mask: torch.Tensor) -> torch.Tensor:
        """One-hot (B, L, 1) of each sequence's last valid step: valid here, pad (or end) next."""
        return mask - torch.nn.functional.pad(mask[:, 1:], (0, 0, 0, 1))

    class LSTMClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(cfg.vocab, cfg.embed)
            self.lstm = nn.LSTM(cfg.embed, cfg.hidden, num_layers=cfg.layers, bidirectional=True, batch_first=True)
            self.classifier = nn.Linear(2 * cfg.hidden, cfg.classes)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            mask = attention_mask.to(torch.float32).unsqueeze(-1)
            x = self.embedding(input_ids) * mask
            if cfg.packed:
                lengths = attention_mask.sum(dim=1).cpu()
                packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
                out, _ = self.lstm(packed)
                out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            else:
                out, _ = self.lstm(x)
            out = out * mask
            return self.classifier((out * _last_valid_step(mask)).sum(dim=1))

    return LSTMClassifier()


def build_lstm_keras(cfg: LSTMConfig) -> Any:
    import keras
    from keras import layers, ops

    ids = keras.Input((cfg.seq_len,), dtype="int64", name="input_ids")
    attention_mask = keras.Input((cfg.seq_len,), dtype="int64", name="attention_mask")
    mask = ops.expand_dims(ops.cast(attention_mask, "float32"), -1)
    valid = ops.cast(attention_mask, "bool") if cfg.packed else None
    x = layers.Embedding(cfg.vocab, cfg.embed, name="embedding")(ids) * mask
    for name in keras_rnn_names("lstm", cfg.layers):
        x = layers.Bidirectional(layers.LSTM(cfg.hidden, return_sequences=True), merge_mode="concat",
                                 name=name)(x, mask=valid)
    x = x * mask
    # one-hot of the last valid step (valid here, pad or end next); built from the input alone,
    # so the exported graph captures no constant tensor
    last = mask - ops.pad(mask[:, 1:], ((0, 0), (0, 1), (0, 0)))
    features = ops.sum(x * last, axis=1)
    logits = layers.Dense(cfg.classes, name="classifier")(features)
    return keras.Model([ids, attention_mask], logits, name="lstm")


def build_gru_torch(cfg: GRUConfig) -> Any:
    import torch
    from torch import nn

    class GRUTagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(cfg.vocab, cfg.embed)
            self.gru = nn.GRU(cfg.embed, cfg.hidden, num_layers=cfg.layers, batch_first=True)
            self.head = nn.Linear(cfg.hidden, cfg.classes)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            mask = attention_mask.to(torch.float32).unsqueeze(-1)
            out, _ = self.gru(self.embedding(input_ids) * mask)
            return self.head(out) * mask

    return GRUTagger()


def build_gru_keras(cfg: GRUConfig) -> Any:
    import keras
    from keras import layers, ops

    ids = keras.Input((cfg.seq_len,), dtype="int64", name="input_ids")
    attention_mask = keras.Input((cfg.seq_len,), dtype="int64", name="attention_mask")
    mask = ops.expand_dims(ops.cast(attention_mask, "float32"), -1)
    x = layers.Embedding(cfg.vocab, cfg.embed, name="embedding")(ids) * mask
    for name in keras_rnn_names("gru", cfg.layers):
        x = layers.GRU(cfg.hidden, return_sequences=True, reset_after=True, name=name)(x)
    y = layers.Dense(cfg.classes, name="head")(x) * mask
    return keras.Model([ids, attention_mask], y, name="gru")


def _token_specs(seq_len: int, vocab: int) -> tuple[TensorSpec, TensorSpec]:
    return (TensorSpec("input_ids", (seq_len,), dtype="int64", layout="NL", low=0, high=vocab),
            TensorSpec("attention_mask", (seq_len,), dtype="int64", layout="NL", low=0, high=2))


@register("lstm")
def spec_lstm(preset: str = "small", **overrides: Any) -> ModelSpec:
    cfg = resolve(LSTM_PRESETS, preset, overrides, "lstm")
    return ModelSpec(
        name="lstm",
        family="rnn",
        preset=preset,
        config=cfg,
        inputs=_token_specs(cfg.seq_len, cfg.vocab),
        outputs=(TensorSpec("logits", (cfg.classes,), layout="NC"),),
        tolerance=LSTM_TOLERANCE,
        torch_builder=build_lstm_torch,
        keras_builder=build_lstm_keras,
        presets=tuple(LSTM_PRESETS),
        make_inputs=_lstm_inputs,
        param_difference=4 * cfg.hidden * 2 * cfg.layers,
        param_difference_reason=(
            "torch LSTM keeps two biases per gate (b_ih, b_hh), Keras one (their sum): "
            "4*hidden fewer per layer and direction"
        ),
        torch_exporter="legacy" if cfg.packed else "dynamo",
        torch_exporter_reason=(
            "pack_padded_sequence has data-dependent shapes that torch.export (the dynamo exporter) rejects; "
            "the legacy exporter writes it as an ONNX LSTM with sequence_lens" if cfg.packed else ""
        ),
    )


@register("gru")
def spec_gru(preset: str = "small", **overrides: Any) -> ModelSpec:
    cfg = resolve(GRU_PRESETS, preset, overrides, "gru")
    return ModelSpec(
        name="gru",
        family="rnn",
        preset=preset,
        config=cfg,
        inputs=_token_specs(cfg.seq_len, cfg.vocab),
        outputs=(TensorSpec("y", (cfg.seq_len, cfg.classes), layout="NLC"),),
        tolerance=GRU_TOLERANCE,
        torch_builder=build_gru_torch,
        keras_builder=build_gru_keras,
        presets=tuple(GRU_PRESETS),
        make_inputs=_gru_inputs,
    )
