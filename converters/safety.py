"""What a hostile or broken ONNX file must not do: read outside its folder, exhaust memory while
constants are folded, claim an opset we cannot check, or slip NaN/Inf weights into a port.

``load_onnx`` and ``fold`` (``converters.graph``) call these before the expensive step.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import ConversionError, NonFiniteWeightsError, UnsafeInputError

# A folded constant larger than this (or than the largest initializer, whichever is bigger) is left
# to ONNX Runtime: a legitimate fold (a transpose, a reshape) is never larger than the weights it
# reads, while a hostile ConstantOfShape/Expand/Tile of a few bytes can ask for gigabytes.
FOLD_BUDGET_BYTES = 256 << 20

_ALLOW_NONFINITE: contextvars.ContextVar[bool] = contextvars.ContextVar("allow_nonfinite", default=False)


@contextmanager
def nonfinite_weights_allowed(allowed: bool = True) -> Iterator[None]:
    """Within the block, ports accept weights holding NaN or Inf (``--allow-nonfinite``)."""
    token = _ALLOW_NONFINITE.set(allowed)
    try:
        yield
    finally:
        _ALLOW_NONFINITE.reset(token)


def check_opset(model: Any, path: Path) -> None:
    """Refuse an opset newer than the installed onnx knows: its checker and evaluator would guess."""
    import onnx

    supported = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > supported:
            raise ConversionError(f"{path}: declares ONNX opset {entry.version}, but the installed onnx "
                                  f"{onnx.__version__} supports opsets up to {supported}; export with opset "
                                  f"<= {supported} or upgrade onnx")


def check_external_data(tensor: Any, base: Path, path: Path) -> None:
    """One tensor's external data must be a regular file inside ``base``, long enough for the tensor."""
    from onnx import helper

    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    where = f"{path}: tensor {tensor.name!r} points to external data {location!r}"
    if not location or "\x00" in location:
        raise UnsafeInputError(f"{where}: an empty name or a NUL byte is not a file name; refusing to read it")
    if os.path.isabs(location):
        raise UnsafeInputError(f"{where}: an absolute path; external data must lie in the model's folder "
                               f"({base}); refusing to read it")
    target = (base / location).resolve()
    if base not in target.parents:
        raise UnsafeInputError(f"{where} outside the model's folder ({base}), directly or through a link; "
                               "refusing to read it")
    if not target.is_file():
        kind = "a folder" if target.is_dir() else "missing"
        raise UnsafeInputError(f"{where}, which is {kind}; put the tensor data file beside the model")
    try:
        offset, length = int(info.get("offset", 0) or 0), int(info.get("length", 0) or 0)
    except ValueError as exc:
        raise UnsafeInputError(f"{where}: offset/length are not integers ({exc})") from exc
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    needed = int(np.prod(list(tensor.dims), dtype=np.int64)) * itemsize
    size = target.stat().st_size
    if offset < 0 or length < 0 or offset + max(length, needed) > size:
        raise UnsafeInputError(f"{where}: the tensor needs {needed} bytes from offset {offset}"
                               f"{f' (length {length})' if length else ''} but the file has {size}; "
                               "the data file is truncated or belongs to another model")


def fold_budget(consts: dict[str, np.ndarray]) -> int:
    """Bytes one folded constant may take: the larger of FOLD_BUDGET_BYTES and the largest initializer."""
    return max([FOLD_BUDGET_BYTES, *(int(v.nbytes) for v in consts.values())])


def folded_size(node: Any, consts: dict[str, np.ndarray]) -> int | None:
    """Bytes the node's first output would take, for the ops whose output can dwarf their inputs."""
    ins = [consts.get(i) for i in node.input]
    try:
        if node.op_type == "ConstantOfShape":
            return int(np.prod(ins[0].astype(np.float64))) * 4  # float32 unless its value says; type: ignore[union-attr]
        if node.op_type == "Expand":
            shape = np.broadcast_shapes(ins[0].shape, tuple(int(d) for d in ins[1]))  # type: ignore[union-attr]
            return int(np.prod(shape, dtype=np.float64)) * ins[0].itemsize  # type: ignore[union-attr]
        if node.op_type == "Tile":
            return int(ins[0].size * np.prod(ins[1].astype(np.float64))) * ins[0].itemsize  # type: ignore[union-attr]
        if node.op_type == "Range":
            start, limit, delta = (float(np.asarray(v)) for v in ins[:3])  # type: ignore[arg-type]
            return int(abs((limit - start) / delta)) * 8 if delta else 0
    except (TypeError, ValueError, IndexError, AttributeError):
        return None  # the evaluator will report what is wrong with the node
    return None


def check_nonfinite_weights(consts: dict[str, np.ndarray], initializers: list[str], source: str) -> None:
    """Refuse initializers holding NaN or Inf, naming where and how many, unless allowed."""
    if _ALLOW_NONFINITE.get():
        return
    bad = []
    for name in initializers:
        value = consts.get(name)
        if value is None or value.dtype.kind not in "fc":
            continue
        nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        if nan or inf:
            bad.append(f"{name!r} ({nan} NaN, {inf} Inf of {value.size})")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise NonFiniteWeightsError(f"{source}: {len(bad)} weight tensor(s) hold NaN or Inf: {', '.join(bad[:3])}"
                                    f"{more}; fix the weights, or pass --allow-nonfinite (allow_nonfinite=True) "
                                    "to port them as they are")
