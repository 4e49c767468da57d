"""Pure numpy transforms between the canonical (ONNX) layout and each framework's.

Canonical layouts are listed in converters.params. Gate orders: ONNX LSTM i,o,f,c;
torch i,f,g(c),o; Keras i,f,c,o. ONNX GRU z,r,h; torch r,z,n; Keras z,r,h.
"""

from __future__ import annotations

import numpy as np

LSTM_ONNX_TO_TORCH = (0, 2, 3, 1)  # i,o,f,c -> i,f,c,o
LSTM_ONNX_TO_KERAS = (0, 2, 3, 1)  # Keras uses torch's order
GRU_ONNX_TO_TORCH = (1, 0, 2)  # z,r,h -> r,z,n
GRU_ONNX_TO_KERAS = (0, 1, 2)


def flatten_dims(dims: tuple[int, ...], order: str, target_order: str) -> tuple[int, ...]:
    """A feature map's dims given in ``order`` ("CHW" channels first, "HWC" channels last), in ``target_order``."""
    if order == target_order:
        return tuple(dims)
    if order == "CHW" and target_order == "HWC":
        return (*dims[1:], dims[0])
    if order == "HWC" and target_order == "CHW":
        return (dims[-1], *dims[:-1])
    raise ValueError(f"unknown flatten orders {order!r} -> {target_order!r}")


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


def reorder_unflatten_columns(kernel: np.ndarray, bias: np.ndarray | None, order: str, dims: tuple[int, ...],
                              target_order: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Permute the output columns (and bias) of a dense kernel (in, out) whose output is
    reshaped into a feature map; ``dims`` are the map's dims in ``order``."""
    if order == target_order:
        return kernel, bias
    moved = reorder_flatten_rows(np.ascontiguousarray(kernel.T), order, dims, target_order).T
    if bias is not None:
        bias = reorder_flatten_rows(bias[:, None], order, dims, target_order)[:, 0]
    return np.ascontiguousarray(moved), bias


def dense_to_native(kernel: np.ndarray, bias: np.ndarray | None, attrs: dict, native: str
                    ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """A canonical dense kernel (in, out) and bias in the target's feature order ``native``
    ("CHW" for torch, "HWC" for Keras): rows of a flattened map (``attrs["flatten"]``) and
    columns reshaped into one (``attrs["unflatten"]``) are permuted; also what was done."""
    how = []
    flat, grid = attrs.get("flatten"), attrs.get("unflatten")
    if flat is not None and flat[0] != native:
        kernel = reorder_flatten_rows(kernel, flat[0], flat[1], native)
        how.append(f"rows {flat[0]}->{native}")
    if grid is not None and grid[0] != native:
        kernel, bias = reorder_unflatten_columns(kernel, bias, grid[0], grid[1], native)
        how.append(f"columns {grid[0]}->{native}")
    return kernel, bias, how


def dense_from_native(kernel: np.ndarray, bias: np.ndarray | None, attrs: dict, native: str
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """The inverse of :func:`dense_to_native`: a target's (in, out) kernel and bias in canonical order."""
    flat, grid = attrs.get("flatten"), attrs.get("unflatten")
    if flat is not None and flat[0] != native:
        kernel = reorder_flatten_rows(kernel, native, flatten_dims(flat[1], flat[0], native), flat[0])
    if grid is not None and grid[0] != native:
        kernel, bias = reorder_unflatten_columns(kernel, bias, native, flatten_dims(grid[1], grid[0], native), grid[0])
    return kernel, bias


def dense_to_torch(kernel: np.ndarray) -> np.ndarray:
    """(in, out) -> torch Linear weight (out, in)."""
    return np.ascontiguousarray(kernel.T)


def dense_from_torch(weight: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> (in, out)."""
    return np.ascontiguousarray(weight.T)


def conv_to_keras(weight: np.ndarray) -> np.ndarray:
    """ONNX/torch kernel -> Keras: (M, C/g, *k) -> (*k, C/g, M) for a conv, and the same axis move
    (C_in, C_out/g, *k) -> (*k, C_out/g, C_in) for a transposed conv (no spatial flip)."""
    rank = weight.ndim
    return np.ascontiguousarray(weight.transpose(*range(2, rank), 1, 0))


def conv_from_keras(kernel: np.ndarray) -> np.ndarray:
    """The inverse of ``conv_to_keras``, for convs and transposed convs alike."""
    rank = kernel.ndim
    return np.ascontiguousarray(kernel.transpose(rank - 1, rank - 2, *range(0, rank - 2)))


def depthwise_to_keras(weight: np.ndarray, channels: int) -> np.ndarray:
    """ONNX (C*m, 1, kh, kw) -> Keras DepthwiseConv2D (kh, kw, C, m); channel c*m+j is (c, j)."""
    cm, _, kh, kw = weight.shape
    m = cm // channels
    return np.ascontiguousarray(weight.reshape(channels, m, kh, kw).transpose(2, 3, 0, 1))


def depthwise_from_keras(kernel: np.ndarray) -> np.ndarray:
    """Keras DepthwiseConv2D (kh, kw, C, m) -> ONNX (C*m, 1, kh, kw)."""
    kh, kw, c, m = kernel.shape
    return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw))


def reorder_gates(x: np.ndarray, order: tuple[int, ...], axis: int = 0) -> np.ndarray:
    """Reorder the equal gate blocks of ``x`` along ``axis``."""
    blocks = np.split(x, len(order), axis=axis)
    return np.ascontiguousarray(np.concatenate([blocks[i] for i in order], axis=axis))


def gates_to_onnx(x: np.ndarray, order: tuple[int, ...], axis: int = 0) -> np.ndarray:
    """The inverse of ``reorder_gates(x, order)``: a framework's gate order back to ONNX's."""
    return reorder_gates(x, tuple(int(i) for i in np.argsort(order)), axis)
