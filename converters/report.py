"""PortReport: what went where, and how faithfully."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerPort:
    target: str
    kind: str
    onnx_nodes: list[str]
    transform: str
    status: str  # "exact" | "inference-only"
    note: str = ""


@dataclass
class PortReport:
    source: str
    target_framework: str
    layers: list[LayerPort] = field(default_factory=list)
    unused_initializers: dict[str, str] = field(default_factory=dict)
    consumed_initializers: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    lint: list[dict[str, Any]] = field(default_factory=list)  # semantic-defaults findings

    @property
    def exact(self) -> bool:
        return all(layer.status == "exact" for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target_framework": self.target_framework,
            "exact": self.exact,
            "layers": [asdict(layer) for layer in self.layers],
            "unused_initializers": dict(self.unused_initializers),
            "consumed_initializers": dict(self.consumed_initializers),
            "warnings": list(self.warnings),
            "lint": list(self.lint),
        }
