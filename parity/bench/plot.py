"""Plot of a benchmark: latency against batch size per runtime (median, with the [min, p90]
spread as a band), throughput bars, one legend for both panels outside the axes, and the
runtimes that were not measured listed under the plot with their reasons.

Works from ``BenchResult.to_dict()`` (or the JSON file it was written to). matplotlib is
imported inside ``bench_figure`` and drawn on an Agg canvas, so no global backend changes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# (batch, median s, samples/s, min s, p90 s)
Point = tuple[int, float, float, float, float]


def measured_series(result: Mapping[str, Any]) -> dict[str, list[Point]]:
    """runtime -> [(batch, median s, samples/s, min s, p90 s)] of the measured cells, by batch."""
    series: dict[str, list[Point]] = {}
    for cell in result.get("cells", []):
        stats = cell.get("stats")
        if cell.get("status") != "ok" or not stats or not cell.get("throughput"):
            continue
        series.setdefault(cell["runtime"], []).append((int(cell["batch"]), float(stats["median_s"]),
                                                       float(cell["throughput"]), float(stats["min_s"]),
                                                       float(stats["p90_s"])))
    return {k: sorted(v) for k, v in series.items()}


def unmeasured(result: Mapping[str, Any]) -> dict[str, str]:
    """runtime -> reason, for runtimes with no measured cell (first reason given)."""
    measured = {c["runtime"] for c in result.get("cells", []) if c.get("status") == "ok"}
    out: dict[str, str] = {}
    for cell in result.get("cells", []):
        if cell["runtime"] not in measured:
            out.setdefault(cell["runtime"], f"{cell.get('status')}: {cell.get('reason', '')}")
    return out


def bench_figure(result: Mapping[str, Any]) -> Any:
    """The matplotlib ``Figure`` of ``result`` (latency and throughput panels), on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = measured_series(result)
    missing = unmeasured(result)
    fig = Figure(figsize=(13, 5.2 + 0.22 * len(missing)), layout="constrained")
    FigureCanvasAgg(fig)
    latency, throughput = fig.subplots(1, 2)
    colors = {r: f"C{i % 10}" for i, r in enumerate(series)}
    _draw_latency(latency, series, colors)
    _draw_throughput(throughput, series, colors)
    handles, labels = latency.get_legend_handles_labels()
    if handles:  # one legend for both panels, beside them: it hides no line and no bar
        fig.legend(handles, labels, loc="outside right upper", fontsize="small", title="runtime")
    if missing:
        lines = [textwrap.shorten(f"{r}: {why}", 150) for r, why in missing.items()]
        fig.text(0.01, 0.005, "not measured:\n" + "\n".join(lines), fontsize="x-small", va="bottom",
                 color="0.3", family="monospace")
        fig.get_layout_engine().set(rect=(0, 0.03 + 0.035 * len(missing), 1, 1 - 0.03 - 0.035 * len(missing)))
    fig.suptitle(_title(result))
    return fig


def plot_bench(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write the plot of ``result`` to ``path`` (PNG), atomically; return the path."""
    return _save_atomic(bench_figure(result), Path(path))


def _draw_latency(ax: Any, series: Mapping[str, list[Point]], colors: Mapping[str, str]) -> None:
    from matplotlib.ticker import ScalarFormatter

    for runtime, points in series.items():
        xs = [p[0] for p in points]
        ax.plot(xs, [p[1] * 1e3 for p in points], marker="o", label=runtime, color=colors[runtime])
        ax.fill_between(xs, [p[3] * 1e3 for p in points], [p[4] * 1e3 for p in points],
                        color=colors[runtime], alpha=0.18, linewidth=0)
        if len(xs) == 1:  # a band needs two batch sizes: draw the spread as an error bar
            p = points[0]
            ax.errorbar(xs, [p[1] * 1e3], yerr=[[(p[1] - p[3]) * 1e3], [(p[4] - p[1]) * 1e3]],
                        color=colors[runtime], capsize=3)
    batches = sorted({p[0] for points in series.values() for p in points})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if batches:
        ax.set_xticks(batches)
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency (ms): median, band = min to p90")
    ax.set_title("latency (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    if not series:
        ax.text(0.5, 0.5, "no measured cells", ha="center", va="center", transform=ax.transAxes)


def _draw_throughput(ax: Any, series: Mapping[str, list[Point]], colors: Mapping[str, str]) -> None:
    batches = sorted({p[0] for points in series.values() for p in points})
    runtimes = list(series)
    width = 0.8 / max(len(runtimes), 1)
    for i, runtime in enumerate(runtimes):
        by_batch = {p[0]: p for p in series[runtime]}
        xs = [j + (i - (len(runtimes) - 1) / 2) * width for j, b in enumerate(batches) if b in by_batch]
        ys = [by_batch[b][2] for b in batches if b in by_batch]
        # spread: batch / p90 (slow calls) to batch / min (fast calls)
        low = [y - b / by_batch[b][4] for y, b in zip(ys, (b for b in batches if b in by_batch), strict=True)]
        high = [b / by_batch[b][3] - y for y, b in zip(ys, (b for b in batches if b in by_batch), strict=True)]
        ax.bar(xs, ys, width=width, label=runtime, color=colors[runtime], yerr=[low, high], capsize=2,
               error_kw={"elinewidth": 0.8, "ecolor": "0.25"})
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    if series:
        ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s (whiskers: at p90 to at min latency)")
    ax.set_title("throughput (higher is better)")
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _title(result: Mapping[str, Any]) -> str:
    from parity.env import device_name

    config = result.get("config", {})
    device = device_name(result.get("environment", {}), str(config.get("device_resolved", "?")))
    return (f"{result.get('model', '?')} ({result.get('preset', '?')}) {result.get('task', '')} on "
            f"{device}, {config.get('precision', '?')}, "
            f"{config.get('threads', '?')} threads")


def _save_atomic(fig: Any, path: Path) -> Path:
    from converters.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


__all__ = ["bench_figure", "measured_series", "plot_bench", "unmeasured"]
