"""PNG plot of a benchmark: latency against batch size per runtime, and throughput bars.

Works from ``BenchResult.to_dict()`` (or the JSON file it was written to). matplotlib is
imported inside ``plot_bench`` and drawn on an Agg canvas, so no global backend changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def measured_series(result: Mapping[str, Any]) -> dict[str, list[tuple[int, float, float]]]:
    """runtime -> [(batch, median seconds, samples/s)] of the measured cells, by batch."""
    series: dict[str, list[tuple[int, float, float]]] = {}
    for cell in result.get("cells", []):
        stats = cell.get("stats")
        if cell.get("status") != "ok" or not stats or not cell.get("throughput"):
            continue
        series.setdefault(cell["runtime"], []).append((int(cell["batch"]), float(stats["median_s"]),
                                                       float(cell["throughput"])))
    return {k: sorted(v) for k, v in series.items()}


def plot_bench(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write the plot of ``result`` to ``path`` (PNG), atomically; return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = measured_series(result)
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    latency, throughput = fig.subplots(1, 2)
    _draw_latency(latency, series)
    _draw_throughput(throughput, series)
    fig.suptitle(_title(result))
    return _save_atomic(fig, Path(path))


def _draw_latency(ax: Any, series: Mapping[str, list[tuple[int, float, float]]]) -> None:
    for runtime, points in series.items():
        ax.plot([p[0] for p in points], [p[1] * 1e3 for p in points], marker="o", label=runtime)
    from matplotlib.ticker import ScalarFormatter

    batches = sorted({p[0] for points in series.values() for p in points})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if batches:
        ax.set_xticks(batches)
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("batch size")
    ax.set_ylabel("median latency (ms)")
    ax.set_title("latency (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no measured cells", ha="center", va="center", transform=ax.transAxes)


def _draw_throughput(ax: Any, series: Mapping[str, list[tuple[int, float, float]]]) -> None:
    batches = sorted({p[0] for points in series.values() for p in points})
    runtimes = list(series)
    width = 0.8 / max(len(runtimes), 1)
    for i, runtime in enumerate(runtimes):
        by_batch = {p[0]: p[2] for p in series[runtime]}
        xs = [j + (i - (len(runtimes) - 1) / 2) * width for j, b in enumerate(batches) if b in by_batch]
        ax.bar(xs, [by_batch[b] for b in batches if b in by_batch], width=width, label=runtime)
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    if series:
        ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s")
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


__all__ = ["measured_series", "plot_bench"]
