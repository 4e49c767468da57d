"""Seeded token batches with real padding, shared by the sequence families."""

from __future__ import annotations

import numpy as np

PAD_ID = 0


def padded_lengths(batch: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Mixed lengths: the first sequence is full, the second (if any) is short, the rest random."""
    lengths = rng.integers(1, seq_len + 1, size=batch)
    lengths[0] = seq_len
    if batch > 1:
        lengths[1] = int(rng.integers(1, max(seq_len // 2, 1) + 1))
    return lengths


def token_batch(batch: int, seq_len: int, vocab: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int64 (B, L): right-padded with PAD_ID, mask 1 = valid."""
    lengths = padded_lengths(batch, seq_len, rng)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab, size=(batch, seq_len)).astype(np.int64)
    return np.where(mask == 1, ids, PAD_ID).astype(np.int64), mask
