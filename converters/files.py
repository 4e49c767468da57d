"""Atomic file output: write to a temporary file in the target's folder, then rename.

A crash or an error leaves either the old file or none, never half a file, and the
result gets the permissions a plain ``open()`` would give (mkstemp's are 0600).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def default_file_mode() -> int:
    """0666 less the process umask: what open() would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    ``suffix`` matters to writers that check extensions (Keras wants ``.weights.h5``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json_atomic(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def output_folder(out: str | Path | None, *, overwrite: bool = False,
                  option: str = "--out") -> Iterator[Path | None]:
    """Use ``out`` as an output folder that is left as it was unless the block succeeds.

    A missing folder is created (with its missing parents) and removed again on failure or
    Ctrl-C; an existing empty one is emptied again. An existing non-empty folder is refused
    unless ``overwrite``: then a copy of it (so that its files stay readable as inputs) is put
    back on failure and dropped on success. A failed run leaves the folder as it was.
    """
    from converters.errors import OutputError

    if out is None:
        yield None
        return
    out = Path(out)
    if str(out).strip() == "" or str(out) == ".":
        raise OutputError(f"{option} {str(out)!r}: give a folder name for the outputs, e.g. {option} results/")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out}: is a file, not a folder; give a folder path (it is created if missing)")
    if out.is_dir():
        _probe(out, option)
    existing = sorted(out.iterdir()) if out.is_dir() else []
    if existing and not overwrite:
        raise OutputError(f"{option} {out}: the folder is not empty ({len(existing)} entries, e.g. "
                          f"{existing[0].name}); choose another folder or add --overwrite to replace its files")
    created = [p for p in [out, *out.parents] if not p.exists()]
    backup: Path | None = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        _probe(out, option)
        if existing:  # a copy, not a move: the files stay readable where they are (--weights inside --out)
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent)) / out.name
            shutil.copytree(out, backup, symlinks=True)
    except (OSError, OutputError) as exc:
        _remove_created(created)
        if backup is not None:
            shutil.rmtree(backup.parent, ignore_errors=True)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{option} {out}: cannot write there ({exc.strerror or exc}); "
                          "choose a writable folder") from exc
    try:
        yield out
    except BaseException:
        if created:
            _remove_created(created)
        elif backup is not None:
            shutil.rmtree(out)
            os.replace(backup, out)
        else:  # it was empty: empty it again, keeping the folder itself (its owner and mode)
            for entry in out.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if backup is not None:
            shutil.rmtree(backup.parent, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup.parent, ignore_errors=True)


def _probe(folder: Path, option: str) -> None:
    """Create and remove a temporary file in ``folder``: the one test of writability that does not lie."""
    from converters.errors import OutputError

    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError as exc:
        raise OutputError(f"{option} {folder}: cannot write there ({exc.strerror or exc}); "
                          "choose a writable folder") from exc
    os.close(fd)
    os.unlink(probe)


def _remove_created(created: list[Path]) -> None:
    """Remove the folders this run created (the top-most last in ``created``), with what is in them."""
    if created:
        shutil.rmtree(created[-1], ignore_errors=True)


def probe_writable_file(path: Path, option: str) -> None:
    """Prove ``path`` can be written by creating (and removing) a temporary file beside it."""
    from converters.errors import OutputError

    if str(path).strip() in ("", "."):
        raise OutputError(f"{option} {str(path)!r}: give a file name, e.g. {option} result.json")
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{option} {path}: folder {parent} does not exist; create it or give another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write a file in {parent} ({exc.strerror or exc}); "
                          "give a path in a writable folder") from exc
    os.close(fd)
    os.unlink(tmp)
