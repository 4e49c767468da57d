"""A user's own models for `parity port`, `parity bench` and `parity flops`: from the options
(``--torch``, ``--keras``, ``--input``, ``--onnx``; parsed in ``parity.cli.user_models``) to
what the commands run: a described pair (``parity.check.user.user_pair``), a torch target's
inputs for a port from an ONNX file, or a ``GivenSpec`` for the bench.

The models are used as given: loaded once, put in eval mode (a torch model in training
mode would update its BatchNorm statistics on every forward pass), never rebuilt or
re-initialised. Importing ``pkg.module`` runs that module's code, as any import does.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parity.errors import UsageError

CHANNELS_FIRST = {2: "NCL", 3: "NCHW"}  # rank without the batch -> the channels-first layout of that rank

_EPILOG = """your own models:
  parity {cmd} --torch pkg.module:factory --keras model.keras --input x:3x32x32:float32:NCHW{extra}
  parity {cmd} --onnx model.onnx --input ids:128{extra}
  --input shapes are without the batch, in the torch model's layout when --torch is given (the
  Keras model's otherwise). An ONNX file's inputs are its declared ones; --input fixes their
  dynamic dimensions (ids:128 for ids [batch, seq]).{what}
  A model is used as given: never re-initialised, never changed. Importing pkg.module runs its
  code, as any import does.
"""
_WHAT = {
    "bench": "\n  Runtimes without a model (no --torch: torch-*, no --keras: tf-*) are listed as skipped, with\n"
             "  the reason; a training step (--train) changes a copy of the model.",
    "flops": "\n  A model is counted from its ONNX export (the torch model's when both are given).",
}


def own_models_epilog(command: str, extra: str) -> str:
    """The ``--help`` epilog of `parity bench` / `parity flops` on a user's own models."""
    return _EPILOG.format(cmd=command, extra=extra, what=_WHAT[command])


def which_models(args: argparse.Namespace) -> str:
    """'zoo', 'own' (--torch/--keras, maybe with --onnx) or 'onnx' (a file only); one clear error otherwise."""
    own = given_any(args)
    onnx = args.onnx is not None or (args.model is not None and str(args.model).endswith(".onnx"))
    if args.model is not None and (own or args.onnx is not None):
        raise UsageError(f"got the model name {args.model!r} and --torch/--keras/--onnx; give one of them")
    if args.model is None and not own and args.onnx is None:
        raise UsageError("give a zoo model name (see `parity list`), your own models (--torch pkg.module:factory "
                         "and/or --keras FILE|pkg.module:factory, with --input NAME:SHAPE), or --onnx FILE")
    if args.model is not None and not onnx and args.input_specs:
        raise UsageError(f"--input describes your own models; the zoo model {args.model!r} has its own inputs")
    return "own" if own else "onnx" if onnx else "zoo"


def given_any(args: argparse.Namespace) -> bool:
    """Whether the command was given a user's model (``--torch``/``--keras``) rather than a zoo name."""
    return bool(getattr(args, "torch", None) or getattr(args, "keras", None))


def load_models(args: argparse.Namespace) -> tuple[Any, Any]:
    """(torch model or None, Keras model or None); a torch model is put in eval mode."""
    from parity.cli.user_models import load_keras, load_torch

    torch_model = load_torch(args.torch).eval() if args.torch else None
    keras_model = load_keras(args.keras) if args.keras else None
    return torch_model, keras_model


def stated_inputs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """``--input`` as TensorSpecs by name (shapes in the source's layout) and the layouts stated."""
    from zoo.spec import TensorSpec

    specs: dict[str, Any] = {}
    layouts: dict[str, str] = {}
    for name, shape, dtype, layout in args.input_specs:
        if name in specs:
            raise UsageError(f"--input {name}: given twice; give each input once")
        specs[name] = TensorSpec(name, tuple(shape), dtype)
        if layout:
            layouts[name] = layout
    return specs, layouts


