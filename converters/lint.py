"""Semantic-defaults lint: hyperparameters that change numerics without changing shapes.

Weights can be copied perfectly and still give different numbers when the two twins
disagree on a normalisation epsilon, a BatchNorm momentum, the GELU approximation,
padding, ``count_include_pad``, GRU ``reset_after`` or the use of a bias. Twins that
compute the same outputs can still train differently: a regulariser (weight decay as an
L2 penalty) or a frozen layer on one side only. This module compares all of those, per
matched layer (by name where both sides agree on it, else in forward order by kind), and
names both layers for each disagreement.

Regularisers: Keras declares them on the layer (``kernel_regularizer``, ``bias_regularizer``,
``activity_regularizer``; L1/L2 factors). A torch module declares the same with a
``regularizers`` attribute, ``{"kernel": {"l2": 1e-4}, "bias": ..., "activity": ...}``, with
Keras's meaning: ``l1 * sum|w| + l2 * sum(w^2)``, the activity term on the module's output
divided by the batch size (Keras's is on the layer's output after a fused activation). Gradient and training parity add both sides' terms to the loss
(``parity.diagnostics.steps``).
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


REGULARIZED = ("kernel", "bias", "activity")


def regularizer_config(reg: Any) -> dict[str, float] | None:
    """A Keras regulariser (or a torch module's declared dict) as its nonzero L1/L2 factors; None: none."""
    if reg is None:
        return None
    config = reg if isinstance(reg, dict) else (reg.get_config() if hasattr(reg, "get_config") else None)
    if config is None:
        return {"custom": float("nan")}  # declared but not an L1/L2 penalty: compared as present
    factors = {k: float(v) for k, v in config.items() if k in ("l1", "l2") and float(v) != 0.0}
    return factors or None


def declared_regularizers(obj: Any) -> dict[str, dict[str, float]]:
    """The regularisers a Keras layer or a torch module declares, by what they act on (see the module doc)."""
    declared = getattr(obj, "regularizers", None)
    if isinstance(declared, dict):  # a torch module's declaration
        raw = {k: declared.get(k) for k in REGULARIZED}
    else:
        raw = {k: getattr(obj, f"{k}_regularizer", None) for k in REGULARIZED}
    out = {}
    for k, reg in raw.items():
        config = regularizer_config(reg)
        if config is not None:
            out[k] = config
    return out


def frozen_roles(layer: TargetLayer) -> list[str]:
    """The canonical parameters of ``layer`` (running statistics aside) that are not trained: torch
    ``requires_grad=False``; Keras ``trainable=False`` on the layer or the variable."""
    out = []
    for role, handles in layer.variables.items():
        if role in layer.statistics or not handles:
            continue
        if layer.framework == "torch":
            trained = any(bool(getattr(h, "requires_grad", False)) for h in handles)
        else:
            trained = bool(getattr(layer.obj, "trainable", True)) and any(bool(getattr(h, "trainable", True))
                                                                          for h in handles)
        if not trained:
            out.append(role)
    return sorted(out)


def training_settings(layer: TargetLayer) -> dict[str, Any]:
    """What changes how ``layer`` trains without changing its outputs: frozen status and regularisers."""
    regs = declared_regularizers(layer.obj)
    out: dict[str, Any] = {"frozen": frozen_roles(layer) or "none"}
    for k in REGULARIZED:
        out[f"{k}_regularizer"] = regs.get(k, "none")
    return out


def match_layers(source: Sequence[TargetLayer], target: Sequence[TargetLayer]) -> list[tuple[TargetLayer, TargetLayer]]:
    """Pairs of the same kind: by name where both sides have it, the rest in forward order per kind."""
    by_name = {s.name: s for s in source}
    pairs, used = [], set()
    rest = []
    for t in target:
        s = by_name.get(t.name)
        if s is not None and s.kind == t.kind:
            pairs.append((s, t))
            used.add(id(s))
        else:
            rest.append(t)
    src_by_kind: dict[str, list[TargetLayer]] = {}
    for layer in source:
        if id(layer) not in used:
            src_by_kind.setdefault(layer.kind, []).append(layer)
    for t in rest:
        candidates = src_by_kind.get(t.kind, [])
        if candidates:
            pairs.append((candidates.pop(0), t))
    order = {id(t): i for i, t in enumerate(target)}
    return sorted(pairs, key=lambda p: order[id(p[1])])


def lint_layers(source: Sequence[TargetLayer], target: Sequence[TargetLayer]) -> list[Finding]:
    """Compare matched parametric layers (``match_layers``): numerics, then training settings."""
    findings = []
    for s, t in match_layers(source, target):
        for name in _FIELDS.get(t.kind, ()):
            sv, tv = s.hyper.get(name), t.hyper.get(name)
            if _differs(sv, tv):
                findings.append(Finding(s.name, t.name, name, sv, tv))
        ss, ts = training_settings(s), training_settings(t)
        for name, sv in ss.items():
            if _settings_differ(sv, ts[name]):
                findings.append(Finding(s.name, t.name, name, sv, ts[name]))
    return findings


def _settings_differ(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) != set(b) or any(_differs(a[k], b[k]) or a[k] != a[k] for k in a)
    return a != b


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


def optimizer_settings(opt: Any) -> dict[str, Any]:
    """A torch or Keras optimizer's weight decay as set: its factor (per parameter group where the groups
    differ) and its semantics. torch ``Adam``/``SGD(weight_decay=)`` add ``wd * p`` to the gradient
    (L2-coupled: Adam then normalises it); torch ``AdamW`` and every Keras optimizer's ``weight_decay``
    are decoupled (``p -= lr * wd * p``, outside the moments). Which parameters are decayed (torch groups,
    Keras ``exclude_from_weight_decay``) is compared by training parity, per parameter."""
    groups = getattr(opt, "param_groups", None)
    if groups is not None:  # torch; groups without decay are the torch spelling of Keras's exclusions
        factors = sorted({float(g.get("weight_decay", 0.0)) for g in groups} - {0.0}) or [0.0]
        decoupled = any(bool(g.get("decoupled_weight_decay", False)) for g in groups)
        wd: Any = factors[0] if len(factors) == 1 else factors
        kind = f"torch.optim.{type(opt).__name__}"
    else:
        wd = float(opt.weight_decay) if getattr(opt, "weight_decay", None) is not None else 0.0
        decoupled, kind = True, f"keras.optimizers.{type(opt).__name__}"
    if wd == 0.0:
        return {"optimizer": kind, "weight_decay": 0.0, "decay": "none"}
    return {"optimizer": kind, "weight_decay": wd,
            "decay": "decoupled (p -= lr*wd*p)" if decoupled else "L2-coupled (wd*p added to the gradient)"}


def lint_optimizers(source: Any, target: Any) -> list[Finding]:
    """The twins' optimizers compared: weight decay factor and semantics, naming both settings."""
    s, t = optimizer_settings(source), optimizer_settings(target)
    out = []
    for name in ("weight_decay", "decay"):
        if s[name] != t[name] and not (isinstance(s[name], float) and isinstance(t[name], float)
                                       and not _differs(s[name], t[name])):
            out.append(Finding(f"optimizer {s['optimizer']}", f"optimizer {t['optimizer']}", f"optimizer.{name}",
                               s[name], t[name]))
    return out
