"""What `parity check` runs after the output comparisons: --layers, --grads, --train-steps, --plot.

Layer-by-layer localisation also runs, unasked, whenever an output comparison fails.
Results land on the CheckResult as plain dicts (JSON keys ``layers``, ``gradients``,
``training``); a requested diagnostic that fails makes the check fail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from parity.errors import UsageError


def diagnose(result: Any, options: Any, *, spec: Any, models: Mapping[str, Any], files: Mapping[str, Path],
             port: Any, inputs: Mapping[str, np.ndarray], progress: Callable[[str], None]) -> None:
    """Run the diagnostics ``options`` ask for on a finished check and record them on ``result``."""
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
        report = localize(models["torch"], models["tf"], list(spec.inputs_for("torch", inputs).values()),
                          list(spec.inputs_for("tf", inputs).values()), tolerance=tol, reference=src, port=port,
                          onnx_files=files, mask=mask if mask is not None and mask.ndim == 2 else None,
                          threads=options.threads)
        result.layers = report.to_dict()
        if want_layers and not report.passed:
            result.passed = False
        if plot is not None:
            plot_layers(result.layers, Path(plot), title=f"{result.model} ({result.preset}): {src} -> {result.target}")
            result.files["plot"] = str(plot)
    unfaithful = _inference_only(port) if getattr(options, "grads", False) or steps else ""
    if unfaithful:  # nothing to measure: the twins are different functions once they train
        progress(f"not comparing gradients or training: {unfaithful}")
        skipped = {"passed": False, "skipped": unfaithful}
        result.gradients = dict(skipped) if getattr(options, "grads", False) else None
        result.training = dict(skipped) if steps else None
        result.notes.append(unfaithful)
        result.passed = False
        return
    if getattr(options, "grads", False):
        from parity.diagnostics.grads import gradient_parity

        progress("comparing gradients of the same loss in both twins")
        grads = gradient_parity(spec, models["torch"], models["tf"], inputs, loss=getattr(options, "loss", "mse"),
                                seed=options.seed, strict=strict, reference=src)
        result.gradients = grads.to_dict()
        result.passed = result.passed and grads.passed
    if steps:
        from parity.diagnostics.training import train_parity

        names = list(getattr(options, "optimizers", ("sgd", "adam")))
        progress(f"training both twins {steps} steps with {' and '.join(names)}")
        training = train_parity(spec, models["torch"], models["tf"], steps=steps, optimizers=names,
                                batch=options.batch, seed=options.seed, loss=getattr(options, "loss", "mse"),
                                strict=strict, reference=src)
        result.training = training.to_dict()
        result.passed = result.passed and training.passed


def _inference_only(port: Any) -> str:
    """Why the port makes the twins agree in inference only (a BatchNorm folded away), or ''.

    An LSTM ported with one bias per gate is inference-only too, but training parity
    aligns it (parity.diagnostics.training folds torch's b_hh into b_ih), so it does not count here.
    """
    layers = port.to_dict()["layers"] if hasattr(port, "to_dict") else (port or {}).get("layers", [])
    bad = [x for x in layers if x["status"] == "inference-only" and x["kind"] != "lstm"]
    if not bad:
        return ""
    names = ", ".join(x["target"] for x in bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    return (f"the port is inference-only at {names} ({bad[0]['note'] or bad[0]['transform']}): the twins compute "
            "the same outputs but not the same gradients or training steps; port from a lossless export (from "
            "torch; tf2onnx always folds BatchNorm) to compare them")


def format_diagnostics(result: Any) -> str:
    """The text the CLI prints after the comparison table."""
    lines: list[str] = []
    layers = getattr(result, "layers", None)
    if layers:
        lines.append(_format_layers(layers))
    for key in ("gradients", "training"):
        skipped = (getattr(result, key, None) or {}).get("skipped")
        if skipped:
            lines.append(f"{key}: NOT COMPARED: {skipped}")
    grads = getattr(result, "gradients", None)
    if grads and not grads.get("skipped"):
        loss = grads["loss"]
        first = grads["first_divergence"]
        worst = max(grads["parameters"], key=lambda r: r["relative_error"] or 0.0, default=None)
        lines.append(f"gradients: {len(grads['parameters'])} parameters, loss torch {loss['torch']:.6g} vs tf "
                     f"{loss['tf']:.6g}; worst {worst['name'] if worst else '-'} "
                     f"({(worst or {}).get('relative_error') or 0.0:.2e} of its layer's gradient scale); "
                     + (f"FIRST DIVERGENT PARAMETER: {first} ({grads['first_divergence_detail']['explain']})"
                        if first else "all within tolerance"))
        for note in grads.get("notes", []):
            lines.append(f"  note: {note}")
    training = getattr(result, "training", None)
    if training and not training.get("skipped"):
        for name, run in training["runs"].items():
            gap = max(run["losses"], key=lambda s: s["abs_diff"])
            head = (f"training {name} ({training['steps']} steps, batch {training['batch']['used']}): loss "
                    f"{run['losses'][0]['torch']:.6g} -> {run['losses'][-1]['torch']:.6g}, worst loss gap "
                    f"{gap['abs_diff']:.2e} at step {gap['step']}; ")
            if run["passed"]:
                lines.append(head + "parameters and running statistics within tolerance")
            else:
                detail = run["first_divergence_detail"]
                lines.append(head + f"FIRST DIVERGENCE: {run['first_divergence']}"
                             + (f" ({detail['explain']})" if detail else ""))
        for bn in training.get("batchnorm", []):
            if not bn["converted"]:
                lines.append(f"  BatchNorm momentum not converted: {bn['message']}")
        if training["dropout"]["disabled"]:
            lines.append(f"  dropout off in both twins ({', '.join(training['dropout']['disabled'])}): "
                         f"{training['dropout']['reason']}")
    return "\n".join(lines)


def _format_layers(layers: Mapping[str, Any], limit: int = 40) -> str:
    rows = layers["rows"]
    head = f"  {'#':>3}  {'layer':<52}{'kind':<18}{'max_abs':>10}{'rel_err':>10}{'atol':>10}  verdict"
    out = [f"layer-by-layer (reference {layers['reference']}; {len(rows)} layers)", head]
    first = layers.get("first_divergence")
    shown = [r for i, r in enumerate(rows) if i < limit or r["layer"] == first]
    for r in shown:
        verdict = "skip" if not r["depth"] else ("ok" if r["passed"] else "FAIL")
        out.append(f"  {r['index']:>3}  {r['layer'][:51]:<52}{r['kind'][:17]:<18}{(r['max_abs'] or 0.0):>10.2e}"
                   f"{(r['relative_error'] or 0.0):>10.2e}{r['atol']:>10.2e}  {verdict}")
    if len(rows) > len(shown):
        out.append(f"  ... {len(rows) - len(shown)} more rows in the JSON")
    if first:
        detail = layers["first_divergence_detail"]
        worst = max(detail["comparisons"], key=lambda c: c["max_abs"] or 0.0)
        out.append(f"FIRST LAYER OVER TOLERANCE: {first} ({worst['a']} vs {worst['b']}: max |a-b| "
                   f"{worst['max_abs']:.3g}, {detail['relative_error']:.3g} of the activation scale, atol "
                   f"{detail['atol']:.3g})")
        if layers.get("suspects"):
            out.append(f"  ran just before it without a twin to compare: {', '.join(layers['suspects'])}")
    else:
        out.append("every layer within tolerance")
    for label, info in layers.get("ort", {}).items():
        same = "identical" if info["outputs_identical"] else f"DIFFERENT (max {info['max_output_difference']:.3g})"
        out.append(f"  {label}: {info['observed']} intermediate tensors; final outputs with the extra outputs "
                   f"{same} to the plain session")
    return "\n".join(out)


def plot_layers(layers: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Relative error against depth (log scale), one line per runtime pair, with the tolerance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in layers["rows"] if r["depth"]]
    if not rows:
        raise UsageError(f"--plot {path}: no layer could be compared, so there is nothing to plot")
    if path.parent and not path.parent.is_dir():
        raise UsageError(f"--plot {path}: the folder {path.parent} does not exist")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(rows) + 3), 4.5))
    floor = 1e-12
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        scale = r["scale"] or 1.0
        for c in r["comparisons"]:
            series.setdefault(f"{c['a']} vs {c['b']}", []).append((r["depth"], max((c["max_abs"] or 0.0) / scale, floor)))
    for label, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    ax.plot([r["depth"] for r in rows], [max(r["atol"] / (r["scale"] or 1.0), floor) for r in rows], "k--",
            lw=1, label="tolerance")
    first = next((r for r in rows if not r["passed"]), None)
    if first is not None:
        ax.axvline(first["depth"], color="red", lw=1)
        ax.annotate(f"first over tolerance:\n{first['layer']}", (first["depth"], ax.get_ylim()[1]),
                    fontsize=7, color="red", va="top")
    ax.set_yscale("log")
    ax.set_xlabel("depth (compared layers in forward order)")
    ax.set_ylabel("max |a - b| / activation scale")
    ax.set_title(title or "layer-by-layer error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
