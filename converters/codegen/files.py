"""Write a generated twin's folder atomically and import its ``model.py``."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from converters.errors import OutputError


@contextmanager
def staged_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``out``; on success it becomes ``out`` (an existing ``out`` is
    replaced only with ``overwrite``). A failure leaves ``out`` as it was."""
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"--out {out} exists and is not empty; choose a new folder or pass --overwrite")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write beside it ({exc.strerror or exc}); choose a writable folder") \
            from exc
    try:
        yield stage
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(stage, 0o777 & ~mask)  # what mkdir would give, not mkdtemp's 0700
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def load_model_module(path: str | Path) -> ModuleType:
    """Import a generated ``model.py`` under a name of its own (a digest of its text)."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    name = f"parity_twin_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
