"""Bring an activation to the torch layout (NCHW, NCL, batch-first) by the first transform that fits its shape."""

from __future__ import annotations

import numpy as np


def permute_candidates(value: np.ndarray, channels_last_first: bool) -> list[tuple[str, np.ndarray]]:
    r = value.ndim
    out: list[tuple[str, np.ndarray]] = []
    cl = ("channels-last -> channels-first", value.transpose(0, r - 1, *range(1, r - 1))) if r >= 3 else None
    if channels_last_first and cl:
        out.append(cl)
    out.append(("as is", value))
    if cl and not channels_last_first:
        out.append(cl)
    if r == 3:
        out.append(("time-major -> batch-first", value.transpose(1, 0, 2)))
    if cl and r >= 3:
        out.append(("channels-first -> channels-last", value.transpose(0, *range(2, r), 1)))
    if r == 4:  # ONNX RNN Y: (L, dirs, B, H) -> (B, L, dirs*H)
        out.append(("ONNX RNN (L, dirs, B, H) -> (B, L, dirs*H)",
                    value.transpose(2, 0, 1, 3).reshape(value.shape[2], value.shape[0], -1)))
    return out


def to_layout(value: np.ndarray, shape: tuple[int, ...], channels_last_first: bool) -> tuple[np.ndarray, str] | None:
    """``value`` rearranged to ``shape`` by the first layout transform that fits, and which one."""
    for how, cand in permute_candidates(value, channels_last_first):
        if cand.shape == shape:
            return np.ascontiguousarray(cand), how
        if cand.ndim == len(shape) and cand.shape[0] == 1 and cand.shape[1:] == shape[1:]:
            return np.ascontiguousarray(np.broadcast_to(cand, shape)), how + ", batch broadcast"
        if (cand.ndim == len(shape) >= 3 and cand.shape[0] == shape[0] and cand.shape[2:] == shape[2:]
                and cand.shape[1] < shape[1]):  # a packed sequence unpacked to its longest length
            pad = [(0, 0)] * cand.ndim
            pad[1] = (0, shape[1] - cand.shape[1])
            return np.pad(cand, pad), how + ", zero-padded in time"
    return None
