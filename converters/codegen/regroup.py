"""A reshape that only merges or splits neighbouring axes, done in the variable's own layout.

``t.reshape(out)`` where ``t = v.transpose(p)``: when each group of ``t``'s axes that the reshape
merges (or splits) sits side by side, in order, in ``v`` too, then ``v`` can be reshaped directly,
and the result stands for the new tensor through a new ``p`` (the groups keep their order in
``v``). torch's ``conv(x).flatten(2).transpose(1, 2)`` (ViT's patches) on a channels-last Keras
variable is then one ``Reshape((h * w, C))`` and no transpose at all.
"""

from __future__ import annotations

import math

from converters.codegen import layout as lay


def _groups(shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Consecutive axes of ``shape_in`` and ``shape_out`` with equal products, paired; None if not so."""
    groups, i, j = [], 0, 0
    while i < len(shape_in) and j < len(shape_out):
        gi, gj = [i], [j]
        a, b = shape_in[i], shape_out[j]
        while a != b:
            if a < b and i + 1 < len(shape_in):
                i += 1
                gi.append(i)
                a *= shape_in[i]
            elif b < a and j + 1 < len(shape_out):
                j += 1
                gj.append(j)
                b *= shape_out[j]
            else:
                return None
        groups.append((gi, gj))
        i, j = i + 1, j + 1
    return groups if i == len(shape_in) and j == len(shape_out) else None


def regroup(shape_in: tuple[int | None, ...], shape_out: tuple[int | None, ...],
            p: lay.Perm) -> tuple[tuple[int, ...], lay.Perm] | None:
    """(the variable's new shape without the batch, its new ``p``) for the reshape of ``t = v.transpose(p)``
    from ``shape_in`` to ``shape_out`` (batch first, kept), or None when it needs ``v`` in ``t``'s order."""
    if p[0] != 0 or any(d is None for d in (*shape_in[1:], *shape_out[1:])) or \
            math.prod(shape_in[1:]) != math.prod(shape_out[1:]) or 1 in (*shape_in[1:], *shape_out[1:]):  # type: ignore[arg-type]
        return None
    groups = _groups(tuple(shape_in[1:]), tuple(shape_out[1:]))  # type: ignore[arg-type]
    if groups is None:
        return None
    for gi, _ in groups:  # each merged group: neighbours in v, in t's order
        if any(p[1 + b] != p[1 + a] + 1 for a, b in zip(gi, gi[1:], strict=False)):
            return None
    order = sorted(groups, key=lambda g: p[1 + g[0][0]])  # the groups as v holds them
    v_axes = [0] + [1 + o for _, gj in order for o in gj]  # v' axis k holds t' axis v_axes[k]
    q = lay.inverse(tuple(v_axes))
    shape = tuple(int(shape_out[a]) for a in v_axes[1:])  # type: ignore[arg-type]
    return shape, q
