"""A user's own models and inputs on the command line: ``--torch``, ``--keras``, ``--input``, ``--inputs``.

A model is named as ``pkg.module:factory`` (or ``path/to/file.py:factory``): the module is
imported and ``factory`` called with no arguments; it may also be a model object or a model
class. **Importing a module runs its code**, exactly as ``python -c "import pkg.module"``
would: name only modules you trust. The current folder is searched first, as with
``python -m``. A Keras model may also be a ``.keras`` file, loaded with
``keras.saving.load_model(path, safe_mode=True)`` (no arbitrary code from the file; a
``Lambda`` layer is refused). Nothing here unpickles: ``--inputs`` is read with
``np.load(allow_pickle=False)``.

``--input NAME:SHAPE[:DTYPE][:LAYOUT]`` describes one input without its batch dimension, in
the source model's layout (``x:3x32x32:float32:NCHW``, ``ids:7:int64``). ``LAYOUT`` is the
torch model's layout, as in the zoo specs: ``NCHW`` / ``NCL`` mean Keras takes the input
channels-last (NHWC / NLC); ``same`` (or ``NC``, ``NL``, ``NLC``, ``NHWC``) means both take
it as it is; left out, it is inferred from the two models' input shapes
(``parity.check.user_inputs``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from parity.check.user_inputs import LAYOUTS
from parity.errors import UsageError

__all__ = ["LAYOUTS", "InputArg", "add_user_model_arguments", "load_keras", "load_npz_inputs", "load_torch",
           "parse_input"]

DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")

InputArg = tuple[str, tuple[int, ...], str, str | None]


def _import_module(module: str, what: str, ref: str) -> Any:
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise UsageError(f"{what} {ref!r}: no such file {path}; give pkg.module:factory or an existing "
                             f"path/to/file.py:factory")
        name = f"parity_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"{what} {ref!r}: cannot import {path} as a Python module")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:  # the user's code: report it as their input, keep the cause chained
            del sys.modules[name]
            raise UsageError(f"{what} {ref!r}: importing {path} raised {type(exc).__name__}: {exc}") from exc
        return mod
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` does: modules in the current folder are found
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise UsageError(f"{what} {ref!r}: no module named {exc.name!r} (searched the current folder and "
                             f"sys.path); give pkg.module:factory with an importable module, or "
                             f"path/to/file.py:factory") from None
        raise UsageError(f"{what} {ref!r}: importing {module} failed: {exc}") from exc
    except Exception as exc:  # the user's code: report it as their input, keep the cause chained
        raise UsageError(f"{what} {ref!r}: importing {module} raised {type(exc).__name__}: {exc}") from exc


def _resolve(ref: str, what: str) -> Any:
    """Import ``module:attr`` and return the attribute (dotted attributes allowed)."""
    module, sep, attr = ref.rpartition(":")
    if not sep or not module or not attr:
        raise UsageError(f"{what} {ref!r}: expected pkg.module:factory (a module path, a colon, a callable or "
                         f"model in it)")
    obj = _import_module(module, what, ref)
    for part in attr.split("."):
        if not hasattr(obj, part):
            known = sorted(n for n in dir(obj) if not n.startswith("_"))[:12]
            raise UsageError(f"{what} {ref!r}: {module} has no attribute {part!r} (it has: {', '.join(known)})")
        obj = getattr(obj, part)
    return obj


def _call_factory(obj: Any, ref: str, what: str) -> Any:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        required = [p.name for p in signature.parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if required:
            raise UsageError(f"{what} {ref!r}: the factory needs arguments ({', '.join(required)}); name a function "
                             f"that takes none and returns the model")
    try:
        return obj()
    except Exception as exc:  # the user's code: report it as their input, keep the cause chained
        raise UsageError(f"{what} {ref!r}: calling it raised {type(exc).__name__}: {exc}") from exc


def load_torch(ref: str) -> Any:
    """The ``torch.nn.Module`` named by ``pkg.module:factory`` (imports and runs the user's module)."""
    import torch

    if Path(ref).suffix in (".pt", ".pth", ".pt2", ".bin") and ":" not in ref:
        raise UsageError(f"--torch {ref!r}: a saved torch model cannot be loaded without unpickling its code; "
                         f"give pkg.module:factory that builds the model (and loads weights with "
                         f"torch.load(..., weights_only=True) if needed)")
    obj = _resolve(ref, "--torch")
    if not isinstance(obj, torch.nn.Module):
        obj = _call_factory(obj, ref, "--torch") if callable(obj) else obj
    if not isinstance(obj, torch.nn.Module):
        raise UsageError(f"--torch {ref!r}: expected a torch.nn.Module, got {type(obj).__name__}")
    return obj


def load_keras(ref: str) -> Any:
    """The ``keras.Model`` in a ``.keras`` file (safe mode) or named by ``pkg.module:factory``."""
    import keras

    path = Path(ref)
    if path.suffix in (".keras", ".h5", ".hdf5") or (":" not in ref and path.exists()):
        if path.suffix != ".keras":
            raise UsageError(f"--keras {ref!r}: only Keras 3 .keras files are loaded (safe mode); save the model "
                             f"with model.save('model.keras') or give pkg.module:factory")
        if not path.is_file():
            raise UsageError(f"--keras {ref!r}: no such file")
        try:
            model = keras.saving.load_model(str(path), safe_mode=True)
        except Exception as exc:  # a corrupt or unsafe file is the user's input
            raise UsageError(f"--keras {ref!r}: cannot load it in safe mode: {type(exc).__name__}: {exc}") from exc
    else:
        model = _resolve(ref, "--keras")
        if not isinstance(model, keras.Model):
            model = _call_factory(model, ref, "--keras") if callable(model) else model
    if not isinstance(model, keras.Model):
        raise UsageError(f"--keras {ref!r}: expected a keras.Model, got {type(model).__name__}")
    return model


def parse_input(text: str) -> InputArg:
    """``NAME:SHAPE[:DTYPE][:LAYOUT]`` -> ``(name, shape, dtype, layout or None)``; SHAPE is ``3x32x32``."""
    parts = text.split(":")
    usage = "expected NAME:SHAPE[:DTYPE][:LAYOUT], e.g. x:3x32x32:float32:NCHW or ids:7:int64"
    if len(parts) < 2 or len(parts) > 4 or not parts[0]:
        raise UsageError(f"--input {text!r}: {usage}")
    name, shape_text, *rest = parts
    try:
        shape = tuple(int(d) for d in shape_text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--input {text!r}: shape {shape_text!r} is not dimensions joined by 'x'; {usage}") from None
    if any(d < 1 for d in shape):
        raise UsageError(f"--input {text!r}: every dimension must be positive (no batch dimension); {usage}")
    dtype, layout = "float32", None
    by_upper = {lay.upper(): lay for lay in LAYOUTS}
    for item in rest:
        if item.upper() in by_upper:
            layout = by_upper[item.upper()]
        elif item.lower() in DTYPES:
            dtype = item.lower()
        else:
            raise UsageError(f"--input {text!r}: {item!r} is neither a dtype ({', '.join(DTYPES)}) nor a layout "
                             f"({', '.join(LAYOUTS)})")
    return name, shape, dtype, layout


def load_npz_inputs(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays by name from an ``.npz`` file (``allow_pickle=False``: object arrays are refused)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--inputs {path}: no such file; give an .npz file (np.savez(path, x=array, ...))")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise UsageError(f"--inputs {path}: a single .npy array, not an .npz archive of named inputs")
            arrays = {name: data[name] for name in data.files}
    except UsageError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"--inputs {path}: cannot read it as an .npz of plain arrays ({exc})") from exc
    if not arrays:
        raise UsageError(f"--inputs {path}: the archive holds no arrays")
    return arrays


def add_user_model_arguments(parser: argparse.ArgumentParser) -> Any:
    """``--torch``, ``--keras``, ``--input`` (repeatable) and ``--inputs`` on ``parser``; returns their group."""
    group = parser.add_argument_group(
        "your own models (instead of a zoo name; importing a module runs its code)")
    group.add_argument("--torch", metavar="MODULE:FACTORY",
                       help="a torch.nn.Module: pkg.module:factory or path/file.py:factory, called with no arguments")
    group.add_argument("--keras", metavar="FILE|MODULE:FACTORY",
                       help="a keras.Model: a .keras file (loaded with safe_mode=True) or pkg.module:factory")
    group.add_argument("--input", dest="input_specs", action="append", default=[], type=_input_type,
                       metavar="NAME:SHAPE[:DTYPE][:LAYOUT]",
                       help="one input, without the batch dimension, in the source's layout (repeat per input): "
                            "x:3x32x32:float32:NCHW, ids:7:int64; LAYOUT is the torch side's "
                            f"({', '.join(LAYOUTS)}; NCHW/NCL: Keras takes it channels-last; the rest: as is), "
                            "inferred from the models if left out")
    group.add_argument("--inputs", dest="inputs_npz", type=Path, metavar="DATA.npz",
                       help="real inputs by name (in the source's layout, batch included) instead of seeded noise")
    return group


def _input_type(text: str) -> InputArg:
    try:
        return parse_input(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
