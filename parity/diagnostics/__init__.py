"""What `parity check` runs after the output comparisons: --layers, --grads, --train-steps, --plot.

Layer-by-layer localisation also runs, unasked, whenever an output comparison fails.
Results land on the CheckResult as typed reports (LayerReport, GradReport,
TrainingReport, or NotCompared when the port makes a comparison meaningless); they
become JSON (keys ``layers``, ``gradients``, ``training``) only in ``CheckResult.to_dict``.
A requested diagnostic that fails makes the check fail.

The diagnostics run where the check's runners ran (``result.runners[...]["device_type"]``,
see ``parity.diagnostics.device``): after a CUDA run the torch twin is diagnosed on the GPU
(a copy there, when the caller's model is elsewhere), Keras under that ``tf.device``, and
ONNX Runtime with the runner's execution provider.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.report import LSTM_SINGLE_BIAS, PortReport
from parity.errors import UsageError

if TYPE_CHECKING:
    from parity.diagnostics.device import Placement
    from parity.diagnostics.localize import LayerReport


@dataclass(frozen=True)
class NotCompared:
    """A requested diagnostic that was not run, and why; it fails the check."""

    what: str  # "gradients" | "training"
    reason: str

    @property
    def passed(self) -> bool:
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"passed": False, "skipped": self.reason}

    def format(self) -> str:
        return f"{self.what}: NOT COMPARED: {self.reason}"


def diagnose(result: Any, options: Any, *, spec: Any, models: Mapping[str, Any], files: Mapping[str, Path],
             port: PortReport, inputs: Mapping[str, np.ndarray], progress: Callable[[str], None]) -> None:
    """Run the diagnostics ``options`` ask for on a finished check and record them on ``result``,
    on the devices its runners ran on."""
    from parity.diagnostics.device import Placement, torch_placed

    place = Placement.of_check(result.runners or {}, str(getattr(options, "device", "cpu")),
                               str(getattr(options, "precision", "fp32")))
    want_any = (bool(getattr(options, "layers", False)) or getattr(options, "plot", None) is not None
                or not result.passed or bool(getattr(options, "grads", False))
                or bool(getattr(options, "train_steps", 0)))
    if not want_any:
        return
    with torch_placed(models["torch"], place.torch) as there:  # one copy for every diagnostic, when one is needed
        _diagnose(result, options, spec=spec, models={**models, "torch": there}, files=files, port=port,
                  inputs=inputs, progress=progress, place=place)


def _diagnose(result: Any, options: Any, *, spec: Any, models: Mapping[str, Any], files: Mapping[str, Path],
              port: PortReport, inputs: Mapping[str, np.ndarray], progress: Callable[[str], None],
              place: Placement) -> None:
    """``diagnose`` with the torch twin on ``place.torch``."""
    src = result.source
    want_layers = bool(getattr(options, "layers", False))
    plot = getattr(options, "plot", None)
    strict = bool(getattr(options, "strict_tolerances", False))
    steps = int(getattr(options, "train_steps", 0) or 0)
    if want_layers or plot is not None or not result.passed:
        from parity.diagnostics.localize import depth_tolerance, localize

        why = "asked for" if want_layers or plot is not None else "a comparison failed"
        progress(f"localising layer by layer ({why})")
        tol = depth_tolerance(spec.tolerance, strict=strict, atol=options.atol, rtol=options.rtol,
                              tf32=options.precision == "tf32")
        mask = inputs.get("attention_mask")
        t_in, k_in = spec.inputs_for("torch", inputs), spec.inputs_for("tf", inputs)
        report = localize(models["torch"], models["tf"], list(t_in.values()), list(k_in.values()), tolerance=tol,
                          reference=src, port=port, onnx_files=files,
                          mask=mask if mask is not None and mask.ndim == 2 else None, threads=options.threads,
                          device=place, input_names={"torch": list(t_in), "tf": list(k_in)})
        result.layers = report
        if want_layers and not report.passed:
            result.passed = False
        if plot is not None:
            plot_layers(report, Path(plot), title=f"{result.model} ({result.preset}): {src} -> {result.target}")
            result.files["plot"] = str(plot)
    want_grads = bool(getattr(options, "grads", False))
    unfaithful = inference_only(port) if want_grads or steps else ""
    if unfaithful:  # nothing to measure: the twins are different functions once they train
        progress(f"not comparing gradients or training: {unfaithful}")
        result.gradients = NotCompared("gradients", unfaithful) if want_grads else None
        result.training = NotCompared("training", unfaithful) if steps else None
        result.notes.append(unfaithful)
        result.passed = False
        return
    if want_grads:
        from parity.diagnostics.grads import gradient_parity

        progress("comparing gradients of the same loss in both twins")
        grads = gradient_parity(spec, models["torch"], models["tf"], inputs, loss=getattr(options, "loss", "mse"),
                                seed=options.seed, strict=strict, reference=src, device=place)
        result.gradients = grads
        result.passed = result.passed and grads.passed
    if steps:
        from parity.diagnostics.training import train_parity
        from parity.diagnostics.user_optimizers import is_optimizer, pair_config

        names = list(getattr(options, "optimizers", ("sgd", "adam")))
        if any(map(is_optimizer, names)):  # the pair's own optimizers: their settings, each on its side
            from converters.lint import lint_optimizers

            given = {("tf" if hasattr(o, "apply_gradients") else "torch"): o for o in names}
            names = [pair_config(names, models["torch"], models["tf"])]
            if len(given) == 2:
                result.port.lint.extend(lint_optimizers(given[src], given[result.target]))
        progress(f"training both twins {steps} steps with {' and '.join(str(getattr(n, 'run_name', n)) for n in names)}")
        training = train_parity(spec, models["torch"], models["tf"], steps=steps, optimizers=names,
                                batch=options.batch, seed=options.seed, loss=getattr(options, "loss", "mse"),
                                strict=strict, reference=src, device=place)
        result.training = training
        result.passed = result.passed and training.passed


def inference_only(port: PortReport) -> str:
    """Why the port makes the twins agree in inference only (a BatchNorm folded away and not restored
    from a Keras source, ``converters.restore_batchnorm``), or ''.

    An LSTM ported with one bias per gate is inference-only too, but training parity
    aligns it (parity.diagnostics.training folds torch's b_hh into b_ih), so it does not count here.
    """
    bad = [x for x in port.inference_only if x.reason != LSTM_SINGLE_BIAS]
    if not bad:
        return ""
    names = ", ".join(x.target for x in bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    return (f"the port is inference-only at {names} ({bad[0].note or bad[0].transform}): the twins compute "
            "the same outputs but not the same gradients or training steps; port from a lossless export (from "
            "torch), or from the Keras model itself rather than its ONNX file (tf2onnx folds BatchNorm; the "
            "statistics are then restored from the model), to compare them")


def format_diagnostics(result: Any) -> str:
    """The text the CLI prints after the comparison table, from the typed reports' ``format()``."""
    lines: list[str] = []
    if result.layers is not None:
        lines.append(result.layers.format())
    grads = result.gradients
    if grads is not None:
        lines.append(grads.format())
        if not isinstance(grads, NotCompared):
            lines += [f"  note: {note}" for note in grads.notes]
    training = result.training
    if training is not None:
        lines.append(training.format())
        if not isinstance(training, NotCompared) and training.dropout:
            lines.append(f"  dropout off in both twins ({', '.join(training.dropout)}): each framework draws "
                         "its own masks")
    return "\n".join(lines)


def plot_layers(layers: LayerReport, path: Path, title: str = "") -> Path:
    """Each layer's worst element against its tolerance, max |a-b| / (atol + rtol |b|), against depth
    (log scale), one line per runtime pair; the tolerance line is 1, the rule of the table and the verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in layers.rows if r.depth]
    if not rows:
        raise UsageError(f"--plot {path}: no layer could be compared, so there is nothing to plot")
    if path.parent and not path.parent.is_dir():
        raise UsageError(f"--plot {path}: the folder {path.parent} does not exist")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * min(len(rows), 60) + 3), 5.5))
    series = plot_series(layers)
    for label, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="tolerance: |a-b| = atol + rtol |b|")
    first = next((r for r in rows if not r.passed), None)
    if first is not None:
        ax.axvline(first.depth, color="red", lw=1)
        ax.annotate(f"first over tolerance:\n{first.layer}", (first.depth, ax.get_ylim()[1]),
                    fontsize=7, color="red", va="top")
    ax.set_yscale("log")
    ax.set_xticks(*layer_ticks(layers), rotation=90, fontsize=6)
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("max |a - b| / (atol + rtol |b|)")
    ax.set_title(title or "layer-by-layer error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def layer_ticks(layers: LayerReport, most: int = 60) -> tuple[list[int], list[str]]:
    """The plot's x ticks: each compared layer's depth and name (past ``most`` layers every k-th is
    named, so that the labels do not overlap)."""
    rows = [r for r in layers.rows if r.depth]
    named = rows[::max(1, -(-len(rows) // most))]
    return [r.depth for r in named], [r.layer for r in named]


def plot_series(layers: LayerReport, floor: float = 1e-6) -> dict[str, list[tuple[int, float]]]:
    """The plotted points: per runtime pair, (depth, max over elements of |a-b| / (atol + rtol |b|)).

    A point is above 1 exactly when that comparison failed (a non-finite one is left out: a gap);
    ``floor`` keeps exact agreement on the log axis."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in layers.rows:
        if not r.depth:
            continue
        for c in r.comparisons:
            ratio = r.ratios.get(c.a, math.inf)
            if math.isfinite(ratio):
                series.setdefault(f"{c.a} vs {c.b}", []).append((r.depth, max(ratio, floor)))
    return series