def pair(args: argparse.Namespace, source: Any, target: Any, seed: int, batch: int = 2) -> Any:
    """``parity.check.user.user_pair`` for the loaded models, with ``--input`` or ``--inputs`` data."""
    from parity.check.user import user_pair
    from parity.cli.user_models import load_npz_inputs

    specs, layouts = stated_inputs(args)
    if args.inputs_npz is not None:
        arrays = load_npz_inputs(args.inputs_npz)
        unknown = sorted(set(specs) - set(arrays))
        if unknown:
            raise UsageError(f"--input {unknown[0]}: {args.inputs_npz} has no array of that name "
                             f"(it has {', '.join(arrays)})")
        inputs: Any = arrays
    elif specs:
        inputs = specs
    else:
        raise UsageError("describe the models' inputs: --input NAME:SHAPE[:DTYPE][:LAYOUT] per input (shape without "
                         "the batch, in the source's layout, e.g. --input x:3x32x32:float32:NCHW), or --inputs DATA.npz")
    return user_pair(source, target, inputs, input_layouts=layouts or None, batch=batch, seed=seed)


def torch_target_inputs(onnx_file: Path, torch_model: Any, args: argparse.Namespace, seed: int) -> list[np.ndarray]:
    """Seeded inputs (batch 2) for a torch target of a port from ``onnx_file``, in the torch layout.

    Shapes are the file's declared ones (``--input`` fixes dynamic dimensions); a stated LAYOUT
    says how the torch model sees them, else the layout the torch model accepts is found by
    trying the file's layout as is, then channels-first (one forward pass of batch 1 each).
    """
    from parity.bench.given import onnx_input_specs
    from parity.check.user import probe_torch

    stated = {name: (tuple(shape), layout) for name, shape, _dtype, layout in args.input_specs}
    specs, _ = onnx_input_specs(onnx_file, {n: s for n, (s, _) in stated.items()})
    rng = np.random.default_rng(seed)
    declared = [_draw(s, 2, rng) for s in specs]

    def laid_out(channels_first: bool) -> list[np.ndarray]:
        out = []
        for spec, array in zip(specs, declared, strict=True):
            layout = stated.get(spec.name, ((), None))[1]
            cf = layout in ("NCHW", "NCL") if layout else (channels_first and np.dtype(spec.dtype).kind == "f"
                                                           and len(spec.shape) in CHANNELS_FIRST)
            out.append(np.ascontiguousarray(np.moveaxis(array, -1, 1)) if cf else array)
        return out

    tries = {"as declared": laid_out(False), "channels-first": laid_out(True)}
    if all(np.array_equal(a, b) for a, b in zip(*tries.values(), strict=True)):
        tries.pop("channels-first")  # nothing to transpose: one candidate
    works = {how: arrays for how, arrays in tries.items() if probe_torch(torch_model, [a[:1] for a in arrays])[0]}
    if len(works) == 1:
        return next(iter(works.values()))
    shapes = ", ".join(f"{s.name} {s.shape}" for s in specs)
    if not works:
        error = probe_torch(torch_model, [a[:1] for a in tries["as declared"]])[1]
        raise UsageError(f"the torch model runs on {onnx_file.name}'s inputs ({shapes}) neither as declared nor "
                         f"channels-first ({error.splitlines()[0][:200]}); give --input NAME:SHAPE:DTYPE:LAYOUT")
    raise UsageError(f"the torch model accepts {onnx_file.name}'s inputs ({shapes}) both as declared and channels-first; "
                     "state the layout: --input NAME:SHAPE:DTYPE:NCHW (channels-first in torch) or :NC (as is)")


