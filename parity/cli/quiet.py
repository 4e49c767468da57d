"""Keep TensorFlow's and absl's start-up lines off the terminal.

TensorFlow logs a few lines from C++ before absl reads any setting, so ``TF_CPP_MIN_LOG_LEVEL``
cannot hide them: "All log messages before absl::InitializeLog() ...", oneDNN's notice, "Could
not find cuda drivers", and on a machine without a GPU an error-level "failed call to cuInit".
While a command runs on a terminal, file descriptor 2 goes through a pipe; a thread copies each
line back to the terminal unless it is one of ``NOISE``. Nothing else is dropped, and output
sent to a file or a pipe (``2> log``) is left whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^[IW]\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on"),
    re.compile(r"^[IW]\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers"),
    re.compile(r"^E\d{4} [\d:. ]+\d+ cuda_(platform|executor|diagnostics)\.cc:\d+\] failed call to cuInit"),
    re.compile(r"^[IWE]\d{4} [\d:. ]+\d+ cuda_(fft|dnn|blas)\.cc:\d+\] Unable to register cu(FFT|DNN|BLAS) factory"),
    re.compile(r"^[IW]\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] "),
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"),
)


def is_noise(line: str) -> bool:
    """True for a TensorFlow/absl start-up line that says nothing about the user's run."""
    return any(p.search(line.rstrip("\n")) for p in NOISE)


@contextlib.contextmanager
def filtered_stderr(force: bool = False) -> Iterator[None]:
    """Drop ``NOISE`` lines from file descriptor 2 while the block runs (only on a terminal unless ``force``)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test harness: leave it alone
        yield
        return
    if not force and not os.isatty(fd):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    copier = threading.Thread(target=_copy, args=(read_end, saved), daemon=True)
    copier.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)  # closes the pipe's last write end: the copier sees EOF
        copier.join(timeout=5)
        os.close(saved)


def _copy(read_end: int, out: int) -> None:
    with os.fdopen(read_end, "rb") as pipe:
        for raw in pipe:
            if not is_noise(raw.decode("utf-8", "replace")):
                os.write(out, raw)


__all__ = ["NOISE", "filtered_stderr", "is_noise"]
