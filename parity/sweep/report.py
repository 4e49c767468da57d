"""The sweep's HTML page: every cell's check or bench result through ``parity.report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converters.files import atomic_path


def write_html(out: Path, records: list[dict[str, Any]]) -> Path | None:
    """``OUT/report.html`` from the cells that have a result (error cells have none); None if there is none,
    or if the report's own dependencies (jinja2, matplotlib: the ``report`` extra) are not installed."""
    results = [(r["id"], r["result"]) for r in records if isinstance(r.get("result"), dict)]
    if not results:
        return None
    try:
        from parity.report.html import render

        page = render(results)
    except ImportError:
        return None
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
