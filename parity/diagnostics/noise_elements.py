"""Single elements whose gradient is zero in exact arithmetic, frozen in both twins for training parity.

A whole parameter whose gradient is rounding noise is frozen (``parity.diagnostics.alignment``);
so is each element of a live parameter whose gradient is zero in exact arithmetic, for the
same reason: Adam divides the noise by its own RMS and takes a full step of ``lr`` in a
direction no two frameworks share. The step does not stay in its element. Measured on
resnet50 (small, torch twin in float64): ``bn1.beta`` channels 1, 2, 4 and 6 have a gradient
of 1e-16 of the layer's largest (a channel shifted uniformly into 1x1 convolutions and
training-mode BatchNorms), and the sign of channel 6's first Adam step alone moves the
second step's exact gradient of ``layer4.0.downsample.0.weight[121, 73]`` by +-1.2e-5
(1.1% of it; the twins' float32 rounding gap there is 3e-7): a difference the twins'
gradients then carry that no rounding allowance is built for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

EXACT_ZERO = 1e-9  # float64 gradient under this fraction of its layer's largest: zero (float64 rounding is ~1e-15)


def noise_elements(slots: Sequence[Any], t_vals: Sequence[np.ndarray], k_vals: Sequence[np.ndarray],
                   exact: Sequence[np.ndarray], limit: float) -> dict[str, np.ndarray]:
    """Per slot name, a boolean mask (canonical layout) of the elements whose gradient is zero in exact
    arithmetic (``exact``, the torch twin in float64: at most EXACT_ZERO of its layer's largest) and
    rounding noise in both float32 twins (at most ``limit`` of the layer's largest); slots with none are left out.
    An element with a real gradient, however small, keeps training; one whose gradient is exactly zero in
    both twins (a kernel tap that sees only padding, a dead channel) takes no step anyway and is left as it is."""
    scales: dict[str, list[float]] = {}
    for s, t, k, x in zip(slots, t_vals, k_vals, exact, strict=True):
        if t.size:
            got = [float(np.max(np.abs(a))) for a in (t, k, x)]
            scales[s.layer] = [max(a, b) for a, b in zip(scales.get(s.layer, [0.0] * 3), got, strict=True)]
    out: dict[str, np.ndarray] = {}
    for s, t, k, x in zip(slots, t_vals, k_vals, exact, strict=True):
        if not t.size or min(scales[s.layer]) <= 0:
            continue
        st, sk, sx = scales[s.layer]
        mask = (np.abs(t) <= limit * st) & (np.abs(k) <= limit * sk) & (np.abs(x) <= EXACT_ZERO * sx) & ((t != 0) | (k != 0))
        if mask.any() and not mask.all():
            out[s.name] = mask
    return out


def native_masks(slot: Any, frozen: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]] | None:
    """0/1 keep masks of the torch tensors and Keras variables behind ``slot`` (by id) that zero the
    ``frozen`` canonical elements of their gradients; None where an element is not one native element."""
    sides = []
    for layer, handles, attrs in ((slot.torch_layer, slot.torch, {}), (slot.keras_layer, slot.keras, slot.keras_attrs)):
        offsets, start = {}, 0
        for h in handles:
            offsets[id(h)] = start
            start += int(np.prod(tuple(int(d) for d in h.shape)))

        def index(tensor: Any, offsets: dict[int, int] = offsets) -> np.ndarray:  # positions, through the layout
            shape = tuple(int(d) for d in tensor.shape)
            if id(tensor) not in offsets:
                return np.full(shape, -1.0)
            return np.arange(offsets[id(tensor)], offsets[id(tensor)] + int(np.prod(shape)),
                             dtype=np.float64).reshape(shape)

        pos = np.asarray(layer.read(index, "grad", attrs)[slot.role])
        flat = pos.ravel()
        if (pos.shape != frozen.shape or np.any(flat < 0) or np.any(flat != np.round(flat))
                or len(np.unique(flat)) != flat.size):
            return None
        picked = flat[frozen.ravel()].astype(np.int64)
        masks = {}
        for h in handles:
            size = int(np.prod(tuple(int(d) for d in h.shape)))
            keep = np.ones(size, np.float32)
            own = picked[(picked >= offsets[id(h)]) & (picked < offsets[id(h)] + size)] - offsets[id(h)]
            if own.size:
                keep[own] = 0.0
                masks[id(h)] = keep.reshape(tuple(int(d) for d in h.shape))
        sides.append(masks)
    return sides[0], sides[1]
