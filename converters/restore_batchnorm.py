"""Give back what tf2onnx folded away: each BatchNorm's statistics, read from the Keras source itself.

TensorFlow's grappler folds a Keras BatchNormalization into the convolution (or dense layer)
before it, ``W' = W * s`` and ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``
per output channel, or into a per-channel ``x * s + shift``; the port of such a file is
inference-only (``converters.report``: ``folded_batchnorm``, ``folded_into``, ``folded_statistics``).
Where the Keras source model is in hand, :func:`restore_batchnorm` reads each folded BatchNorm's
gamma, beta, moving mean and variance from the source layer of the same name, writes them into the
target's BatchNorm and un-folds the target's layer (``W = W' / s``, ``b = (b' - beta) / s + mean``):
the twins are then the same model for training too, and those layers are reported ``exact``.
The source is only read. A BatchNorm that cannot be restored (no source layer of its name, a zero
gamma, another epsilon, statistics that do not reproduce the folded ones) stays inference-only,
and its note says why.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np

from converters.report import FOLDED_BATCHNORM, FOLDED_STATISTICS, LayerPort, PortReport
from converters.targets import TargetLayer, target_layers, value_of

__all__ = ["RESTORED_NOTE", "restore_batchnorm", "source_batchnorms"]

RESTORED_NOTE = "statistics restored from the Keras source (the export had folded them)"
# The folded constants are float32, computed by grappler as gamma * rsqrt(var + eps) and beta - mean * s:
# a few ulp (~1e-6 relative) from the same numbers recomputed here in float64. 1e-4 of each quantity's own
# scale leaves a margin of ~100x over that rounding, and still tells a BatchNorm of another layer (whose
# statistics differ at O(1)) or a conv bias the target lacks (a shift the statistics do not explain).
CONSISTENCY_RTOL = 1e-4
# Epsilons are compared as written in each framework's config: equal up to float32 storage.
EPS_RTOL = 1e-6
OUT_AXIS = {"conv": 0, "convtranspose": 1, "dense": -1}  # the output-channel axis of the canonical (ONNX) layout
WEIGHT = {"conv": "weight", "convtranspose": "weight", "dense": "kernel"}


class _NotRestored(Exception):
    """Why one BatchNorm cannot be restored (becomes the layer's note; never leaves this module)."""


def _key(name: str) -> str:
    """A name as generated code spells it: ``layer1.0.bn1`` and ``layer1_0_bn1`` are the same layer."""
    return re.sub(r"\W", "_", name).strip("_")


def source_batchnorms(model: Any) -> dict[str, Any]:
    """The Keras source's BatchNormalization layers by name (nested models opened up)."""
    import keras

    from converters.targets.keras_target import leaf_layers

    return {layer.name: layer for layer in leaf_layers(model) if isinstance(layer, keras.layers.BatchNormalization)}


def _find(name: str, layers: dict[str, Any]) -> Any:
    """The source BatchNorm of the target layer ``name``: the same name, or the same once spelled as code."""
    if name in layers:
        return layers[name]
    found = [layer for n, layer in layers.items() if _key(n) == _key(name)]
    if len(found) == 1:
        return found[0]
    if found:
        raise _NotRestored(f"{len(found)} Keras BatchNormalization layers match the name {name!r}")
    raise _NotRestored(f"the Keras source has no BatchNormalization named {name!r}")


def _statistics(layer: Any, target: TargetLayer) -> dict[str, np.ndarray]:
    """gamma, beta, mean, var and eps of the Keras BatchNorm ``layer`` (read only), checked against ``target``."""
    c = int(target.shapes["gamma"][0])  # type: ignore[index]
    gamma = value_of(layer.gamma) if getattr(layer, "gamma", None) is not None else np.ones(c, np.float32)
    beta = value_of(layer.beta) if getattr(layer, "beta", None) is not None else np.zeros(c, np.float32)
    stats = {"gamma": gamma, "beta": beta, "mean": value_of(layer.moving_mean),
             "var": value_of(layer.moving_variance)}
    if any(v.shape != (c,) for v in stats.values()):
        raise _NotRestored(f"the Keras BatchNormalization {layer.name!r} has {gamma.size} channels, the target {c}")
    eps, mine = float(layer.epsilon), float(target.hyper["epsilon"])
    if abs(eps - mine) > EPS_RTOL * max(eps, mine):
        raise _NotRestored(f"the Keras BatchNormalization {layer.name!r} has epsilon {eps:g}, the target {mine:g}")
    if not all(np.all(np.isfinite(v)) for v in stats.values()):
        raise _NotRestored(f"the Keras BatchNormalization {layer.name!r} holds NaN or Inf")
    zero = np.flatnonzero(gamma == 0)
    if zero.size:
        raise _NotRestored(f"gamma of {layer.name!r} is zero at channel {int(zero[0])}: the folded weights no "
                           "longer hold the layer's own")
    return stats


def _scale(stats: dict[str, np.ndarray], eps: float) -> np.ndarray:
    return stats["gamma"].astype(np.float64) / np.sqrt(stats["var"].astype(np.float64) + eps)


def _close(got: np.ndarray, want: np.ndarray, scale: np.ndarray) -> bool:
    return bool(np.all(np.abs(got - want) <= CONSISTENCY_RTOL * (scale + np.finfo(np.float32).tiny)))


def _unfold(layer: TargetLayer, norm: TargetLayer, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """``layer``'s own tensors from its folded ones (``W' / s``, ``(b' - beta) / s + mean``)."""
    if layer.kind not in OUT_AXIS:
        raise _NotRestored(f"{layer.name!r} is a {layer.kind} layer; only conv, convtranspose and dense un-fold")
    if layer.kind == "convtranspose" and int(layer.hyper.get("groups", 1)) != 1:
        raise _NotRestored(f"{layer.name!r} is a grouped transposed convolution")
    s = _scale(stats, float(norm.hyper["epsilon"]))
    now = layer.read()
    weight = now[WEIGHT[layer.kind]].astype(np.float64)
    shape = [1] * weight.ndim
    shape[OUT_AXIS[layer.kind]] = -1
    beta, mean = stats["beta"].astype(np.float64), stats["mean"].astype(np.float64)
    has_bias = layer.shapes.get("bias") is not None
    shift = now["bias"] if has_bias else norm.read()["beta"]  # the folded b': the conv's bias, or the BN's beta
    bias = (shift.astype(np.float64) - beta) / s + mean
    if not has_bias and not _close(bias, np.zeros_like(bias), np.abs(beta / s) + np.abs(mean) + np.abs(shift / s)):
        worst = int(np.argmax(np.abs(bias)))
        raise _NotRestored(f"the folded shift of {layer.name!r} implies a bias of {bias[worst]:.3g} at channel "
                           f"{worst}, which the target layer does not have")
    return {WEIGHT[layer.kind]: (weight / s.reshape(shape)).astype(np.float32),
            "bias": bias.astype(np.float32) if has_bias else None}


def _check_affine(norm: TargetLayer, stats: dict[str, np.ndarray]) -> None:
    """A BatchNorm ported from a per-channel ``x * scale + shift``: the source's statistics must give them."""
    ported = norm.read()
    s = _scale(stats, float(norm.hyper["epsilon"]))
    shift = stats["beta"] - stats["mean"].astype(np.float64) * s
    got_s = ported["gamma"] / np.sqrt(ported["var"].astype(np.float64) + float(norm.hyper["epsilon"]))
    got_shift = ported["beta"] - ported["mean"].astype(np.float64) * got_s
    if not (_close(got_s, s, np.abs(s)) and _close(got_shift, shift, np.abs(stats["beta"]) + np.abs(stats["mean"] * s))):
        raise _NotRestored(f"the statistics of the Keras BatchNormalization for {norm.name!r} do not give the "
                           "scale and shift the export folded them into")


def restore_batchnorm(source: Any, target: Any, report: PortReport) -> list[str]:
    """Write the Keras ``source``'s BatchNorm statistics into ``target`` where ``report`` says the export
    folded them, un-fold the layers they were folded into, and mark both ``exact`` in ``report``.

    ``target`` (a torch or Keras model) and ``report`` are modified in place; ``source`` is only read.
    Returns the restored BatchNorms' target names; each one that cannot be restored keeps its
    ``inference-only`` entry, with why in its note.
    """
    folded = [x for x in report.layers if x.reason in (FOLDED_BATCHNORM, FOLDED_STATISTICS)]
    if not folded:
        return []
    layers = {t.name: t for t in target_layers(target)}
    sources = source_batchnorms(source)
    entries = {x.target: i for i, x in enumerate(report.layers)}
    restored: list[str] = []
    for entry in folded:
        norm_name = entry.folded_batchnorm if entry.reason == FOLDED_BATCHNORM else entry.target
        norm = layers.get(norm_name or "")
        try:
            if norm is None or norm.kind != "batchnorm":
                raise _NotRestored(f"the target has no BatchNorm layer {norm_name!r}")
            stats = _statistics(_find(norm.name, sources), norm)
            if entry.reason == FOLDED_BATCHNORM:
                conv = layers[entry.target]
                tensors = _unfold(conv, norm, stats)
                conv.write(tensors, {})
                _mark(report, entries[entry.target], "un-folded: weight / s, bias (b' - beta) / s + mean, "
                      "s = gamma / sqrt(var + eps) of the Keras source")
            else:
                _check_affine(norm, stats)
            norm.write(dict(stats), {})
            if norm.name in entries:
                _mark(report, entries[norm.name], "gamma, beta, moving mean and variance of the Keras source")
            restored.append(norm.name)
        except _NotRestored as why:
            i = entries[entry.target]
            report.layers[i] = replace(entry, note=f"{entry.note}; not restored from the Keras source: {why}")
            report.warnings.append(f"{entry.target}: BatchNorm statistics not restored from the Keras source: {why}")
    return restored


def _mark(report: PortReport, index: int, how: str) -> None:
    """Layer ``index`` of ``report`` is exact now (``folded_batchnorm``/``folded_into`` still say what the
    ONNX file holds: localisation compares the folded pair where its output is whole)."""
    layer: LayerPort = report.layers[index]
    report.layers[index] = replace(layer, status="exact", reason="", transform=f"{layer.transform}; {how}",
                                   note=RESTORED_NOTE)

