"""Frozen parameters in gradient and training parity: what each twin trains, and a mismatch as a finding.

A torch parameter is frozen when ``requires_grad`` is False; a Keras variable when it is
not among the model's ``trainable_variables`` (``layer.trainable = False``). Frozen on both
sides, a parameter has no gradient in either twin and keeps its value in training: both
read as zero gradients, and the rows agree. Frozen on one side only, the twins train
differently (fine-tuning's classic slip): the parameter's row fails with a note saying
which side froze it, and it is named as the first divergence, since everything
downstream of it diverges because of it.

BatchNorm: Keras runs a ``BatchNormalization`` whose ``trainable`` is False in inference
mode (moving statistics, never updated), even under ``training=True``; torch's ``train()``
would still normalise a frozen BatchNorm with batch statistics. The torch twin's
BatchNorms whose affine parameters are all frozen are therefore run in eval mode too (``frozen_batchnorms``), so that
"frozen" means the same in both twins; a BatchNorm frozen on one side only is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FROZEN_BN_NOTE = ("BatchNorm frozen in torch (requires_grad=False) run in eval mode, as Keras runs a "
                  "BatchNormalization with trainable=False in inference mode")


def frozen_batchnorms(torch_model: Any) -> list[str]:
    """Names of the torch BatchNorms whose affine parameters are all frozen (none trainable)."""
    from torch import nn

    out = []
    for name, m in torch_model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                out.append(name)
    return out


def frozen_sides(slot: Any, keras_trainable: set[int]) -> tuple[bool, bool]:
    """(frozen in torch, frozen in Keras) for a parameter slot: every tensor behind it frozen."""
    torch_frozen = not any(bool(getattr(t, "requires_grad", False)) for t in slot.torch)
    keras_frozen = not any(id(v) in keras_trainable for v in slot.keras)
    return torch_frozen, keras_frozen


def mark_frozen(rows: Sequence[Any], slots: Sequence[Any], keras_model: Any) -> list[str]:
    """Fail each row whose parameter is frozen on one side only, and say so; the names of those rows.

    ``rows`` and ``slots`` are parallel (trainable slots only are looked at)."""
    trainable = {id(v) for v in keras_model.trainable_variables}
    found = []
    for row, slot in zip(rows, slots, strict=True):
        if not slot.trainable:
            continue
        t, k = frozen_sides(slot, trainable)
        if t == k:
            continue
        side, other = ("torch", "tf") if t else ("tf", "torch")
        row.passed = False
        row.cause = f"frozen in {side} only (trainable in {other})"
        row.explain = f"{row.name}: {row.cause}; the twins train different parameters"
        found.append(row.name)
    return found


def frozen_parts(frozen: Sequence[Any], live: Sequence[Any]) -> tuple[set[int], dict[int, Any]]:
    """The torch tensors to leave out of the optimizer (every slot reading them is frozen), and for a tensor
    shared with a live slot (torch packs q, k and v biases into one ``in_proj_bias``) a 0/1 mask (torch
    tensor) that zeroes the frozen slots' elements of its gradient."""
    import numpy as np
    import torch

    live_ids = {id(h) for s in live for h in s.torch}
    whole = {id(h) for s in frozen for h in s.torch if id(h) not in live_ids}
    masks: dict[int, Any] = {}
    for slot in frozen:
        shared = [h for h in slot.torch if id(h) in live_ids]
        if not shared:
            continue
        offsets, start = {}, 0
        for h in slot.torch_layer.variables.get(slot.role, []) + shared:
            if id(h) not in offsets:
                offsets[id(h)] = start
                start += int(h.numel())

        def index(tensor: Any, offsets: dict[int, int] = offsets) -> np.ndarray:  # positions, through the layout
            if id(tensor) not in offsets:
                return np.full(tuple(tensor.shape), -1.0)
            return np.arange(offsets[id(tensor)], offsets[id(tensor)] + tensor.numel(),
                             dtype=np.float64).reshape(tuple(tensor.shape))

        picked = set(np.asarray(slot.torch_layer.read(index)[slot.role]).astype(np.int64).ravel().tolist())
        for h in shared:
            keep = masks.get(id(h), torch.ones_like(h, dtype=h.dtype).detach())
            flat = [i - offsets[id(h)] for i in picked if offsets[id(h)] <= i < offsets[id(h)] + h.numel()]
            keep.view(-1)[flat] = 0.0
            masks[id(h)] = keep
    return whole, masks
