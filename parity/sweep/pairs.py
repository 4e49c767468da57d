"""A user's own model pair in a sweep: ``[[pair]]`` in a config file, or ``--torch/--keras/--input``.

A pair is named by references, as in ``parity check --torch ... --keras ...``
(``parity.cli.user_models``): ``torch`` is ``pkg.module:factory`` or ``path/file.py:factory``;
``keras`` is that or a ``.keras`` file; ``inputs`` are ``NAME:SHAPE[:DTYPE][:LAYOUT]`` without
the batch dimension, **in the torch model's layout** (a check from tf takes them in the Keras
layout, so a channels-first input needs its layout stated). Nothing is imported here: the
driver only parses the references and fingerprints the files they name; the models are
loaded in the cell's worker process.

The fingerprint (SHA-256 of the files: the ``.py`` file or module that defines each factory,
and a ``.keras`` file) is part of the cell's hash, so editing those files reruns the pair's
cells on resume. Files they import, and weights they load, are not covered.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.errors import UsageError

PAIR_KEYS = ("name", "torch", "keras", "inputs", "tolerance")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a file-stem-safe token: it goes into cell ids


@dataclass(frozen=True)
class UserPair:
    """One pair of the user's own models: what a cell needs to load and check them."""

    name: str
    torch: str
    keras: str
    inputs: tuple[str, ...]
    tolerance: float | None = None  # atol and rtol relative to the output scale; None: the user-pair default

    def validate(self, origin: str = "the sweep") -> None:
        """Raise ``UsageError`` for a bad name, reference or input, before any cell runs."""
        from parity.cli.user_models import parse_input

        where = f"{origin}: pair {self.name!r}"
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise UsageError(f"{origin}: pair name {self.name!r} must be letters, digits, '_', '.' or '-' "
                             "(it becomes part of the result file names), e.g. name = \"tiny\"")
        for side in ("torch", "keras"):
            ref = getattr(self, side)
            if not isinstance(ref, str) or not ref.strip():
                raise UsageError(f"{where}: give {side} = \"pkg.module:factory\""
                                 + (" or a .keras file" if side == "keras" else "") + f", got {ref!r}")
            if side == "torch" and ":" not in ref:
                raise UsageError(f"{where}: torch {ref!r} must be pkg.module:factory or path/file.py:factory")
        if isinstance(self.inputs, str) or not self.inputs or not all(isinstance(i, str) for i in self.inputs):
            raise UsageError(f"{where}: give inputs = [\"NAME:SHAPE[:DTYPE][:LAYOUT]\", ...] "
                             f"(e.g. [\"x:3x32x32:float32:NCHW\"]), got {self.inputs!r}")
        names = [parse_input(text)[0] for text in self.inputs]
        if len(set(names)) != len(names):
            raise UsageError(f"{where}: an input is named twice in {list(self.inputs)}")
        tol = self.tolerance
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0):
            raise UsageError(f"{where}: tolerance must be a non-negative number, got {tol!r}")

    def fingerprint(self) -> str:
        """SHA-256 over the files the references name (see the module docstring); '' if none is found."""
        digest = hashlib.sha256()
        found = False
        for ref in (self.torch, self.keras):
            path = source_file(ref)
            if path is not None:
                digest.update(f"{ref}\0".encode() + path.read_bytes())
                found = True
        return digest.hexdigest() if found else ""


def source_file(ref: str) -> Path | None:
    """The file behind a reference, found without importing anything: a .keras or .py path, or the
    module's file on the current folder and ``sys.path``; None where none is found."""
    module, sep, _ = ref.rpartition(":")
    if not sep:
        path = Path(ref)
        return path if path.is_file() else None
    if module.endswith(".py"):
        return Path(module) if Path(module).is_file() else None
    parts = module.split(".")
    for base in dict.fromkeys([os.getcwd(), *sys.path]):
        for candidate in (Path(base, *parts).with_suffix(".py"), Path(base, *parts, "__init__.py")):
            if base and candidate.is_file():
                return candidate
    return None


def pairs_from_config(items: Any, origin: str) -> tuple[UserPair, ...]:
    """``[[pair]]`` tables (a list of objects in JSON) as validated ``UserPair``s."""
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise UsageError(f"{origin}: `pair` must be [[pair]] tables (a list of objects in JSON), got "
                         f"{type(items).__name__}")
    pairs = []
    for item in items:
        unknown = sorted(set(item) - set(PAIR_KEYS))
        if unknown:
            raise UsageError(f"{origin}: [[pair]] has unknown key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(PAIR_KEYS)}")
        inputs = item.get("inputs")
        pair = UserPair(name=item.get("name", "user"), torch=item.get("torch", ""), keras=item.get("keras", ""),
                        inputs=(inputs,) if isinstance(inputs, str) else tuple(inputs or ()),
                        tolerance=item.get("tolerance"))
        pair.validate(origin)
        pairs.append(pair)
    return tuple(pairs)


def check_pairs(pairs: tuple[UserPair, ...], zoo_names: list[str], origin: str = "the sweep") -> None:
    """Every pair valid, names unique and distinct from zoo models (a cell id starts with the name)."""
    for pair in pairs:
        pair.validate(origin)
    names = [p.name for p in pairs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{origin}: pair name(s) {', '.join(map(repr, twice))} given twice; give each pair "
                         "its own name")
    clash = [n for n in names if n in zoo_names]
    if clash:
        raise UsageError(f"{origin}: pair name(s) {', '.join(map(repr, clash))} are zoo model names; choose "
                         "another name for your pair")
