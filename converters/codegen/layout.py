"""Axis permutations: how a generated variable's axes relate to the ONNX tensor it stands for.

A variable ``v`` stands for the ONNX tensor ``t = v.transpose(p)``. Layout ops of the graph
(tf2onnx's NHWC <-> NCHW Transposes) only change ``p``; no code is written for them until
an op needs its operand in a particular layout.
"""

from __future__ import annotations

Perm = tuple[int, ...]


def identity(rank: int) -> Perm:
    return tuple(range(rank))


def channels_last(rank: int) -> Perm:
    """``p`` of a channels-last variable standing for a channels-first tensor (NHWC -> NCHW)."""
    return (0, rank - 1, *range(1, rank - 1)) if rank > 2 else identity(rank)


def channels_first(rank: int) -> Perm:
    """``p`` of a channels-first variable standing for a channels-last tensor (NCHW -> NHWC)."""
    return (0, *range(2, rank), 1) if rank > 2 else identity(rank)


def compose(p: Perm, q: Perm) -> Perm:
    """``p`` of ``t.transpose(q)`` when ``t = v.transpose(p)``."""
    return tuple(p[i] for i in q)


def inverse(p: Perm) -> Perm:
    out = [0] * len(p)
    for i, a in enumerate(p):
        out[a] = i
    return tuple(out)


def to_reach(have: Perm, want: Perm) -> Perm:
    """The transpose ``r`` of a variable with ``have`` that gives a variable with ``want``."""
    return compose(have, inverse(want))


def var_axis(p: Perm, axis: int) -> int:
    """The variable's axis holding the tensor's ``axis``."""
    return p[axis % len(p)]


def drop_axes(p: Perm, axes: list[int]) -> Perm:
    """``p`` after the tensor's ``axes`` are reduced away (and so the variable's ``p[axes]``)."""
    gone = sorted(p[a] for a in axes)
    return tuple(v - sum(g < v for g in gone) for i, v in enumerate(p) if i not in axes)