def _draw(spec: Any, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = (batch, *spec.shape)
    if np.dtype(spec.dtype).kind in "iub":
        return rng.integers(int(spec.low), int(spec.high), size=shape).astype(spec.dtype)
    return rng.uniform(spec.low, spec.high, size=shape).astype(spec.dtype)


def given_spec_from_args(args: argparse.Namespace, batches: Sequence[int]) -> Any:
    """The ``GivenSpec`` to bench or count: the models given, or an ONNX file, with inputs from ``--input``."""
    from parity.bench.given import given_spec, input_spec, onnx_input_specs

    if getattr(args, "inputs_npz", None) is not None:
        raise UsageError("--inputs is for `parity check` and `parity port`; the bench times seeded inputs of the "
                         "--input shapes")
    onnx_file = _onnx_file(args)
    torch_model, keras_model = load_models(args)
    names = [r for r in (args.torch, args.keras) if r] + ([str(onnx_file)] if onnx_file else [])
    fixed_batch, onnx_layout, order = None, "torch", None
    if torch_model is None and keras_model is None:
        stated = {n: tuple(s) for n, s, _d, _l in args.input_specs}
        specs, fixed_batch = onnx_input_specs(onnx_file, stated)  # type: ignore[arg-type]
    elif not args.input_specs:
        raise UsageError("describe the model's inputs: --input NAME:SHAPE[:DTYPE][:LAYOUT] per input (shape without "
                         "the batch, e.g. --input x:3x32x32), in the torch model's layout when --torch is given")
    elif torch_model is not None and keras_model is not None:
        described = pair(args, torch_model, keras_model, seed=getattr(args, "seed", 0))
        specs = tuple(described.spec.inputs)  # torch-layout shapes, each with its Keras layout
        order = tuple(described.spec.keras_order)
    else:  # one model: the shapes are in its own layout, nothing to map
        specs = tuple(input_spec(n, tuple(s), d, "NC") for n, s, d, _l in args.input_specs)
    if onnx_file is not None and (torch_model is not None or keras_model is not None):
        onnx_layout, fixed_batch = _onnx_layout(onnx_file, specs)
    if fixed_batch is not None and any(b != fixed_batch for b in batches):
        raise UsageError(f"{onnx_file} has a fixed batch size of {fixed_batch}; use --batch {fixed_batch}")
    return given_spec(" + ".join(names), specs, torch_model=torch_model, keras_model=keras_model, onnx_file=onnx_file,
                      fixed_batch=fixed_batch, onnx_layout=onnx_layout, keras_order=order)


def _onnx_file(args: argparse.Namespace) -> Path | None:
    path = getattr(args, "onnx", None)
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--onnx {path}: no such file; give an .onnx file")
    return path


def _onnx_layout(path: Path, specs: Sequence[Any]) -> tuple[str, int | None]:
    """Whose layout ('torch' or 'tf') the file's declared inputs take, and its fixed batch size."""
    from parity.bench.given import onnx_input_specs

    try:
        return "torch", onnx_input_specs(path, {s.name: s.framework_shape("torch") for s in specs})[1]
    except UsageError as as_torch:
        try:
            return "tf", onnx_input_specs(path, {s.name: s.framework_shape("tf") for s in specs})[1]
        except UsageError:
            raise UsageError(f"--onnx {path}: its inputs do not fit the --input shapes in either model's layout "
                             f"({as_torch})") from None


def count_onnx_file(path: Path, args: argparse.Namespace, batches: Sequence[int]) -> list[Any]:
    """FLOPs of an ONNX file; ``--input`` fixes its dynamic dimensions, a static batch must be the one asked."""
    from parity.bench.flops import count_flops
    from parity.bench.given import onnx_input_specs

    if not path.is_file():
        raise UsageError(f"ONNX file not found: {path}")
    specs, fixed_batch = onnx_input_specs(path, {n: tuple(s) for n, s, _d, _l in args.input_specs})
    if fixed_batch is not None and any(b != fixed_batch for b in batches):
        raise UsageError(f"{path} has a fixed batch size of {fixed_batch}; use --batch {fixed_batch}")
    return [count_flops(path, b, {s.name: s.shape for s in specs}) for b in batches]
