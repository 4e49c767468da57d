"""What a check returns: its options, and a typed result that becomes JSON only in ``to_dict``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.report import PortReport
from parity.compare import Comparison

if TYPE_CHECKING:
    from converters.lint import Finding
    from parity.diagnostics import NotCompared
    from parity.diagnostics.grads import GradReport
    from parity.diagnostics.localize import LayerReport
    from parity.diagnostics.training_report import TrainingReport


COMPARE_ONLY = "(not ported: both models compared as given)"  # the PortReport source of a compare-only check


@dataclass(frozen=True)
class CheckOptions:
    model: str
    source: str = "torch"
    preset: str = "small"
    batch: int = 2
    seed: int = 0
    atol: float | None = None  # absolute; by default the spec's tolerance, scaled to the output
    rtol: float | None = None
    device: str = "auto"
    threads: int | None = None
    precision: str = "fp32"
    exporter: str | None = None  # torch exporter; None: the spec's (dynamo unless the twin needs legacy)
    lossless: bool = True
    strict: bool = False
    out: Path | None = None
    # a published checkpoint as the (torch) source instead of a seeded random twin; see converters.checkpoints
    checkpoint: Path | None = None
    texts: tuple[str, ...] = ()  # bert with a checkpoint: real texts, tokenised by the checkpoint's tokenizer
    # diagnostics (parity.diagnostics); layer-by-layer localisation also runs whenever a comparison fails
    layers: bool = False
    grads: bool = False
    train_steps: int = 0  # 0: no training-step parity
    optimizers: tuple[Any, ...] = ("sgd", "adam")  # names, or a user pair's own (torch, keras) optimizers
    loss: str = "mse"  # for --grads and --train-steps: "mse" or "xent"
    plot: Path | None = None  # layer error against depth (implies layers)
    strict_tolerances: bool = False  # take tolerances as given: no growth with depth or steps
    port: bool = True  # False (a user pair only): compare the two models as they are
    save_outputs: Path | None = None  # every runtime's outputs (source layout) as an .npz
    runtimes: tuple[str, ...] | None = None  # None: torch, tf, ort-torch, ort-tf (see parity.check.pipeline)


@dataclass
class CheckResult:
    """One check: every comparison, the port, and the diagnostics, as typed objects."""

    model: str
    preset: str
    source: str
    target: str
    passed: bool
    environment: dict[str, Any]
    comparisons: list[Comparison]
    tolerance: dict[str, Any]
    port: PortReport
    runners: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    # every runtime's outputs in torch layout (and "embedding" for a bert checkpoint); not in the JSON
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    layers: LayerReport | None = None
    gradients: GradReport | NotCompared | None = None
    training: TrainingReport | NotCompared | None = None
    ported: bool = True  # False: compare-only (both models kept their own weights)
    pair: dict[str, Any] = field(default_factory=dict)  # a user pair: how inputs and outputs were laid out

    @property
    def lint(self) -> list[Finding]:
        """The semantic-defaults findings between the twins (the port's)."""
        return self.port.lint

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "preset": self.preset, "source": self.source, "target": self.target,
            "passed": self.passed, "environment": self.environment,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "tolerance": self.tolerance, "port": self.port.to_dict(), "runners": self.runners,
            "files": self.files, "notes": self.notes, "lint": [f.to_dict() for f in self.lint],
            "checkpoint": self.checkpoint,
            "layers": self.layers.to_dict() if self.layers is not None else None,
            "gradients": self.gradients.to_dict() if self.gradients is not None else None,
            "training": self.training.to_dict() if self.training is not None else None,
            "ported": self.ported, "pair": self.pair,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        """A result saved with ``to_dict`` (``parity check --json``), reloaded; see ``parity.check.saved``."""
        from parity.check.saved import result_fields

        return cls(**result_fields(data))


def format_table(result: CheckResult) -> str:
    """The comparison table `parity check` prints, with the verdict."""
    exact = sum(1 for layer in result.port.layers if layer.exact)
    how = (f"ported {len(result.port.layers)} layers ({exact} exact)" if result.ported
           else "compared as given (not ported)")
    head = f"parity check {result.model} ({result.preset}): {result.source} -> {result.target}, {how}"
    w = max([len("output"), *(len(c.output) for c in result.comparisons)]) + 2
    wa = max([10, *(len(c.a) + 1 for c in result.comparisons)])  # keras-torch is 11 wide
    cols = f"  {'a':<{wa}}{'b':<7}{'output':<{w}}{'max_abs':>10}{'max_rel':>10}{'mean_abs':>10}{'cosine':>12}{'atol':>10}{'rtol':>10}  verdict"
    rows = [head, cols]
    for c in result.comparisons:
        rows.append(f"  {c.a:<{wa}}{c.b:<7}{c.output:<{w}}{c.max_abs:>10.2e}{c.max_rel:>10.2e}{c.mean_abs:>10.2e}"
                    f"{c.cosine:>12.8f}{c.atol:>10.2e}{c.rtol:>10.2e}  {'ok' if c else 'FAIL'}")
    rows.append("  verdict: ok when every element has |a-b| <= atol + rtol*|b| (b: the source)")
    for c in result.failures:
        rows.append("  " + c.explain())
    for f in result.lint:
        rows.append("  semantic mismatch: " + f.message)
    rows += [f"  note: {n}" for n in result.notes]
    rows.append("PASSED" if result.passed else f"FAILED: {len(result.failures)} of {len(result.comparisons)} comparisons"
                if result.failures else "FAILED: the outputs agree; a requested diagnostic does not (see below)")
    return "\n".join(rows)
