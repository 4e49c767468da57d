"""Pure numpy transforms between the canonical (ONNX) layout and each framework's.

Canonical layouts: dense kernel (in, out); conv weight (M, C/g, *k) as in ONNX.
"""

from __future__ import annotations

import numpy as np

FlattenOrder = str  # "CHW" (channels-first flatten, torch) or "HWC" (channels-last, Keras)


def reorder_flatten_rows(kernel: np.ndarray, order: str, dims: tuple[int, ...], target_order: str) -> np.ndarray:
    """Permute the input rows of a dense kernel (in, out) fed by a flattened feature map.

    ``dims`` are the feature map's dims in ``order`` (e.g. (C, H, W) for "CHW").
    """
    if order == target_order:
        return kernel
    if int(np.prod(dims)) != kernel.shape[0]:
        raise ValueError(f"flattened dims {dims} do not multiply to the kernel's {kernel.shape[0]} input rows")
    out = kernel.shape[1]
    grid = kernel.reshape(*dims, out)
    rank = len(dims)
    if order == "CHW" and target_order == "HWC":
        perm = (*range(1, rank), 0, rank)
    elif order == "HWC" and target_order == "CHW":
        perm = (rank - 1, *range(0, rank - 1), rank)
    else:
        raise ValueError(f"unknown flatten orders {order!r} -> {target_order!r}")
    return np.ascontiguousarray(grid.transpose(perm).reshape(-1, out))


def dense_to_torch(kernel: np.ndarray) -> np.ndarray:
    """(in, out) -> torch Linear weight (out, in)."""
    return np.ascontiguousarray(kernel.T)


def dense_from_torch(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weight.T)


def conv_to_keras(weight: np.ndarray) -> np.ndarray:
    """ONNX/torch (M, C/g, *k) -> Keras (*k, C/g, M)."""
    rank = weight.ndim
    return np.ascontiguousarray(weight.transpose(*range(2, rank), 1, 0))


def conv_from_keras(kernel: np.ndarray) -> np.ndarray:
    rank = kernel.ndim
    return np.ascontiguousarray(kernel.transpose(rank - 1, rank - 2, *range(0, rank - 2)))
