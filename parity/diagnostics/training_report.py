"""What training parity reports: the loss per step, every parameter and statistic, per optimizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from parity.diagnostics.rows import ParamRow, param_table


@dataclass
class LossStep:
    step: int
    torch: float
    tf: float
    abs_diff: float
    atol: float
    passed: bool


@dataclass
class TrainingRun:
    optimizer: dict[str, Any]
    losses: list[LossStep]
    parameters: list[ParamRow]
    tolerance: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.losses) and all(r.passed for r in self.parameters)

    @property
    def first_divergent_parameter(self) -> str | None:
        """The first parameter frozen on one side only (the cause), else the first failing one."""
        cause = next((r.name for r in self.parameters if r.cause), None)
        return cause or next((r.name for r in self.parameters if not r.passed), None)

    @property
    def first_divergent_step(self) -> int | None:
        return next((s.step for s in self.losses if not s.passed), None)

    @property
    def first_divergence(self) -> str | None:
        """Where first: a parameter or running statistic (forward order); else the first diverging loss."""
        name = self.first_divergent_parameter
        if name is not None:
            return name
        step = self.first_divergent_step
        return f"loss at step {step}" if step is not None else None

    def to_dict(self) -> dict[str, Any]:
        first = next((r for r in self.parameters if not r.passed), None)
        return {"passed": self.passed, "optimizer": self.optimizer, "tolerance": self.tolerance,
                "first_divergence": self.first_divergence, "first_divergent_parameter": self.first_divergent_parameter,
                "first_divergent_step": self.first_divergent_step,
                "first_divergence_detail": first.to_dict() if first else None,
                "losses": [asdict(s) for s in self.losses],
                "parameters": [r.to_dict() for r in self.parameters if not r.statistic],
                "statistics": [r.to_dict() for r in self.parameters if r.statistic]}


@dataclass
class TrainingReport:
    steps: int
    loss: str
    batch: dict[str, Any]
    runs: dict[str, TrainingRun]
    batchnorm: list[dict[str, Any]] = field(default_factory=list)
    alignments: list[str] = field(default_factory=list)
    dropout: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runs.values())

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "steps": self.steps, "loss": self.loss, "batch": self.batch,
                "dropout": {"disabled": self.dropout,
                            "reason": "each framework draws dropout masks from its own random stream; no seed "
                                      "makes the two streams equal, so dropout is off in both twins"},
                "batchnorm": self.batchnorm, "alignments": self.alignments, "notes": self.notes,
                "runs": {k: r.to_dict() for k, r in self.runs.items()}}

    def format(self) -> str:
        lines = []
        for name, run in self.runs.items():
            worst = max(run.losses, key=lambda s: s.abs_diff)
            lines.append(f"training {name} ({self.steps} steps, batch {self.batch['used']}): loss "
                         f"{run.losses[0].torch:.6g} -> {run.losses[-1].torch:.6g}, worst loss gap {worst.abs_diff:.2e} "
                         f"at step {worst.step}; {'PASSED' if run.passed else 'FAILED'}")
            if not run.passed:
                lines += param_table(run.parameters)
                lines.append(f"  first divergence: {run.first_divergence}")
        for line in self.batchnorm:
            if not line["converted"]:
                lines.append(f"  BatchNorm momentum not converted: {line['message']}")
        return "\n".join(lines)
