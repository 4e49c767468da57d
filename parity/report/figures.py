"""The report's plots as inline SVG text: layer error by layer name, loss curves of both
frameworks, and the bench plot. matplotlib on an Agg canvas; no global backend change."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

# Log axes cannot show 0: an exact match is drawn at this floor and said so in the legend.
FLOOR = 1e-12


def svg(fig: Any) -> str:
    """The figure as SVG markup (the XML prolog dropped, so it can sit inside HTML); deterministic."""
    import matplotlib

    buf = io.StringIO()
    # a fixed salt makes the SVG's ids, and so the file, the same on every run; no date or creator metadata
    with matplotlib.rc_context({"svg.hashsalt": "parity-report", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def layer_figure(rows: Sequence[Mapping[str, Any]], title: str) -> Any:
    """Each layer's worst element against its tolerance, max |a-b| / (atol + rtol |b|), the rule of the
    table and the verdict (a point above the line at 1 is a FAIL row), the x axis labelled with the
    layer names in depth order. Rows saved before the ratio existed fall back to max |a-b| and atol."""
    names = [str(r["layer"]) for r in rows]
    fig = _figure(max(6.0, 0.32 * len(names) + 2), 4.2)
    ax = fig.subplots()
    xs = list(range(len(rows)))
    by_ratio = all(r.get("ratio") is not None for r in rows)
    if by_ratio:
        values = [_floor(r.get("ratio")) for r in rows]
        ax.plot(xs, values, marker="o", label=f"max |a-b| / (atol + rtol |b|) (0 drawn at {FLOOR:g})")
        ax.axhline(1.0, linestyle="--", color="C3", label="tolerance: |a-b| = atol + rtol |b|")
        ax.set_ylabel("max |a-b| / (atol + rtol |b|)")
    else:
        values = [_floor(r.get("max_abs")) for r in rows]
        ax.plot(xs, values, marker="o", label=f"max |a-b| (0 drawn at {FLOOR:g})")
        ax.plot(xs, [_floor(r.get("atol")) for r in rows], linestyle="--", color="C3",
                label="atol at that depth (this result has no rtol ratio)")
        ax.set_ylabel("max |a-b|")
    bad = [i for i, r in enumerate(rows) if not r.get("passed")]
    if bad:
        ax.scatter(bad, [values[i] for i in bad], color="red", zorder=3, s=60, label="over tolerance")
    ax.set_yscale("log")
    ax.set_xticks(xs, names, rotation=60 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center",
                  fontsize="small")
    ax.set_xlabel("layer (in depth order)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


def loss_figure(runs: Mapping[str, Mapping[str, Any]], title: str) -> Any:
    """Loss per step of both frameworks, one panel per optimizer."""
    fig = _figure(5.0 * max(len(runs), 1), 3.6)
    axes = fig.subplots(1, max(len(runs), 1), squeeze=False)[0]
    for ax, (name, run) in zip(axes, runs.items(), strict=False):
        steps = [int(s["step"]) for s in run.get("losses", [])]
        ax.plot(steps, [_num(s.get("torch")) for s in run["losses"]], marker="o", label="torch")
        ax.plot(steps, [_num(s.get("tf")) for s in run["losses"]], marker="x", linestyle="--", label="tf (Keras)")
        ax.set_xticks(steps)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{name}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def bench_svg(result: Mapping[str, Any]) -> str:
    from parity.bench.plot import bench_figure

    return svg(bench_figure(result))


def _num(value: Any) -> float:
    return math.nan if value is None or isinstance(value, str) else float(value)


def _floor(value: Any) -> float:
    v = _num(value)
    return FLOOR if v == 0 else v


__all__ = ["FLOOR", "bench_svg", "layer_figure", "loss_figure", "svg"]
