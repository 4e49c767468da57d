"""`parity report`: one self-contained HTML file from saved check and bench results.

Everything is inline: plots as SVG, styles in a <style> element; no script, no network. The
page is a Jinja2 template with autoescaping on, so every name and message from a result is
escaped by the engine; only the SVG that matplotlib wrote is inserted as markup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from parity.errors import UsageError
from parity.report.diff import kind_of

RULE = "|a-b| <= atol + rtol*|b|"
SECTIONS = ("environment", "parity", "layers", "gradients", "training", "latency", "throughput", "roofline",
            "decision", "skipped")


def load_results(paths: Sequence[Path]) -> list[tuple[str, dict[str, Any]]]:
    """(name, parsed JSON) of each file, in order; a clear error for a missing or non-result file."""
    out = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file; give the JSON written by `parity check --json` or "
                             "`parity bench --json`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: not readable as JSON ({exc}); give a result written by --json") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path}: a JSON {type(data).__name__}, not a parity result object")
        kind_of(data)  # raises naming what it got
        out.append((Path(path).name, data))
    return out


def render(results: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The HTML page of ``results`` (name, data) as a string."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["sci"] = _sci
    env.filters["ms"] = lambda s: "-" if s is None else f"{float(s) * 1e3:.4g}"
    env.filters["pct"] = lambda f: "-" if f is None else f"{float(f) * 100:.3g}%"
    env.filters["x"] = lambda v: "-" if v is None else (f"{v:,.0f}x" if v >= 1000 else f"{v:.3g}x")
    env.filters["num"] = lambda v: "-" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}")
    checks, benches = [], []
    for name, data in results:
        if kind_of(data) == "check":
            checks += [_check_context(name, r) for r in (data.get("results") or [data])]
        else:
            benches.append(_bench_context(name, data, _matching_check(data, results)))
    env_source = next((d for _, d in results if d.get("environment")), {})
    return env.get_template("report.html.j2").render(
        files=[n for n, _ in results], environment=_environment(env_source.get("environment", {})),
        checks=checks, benches=benches, rule=RULE)


def write_report(paths: Sequence[Path], out: Path) -> Path:
    """Render the results in ``paths`` into ``out``, atomically."""
    from converters.files import atomic_path

    page = render(load_results(paths))
    with atomic_path(out) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return out


# ---------------------------------------------------------------- contexts


def _check_context(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    from parity.report.figures import layer_figure, loss_figure, svg

    title = f"{data.get('model')} ({data.get('preset')}): {data.get('source')} -> {data.get('target')}"
    layers = data.get("layers") or None
    layer_svg = svg(layer_figure(layers["rows"], f"{title}: error after each layer")) if layers and layers.get(
        "rows") else None
    grads = data.get("gradients") or None
    training = data.get("training") or None
    runs = (training or {}).get("runs") or {}
    loss_svg = svg(loss_figure(runs, f"{title}: loss per step")) if runs else None
    return {"file": name, "title": title, "passed": bool(data.get("passed")), "comparisons": data.get("comparisons", []),
            "tolerance": data.get("tolerance", {}), "notes": data.get("notes", []), "layers": layers,
            "layer_svg": layer_svg, "gradients": grads, "training": training, "runs": runs, "loss_svg": loss_svg}


def _bench_context(name: str, data: Mapping[str, Any], check: Mapping[str, Any] | None) -> dict[str, Any]:
    from parity.report.decision import decide
    from parity.report.figures import bench_svg

    config = data.get("config", {})
    cells = sorted(data.get("cells", []), key=lambda c: (c["batch"], c["runtime"]))
    return {"file": name, "title": f"{data.get('model')} ({data.get('preset')}) {data.get('task')} on "
                                   f"{config.get('device_resolved')}, {config.get('precision')}, "
                                   f"{config.get('threads')} threads",
            "svg": bench_svg(data), "cells": [c for c in cells if c.get("status") == "ok"],
            "skipped": [c for c in cells if c.get("status") != "ok"], "peak": data.get("peak"),
            "decision": decide(data, check), "check_used": check is not None}


def _matching_check(bench: Mapping[str, Any], results: Sequence[tuple[str, Mapping[str, Any]]]) -> Any:
    """The first check result of the same model, for the decision's parity column."""
    for _, data in results:
        if kind_of(data) == "check":
            for r in data.get("results") or [data]:
                if r.get("model") == bench.get("model"):
                    return r
    return None


def _environment(env: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = [("platform", str(env.get("platform", "-"))),
            ("cpu", f"{(env.get('cpu') or {}).get('model', '-')} ({(env.get('cpu') or {}).get('usable_cores', '?')} usable cores)")]
    gpu = env.get("gpu")
    rows.append(("gpu", json.dumps(gpu) if gpu else "none seen"))
    rows += [(k, str(v)) for k, v in (env.get("versions") or {}).items()]
    return rows


def _sci(value: Any) -> str:
    if value is None:
        return "nan"
    if isinstance(value, str):
        return value
    return f"{float(value):.2e}"


__all__ = ["RULE", "SECTIONS", "load_results", "render", "write_report"]
