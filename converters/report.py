"""PortReport: what went where, and how faithfully, as structured fields (never parse ``note``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Why a layer is ported inference-only (LayerPort.reason); "" when it is exact.
FOLDED_BATCHNORM = "folded_batchnorm"  # a following BatchNorm was folded into this layer's weights
FOLDED_INTO = "folded_into"  # this BatchNorm was folded into the preceding layer (``folded_into``)
FOLDED_STATISTICS = "folded_statistics"  # mean/variance folded into a per-channel scale and shift
LSTM_SINGLE_BIAS = "lstm_single_bias"  # one bias per gate (Keras) carried by torch's b_ih, b_hh zero
# an embedding looked up at constant positions (0..L-1) that an exporter or simplifier folded into the
# rows it used: those rows are ported (``rows``), the others are not in the file and keep the target's values
FOLDED_LOOKUP = "folded_lookup"
REASONS = (FOLDED_BATCHNORM, FOLDED_INTO, FOLDED_STATISTICS, LSTM_SINGLE_BIAS, FOLDED_LOOKUP)


@dataclass(frozen=True)
class LayerPort:
    """One target layer: the ONNX nodes its tensors came from, the transform, and its faithfulness.

    ``note`` is for people; code reads ``status``, ``reason``, ``folded_batchnorm`` and ``folded_into``.
    """

    target: str
    kind: str
    onnx_nodes: list[str]
    transform: str
    status: str  # "exact" | "inference-only"
    note: str = ""
    reason: str = ""  # one of REASONS when inference-only, else ""
    # in the ONNX file: still set on an exact layer whose statistics were restored from a Keras source
    # (converters.restore_batchnorm), since the file's node computes the pair
    folded_batchnorm: str | None = None  # the BatchNorm folded into this layer (target name)
    folded_into: str | None = None  # the layer this BatchNorm was folded into (target name)

    @property
    def exact(self) -> bool:
        return self.status == "exact"


@dataclass
class PortReport:
    """Every target layer's port, the initializers consumed or left (with reasons), warnings and lint."""

    source: str
    target_framework: str
    layers: list[LayerPort] = field(default_factory=list)
    unused_initializers: dict[str, str] = field(default_factory=dict)
    consumed_initializers: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    lint: list[Any] = field(default_factory=list)  # converters.lint.Finding: semantic-defaults findings
    unfolded: dict[str, str] = field(default_factory=dict)  # ONNX node -> why constant folding left it

    @property
    def exact(self) -> bool:
        return all(layer.exact for layer in self.layers)

    @property
    def inference_only(self) -> list[LayerPort]:
        return [layer for layer in self.layers if not layer.exact]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target_framework": self.target_framework,
            "exact": self.exact,
            "layers": [asdict(layer) for layer in self.layers],
            "unused_initializers": dict(self.unused_initializers),
            "consumed_initializers": dict(self.consumed_initializers),
            "warnings": list(self.warnings),
            "lint": [f.to_dict() for f in self.lint],
            "unfolded_constants": dict(self.unfolded),
        }
