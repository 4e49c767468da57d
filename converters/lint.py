"""Semantic-defaults lint: hyperparameters that change numerics without changing shapes.

Weights can be copied perfectly and still give different numbers when the two twins
disagree on a normalisation epsilon, a BatchNorm momentum, the GELU approximation,
padding, ``count_include_pad``, GRU ``reset_after`` or the use of a bias. This module
compares those, layer by layer, and names both layers for each disagreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from converters.errors import WeightMappingError
from converters.targets import TargetLayer, framework_of, target_layers

# Relative difference under which two epsilons/momenta count as equal (float32 storage).
_REL = 1e-6


@dataclass(frozen=True)
class Finding:
    source_layer: str
    target_layer: str
    field: str
    source_value: Any
    target_value: Any

    @property
    def message(self) -> str:
        return (f"{self.field} differs: source {self.source_layer!r} has {self.source_value!r}, "
                f"target {self.target_layer!r} has {self.target_value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message}


class SemanticMismatchError(WeightMappingError):
    """Raised in strict mode when the twins disagree on a numerics-changing hyperparameter."""


_FIELDS = {
    "batchnorm": ("epsilon", "momentum"),
    "layernorm": ("epsilon",),
    "groupnorm": ("epsilon", "groups"),
    "dense": ("use_bias",),
    "conv": ("use_bias", "padding_mode"),
    "convtranspose": ("use_bias",),
    "gru": ("reset_after", "use_bias"),
    "lstm": ("use_bias",),
    "attention": ("heads",),
}


def _differs(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    if isinstance(a, float) or isinstance(b, float):
        return not np.isclose(float(a), float(b), rtol=_REL, atol=0.0)
    return a != b


def lint_layers(source: Sequence[TargetLayer], target: Sequence[TargetLayer]) -> list[Finding]:
    """Compare parametric layers pairwise in forward order (kinds must line up)."""
    findings = []
    src_by_kind: dict[str, list[TargetLayer]] = {}
    for layer in source:
        src_by_kind.setdefault(layer.kind, []).append(layer)
    seen: dict[str, int] = {}
    for t in target:
        i = seen.get(t.kind, 0)
        seen[t.kind] = i + 1
        candidates = src_by_kind.get(t.kind, [])
        if i >= len(candidates):
            continue
        s = candidates[i]
        for name in _FIELDS.get(t.kind, ()):
            sv, tv = s.hyper.get(name), t.hyper.get(name)
            if _differs(sv, tv):
                findings.append(Finding(s.name, t.name, name, sv, tv))
    return findings


def parameter_free_settings(model: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, kind, settings) of layers whose settings change numerics but hold no weights."""
    if framework_of(model) == "torch":
        from torch import nn

        out = []
        for name, m in model.named_modules():
            if isinstance(m, nn.GELU):
                out.append((name, "gelu", {"approximate": m.approximate != "none"}))
            elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
                padded = any(p for p in np.atleast_1d(m.padding))
                out.append((name, "avgpool", {"count_include_pad": bool(m.count_include_pad) and padded}))
        return out
    import keras

    from converters.targets.keras_target import leaf_layers

    out = []
    for layer in leaf_layers(model):
        act = getattr(layer, "activation", None)
        if act is not None and getattr(act, "__name__", "") == "gelu":
            keywords = getattr(act, "keywords", {}) or {}
            out.append((layer.name, "gelu", {"approximate": bool(keywords.get("approximate", False))}))
        elif isinstance(layer, (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D)):
            out.append((layer.name, "avgpool", {"count_include_pad": False}))  # Keras never counts padding
    return out


def lint_models(source: Any, target: Any, source_inputs: Sequence[np.ndarray] | None = None,
                target_inputs: Sequence[np.ndarray] | None = None) -> list[Finding]:
    """All disagreements between two twins, parametric layers and parameter-free ones."""
    findings = lint_layers(target_layers(source, source_inputs), target_layers(target, target_inputs))
    src, dst = parameter_free_settings(source), parameter_free_settings(target)
    for kind in ("gelu", "avgpool"):
        pairs = zip([x for x in src if x[1] == kind], [x for x in dst if x[1] == kind], strict=False)
        for (sname, _, sset), (tname, _, tset) in pairs:
            for field, sv in sset.items():
                if _differs(sv, tset.get(field)):
                    findings.append(Finding(sname, tname, f"{kind}.{field}", sv, tset.get(field)))
    return findings


def enforce(findings: Sequence[Finding], strict: bool) -> None:
    """Raise SemanticMismatchError on the first finding in strict mode; otherwise nothing."""
    if strict and findings:
        raise SemanticMismatchError(
            f"{len(findings)} semantic mismatch(es) between the twins (strict mode); first: {findings[0].message}. "
            "Set the target's hyperparameter to the source's value"
        )
