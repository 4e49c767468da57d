"""The results folder: one JSON per cell, written atomically, and what a rerun may skip.

``OUT/cells/<cell id>.json`` holds the cell's parameters, their hash, the status
('passed', 'failed' or 'error'), every attempt's reason, and the full result. A rerun
skips a cell whose file exists, parses, carries the same hash and has a verdict
('passed' or 'failed'); error cells and stale or unreadable files are run again.
Files are only read as JSON (never unpickled).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from converters.files import write_json_atomic
from parity.errors import UsageError
from parity.sweep.matrix import SweepCell

VERDICTS = ("passed", "failed")  # a cell with a verdict is done; an 'error' cell is rerun


def prepare(out: Path) -> None:
    """Create ``out/cells`` and prove it is writable before any cell runs (an existing folder is resumed)."""
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=out / "cells")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose a writable folder") from exc


def cell_path(out: Path, cell: SweepCell) -> Path:
    return out / "cells" / f"{cell.id}.json"


def load_done(out: Path, cell: SweepCell) -> dict[str, Any] | None:
    """The stored record of ``cell`` if a rerun may skip it, else None."""
    path = cell_path(out, cell)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("hash") != cell.hash or record.get("status") not in VERDICTS:
        return None
    return record


def make_record(cell: SweepCell, status: str, attempts: list[str], outcome: dict[str, Any] | None = None,
                reason: str = "") -> dict[str, Any]:
    """A cell's JSON: parameters, hash, status, attempts (one reason per failed try) and the outcome."""
    outcome = dict(outcome or {})
    return {"id": cell.id, "hash": cell.hash, "cell": cell.params, "status": status, "reason": reason,
            "attempts": len(attempts) + (status in VERDICTS), "failed_attempts": attempts,
            "seconds": outcome.pop("seconds", None), "host": outcome.pop("host", None),
            "pid": outcome.pop("pid", None), **outcome}


def write_record(out: Path, cell: SweepCell, record: dict[str, Any]) -> Path:
    path = cell_path(out, cell)
    write_json_atomic(path, record)
    return path


def write_index(out: Path, records: list[dict[str, Any]]) -> Path:
    """``OUT/sweep.json``: every cell's id, status, reason and summary numbers (not the full results)."""
    keep = ("id", "hash", "cell", "status", "reason", "attempts", "failed_attempts", "seconds", "host", "worst",
            "fastest", "failures", "resumed")
    index = {"cells": [{k: r.get(k) for k in keep} for r in records],
             "counts": {s: sum(r["status"] == s for r in records) for s in ("passed", "failed", "error")}}
    path = out / "sweep.json"
    write_json_atomic(path, index)
    return path
