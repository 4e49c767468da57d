"""Peak memory of one benchmark cell: how to reset it before the cell and read it after.

On GPU each framework's own allocator is read (torch ``max_memory_allocated``, TF
``get_memory_info('GPU:0')['peak']``; the cases build those). On CPU the only figure is the
process's peak resident set (Linux VmHWM, reset through ``/proc/self/clear_refs``): it covers
every framework loaded into the process, the interpreter and the libraries, so it is a
ceiling for the cell, not the cell's own footprint, and it is not comparable across runtimes:
such a ``Memory`` says ``comparable=False`` and the decision summary does not rank by it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from parity.bench.timing import noop

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _none() -> int | None:
    return None


@dataclass(frozen=True)
class Memory:
    """How to reset and read the peak memory that belongs to one case; ``source`` says what it is."""

    source: str
    reset: Callable[[], None] = noop
    peak: Callable[[], int | None] = _none
    # True for a framework's own allocator counter (what this runtime allocated for the model);
    # False for a process-wide figure that holds every framework loaded into the process.
    comparable: bool = True


def rss_memory() -> Memory:
    """Process peak RSS (Linux VmHWM, reset through /proc/self/clear_refs), else RSS after the run."""
    if os.path.exists(_STATUS) and _clear_peak_rss():
        return Memory("process peak RSS (VmHWM, reset per cell; all frameworks in the process; "
                      "not comparable across runtimes)", _reset_peak_rss, _peak_rss, comparable=False)
    return Memory("process RSS after the run (peak not readable here; not comparable across runtimes)", noop,
                  _current_rss, comparable=False)


def _clear_peak_rss() -> bool:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _reset_peak_rss() -> None:
    _clear_peak_rss()


def _peak_rss() -> int | None:
    return _read_status_kb(_STATUS, "VmHWM")


def _read_status_kb(path: str, key: str) -> int | None:
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def _current_rss() -> int | None:
    import psutil

    return int(psutil.Process().memory_info().rss)


__all__ = ["Memory", "rss_memory"]
