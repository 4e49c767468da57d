"""A saved check result (``CheckResult.to_dict``, ``parity check --json``) back into typed objects.

Comparisons, the port report and its lint findings are rebuilt exactly. The diagnostics
(``layers``, ``gradients``, ``training``) are summarised in their JSON (a layer row keeps
its numbers, not every comparison), so they come back as ``SavedReport``: the saved
dict, its verdict, and a short ``format()``; ``to_dict`` returns them unchanged, so a
reloaded result writes the same JSON again. The outputs themselves are not in the JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from converters.lint import Finding
from converters.report import LayerPort, PortReport
from parity.compare import Comparison
from parity.diagnostics import NotCompared
from parity.errors import UsageError

_FLOATS = ("atol", "rtol", "max_abs", "max_rel", "mean_abs", "cosine", "over_fraction", "reference_scale")
_TUPLES = ("worst_index", "shape_a", "shape_b")


def _float(value: Any) -> Any:
    """The inverse of the JSON encoding of non-finite floats: None -> nan, 'inf' -> inf."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        return float(value)
    return value


def comparison_from_dict(data: dict[str, Any]) -> Comparison:
    known = {f.name for f in fields(Comparison)}
    kw = {k: v for k, v in data.items() if k in known}
    for key in _FLOATS:
        kw[key] = _float(kw.get(key))
    for key in ("worst_actual", "worst_expected"):
        if isinstance(kw.get(key), str):
            kw[key] = float(kw[key])
    for key in _TUPLES:
        if kw.get(key) is not None:
            kw[key] = tuple(kw[key])
    return Comparison(**kw)


def port_from_dict(data: dict[str, Any]) -> PortReport:
    lint = [Finding(**{k: v for k, v in f.items() if k != "message"}) for f in data.get("lint", [])]
    return PortReport(
        source=data["source"], target_framework=data["target_framework"],
        layers=[LayerPort(**layer) for layer in data.get("layers", [])],
        unused_initializers=dict(data.get("unused_initializers", {})),
        consumed_initializers=dict(data.get("consumed_initializers", {})),
        warnings=list(data.get("warnings", [])), lint=lint, unfolded=dict(data.get("unfolded_constants", {})))


@dataclass
class SavedReport:
    """A diagnostic report reloaded from JSON: the saved dict and its verdict."""

    what: str  # "layers" | "gradients" | "training"
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    dropout: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.data.get("passed"))

    @property
    def first_divergence(self) -> str | None:
        return self.data.get("first_divergence")

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def format(self) -> str:
        verdict = "within tolerance" if self.passed else f"FIRST DIVERGENCE: {self.first_divergence}"
        return f"{self.what} (reloaded from JSON): {verdict}"


def _diagnostic(what: str, data: dict[str, Any] | None) -> SavedReport | NotCompared | None:
    if data is None:
        return None
    if "skipped" in data and what != "layers":
        return NotCompared(what, data["skipped"])
    dropout = data.get("dropout", {}).get("disabled", []) if isinstance(data.get("dropout"), dict) else []
    return SavedReport(what, data, notes=list(data.get("notes", [])) if what == "gradients" else [],
                       dropout=list(dropout))


def result_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``CheckResult`` for a dict written by its ``to_dict``."""
    try:
        return {
            "model": data["model"], "preset": data["preset"], "source": data["source"], "target": data["target"],
            "passed": bool(data["passed"]), "environment": dict(data.get("environment", {})),
            "comparisons": [comparison_from_dict(c) for c in data["comparisons"]],
            "tolerance": dict(data.get("tolerance", {})), "port": port_from_dict(data["port"]),
            "runners": dict(data.get("runners", {})), "files": dict(data.get("files", {})),
            "notes": list(data.get("notes", [])), "checkpoint": dict(data.get("checkpoint", {})),
            "layers": _diagnostic("layers", data.get("layers")),
            "gradients": _diagnostic("gradients", data.get("gradients")),
            "training": _diagnostic("training", data.get("training")),
            "ported": bool(data.get("ported", True)), "pair": dict(data.get("pair", {})),
        }
    except (KeyError, TypeError) as exc:
        raise UsageError(f"not a saved check result (CheckResult.to_dict / parity check --json): {exc!r} "
                         "is missing or malformed") from exc
