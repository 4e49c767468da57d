"""``check_models``: check your own torch/Keras pair through the same pipeline as ``parity check``."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from parity.check.results import CheckOptions, CheckResult
from zoo.spec import Tolerance


def _quiet(message: str) -> None:
    pass


def print_progress(message: str) -> None:
    """A ``progress`` callback that prints each step to stderr, as ``parity check`` does."""
    print(f"[parity] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _torch_state_kept(*models: Any) -> Iterator[None]:
    """Put torch models in eval mode for the check; give back each module's mode and the device after."""
    from parity.check.user_inputs import framework_of

    kept = []
    for model in models:
        if framework_of(model) != "torch":
            continue
        params = list(model.parameters()) + list(model.buffers())
        kept.append((model, {m: m.training for m in model.modules()}, params[0].device if params else None))
        model.eval()  # a check is inference: no BatchNorm statistic may move, no dropout may fire
    try:
        yield
    finally:
        for model, modes, device in kept:
            if device is not None and next(iter([*model.parameters(), *model.buffers()])).device != device:
                model.to(device)
            for module, mode in modes.items():
                module.training = mode


def check_models(
    source: Any,
    target: Any,
    inputs: Any,
    *,
    port: bool = True,
    layers: bool = False,
    grads: bool = False,
    train_steps: int = 0,
    optimizers: Sequence[Any] = ("sgd", "adam"),
    tolerance: Tolerance | float | None = None,
    device: str = "auto",
    input_layouts: Mapping[str, str] | None = None,
    output_layouts: Mapping[str, str] | None = None,
    output_names: Sequence[str] | None = None,
    batch: int = 2,
    seed: int = 0,
    threads: int | None = None,
    precision: str = "fp32",
    exporter: str | None = None,
    strict: bool = False,
    out: str | Path | None = None,
    save_outputs: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> CheckResult:
    """Check that ``target`` computes what ``source`` computes, on torch, TF and ONNX Runtime.

    ``source``/``target``: a ``torch.nn.Module`` and a ``keras.Model``, either way round.
    The source is never modified (its weights, buffers and modes are as before). With
    ``port=True`` (default) the source's weights are ported through ONNX INTO ``target``,
    replacing its weights; ``port=False`` compares the two models as they are.
    ``inputs``: arrays in the source's layout (a dict by input name, a sequence in the
    source's argument order, or one array), or shapes without the batch dimension
    (``{"x": (3, 32, 32)}``, or ``zoo.spec.TensorSpec``s) to draw ``batch`` seeded inputs
    from. Each input's layout for the other framework is inferred from the models' input
    shapes; where that is ambiguous, state it: ``input_layouts={"x": "NCHW"}`` (the torch
    side's layout; NCHW/NCL: Keras takes it channels-last, "same": as is); likewise
    ``output_layouts``.
    ``tolerance``: None is 1e-5 of the output scale (atol) and 1e-5 (rtol), with the
    reason in ``result.tolerance``; a number sets both; or a ``zoo.spec.Tolerance``.
    ``layers``/``grads``/``train_steps``: the diagnostics of ``parity check`` (layer-by-layer
    localisation also runs whenever a comparison fails). ``optimizers``: for ``train_steps``, names
    (each set alike on both sides), or the twins' own two optimizers ``(torch_opt, keras_opt)``:
    each side then trains with its own settings, weight decay and its semantics included, and a
    difference is a lint finding (``converters.lint.lint_optimizers``). ``out`` keeps the ONNX files and
    ported weights; ``save_outputs`` writes every runtime's outputs (source layout) as .npz.
    ``progress``: called with each step (silent by default; ``print_progress`` prints).
    Raises a ``parity.errors.ParityError`` for bad input or a mismatched pair; a parity
    failure is ``result.passed == False`` (``parity.testing.assert_parity`` raises instead).
    """
    options = CheckOptions(
        model="", batch=batch, seed=seed, device=device, threads=threads, precision=precision, exporter=exporter,
        strict=strict, out=Path(out) if out is not None else None, layers=layers, grads=grads,
        train_steps=train_steps, optimizers=tuple(optimizers), port=port, save_outputs=Path(save_outputs) if save_outputs is not None else None)
    return check_pair(source, target, inputs, options, input_layouts=input_layouts, output_layouts=output_layouts,
                      output_names=output_names, tolerance=tolerance, progress=progress)


def check_pair(source: Any, target: Any, inputs: Any, options: CheckOptions, *,
               input_layouts: Mapping[str, str] | None = None, output_layouts: Mapping[str, str] | None = None,
               output_names: Sequence[str] | None = None, tolerance: Tolerance | float | None = None,
               progress: Callable[[str], None] | None = None) -> CheckResult:
    """``check_models`` with every ``CheckOptions`` field available (the command line's route).

    ``options.model``, ``preset`` and ``source`` are taken from the pair; ``lossless`` is
    honoured (default: BatchNorm statistics kept exact).
    """
    from parity.check.pipeline import run_check
    from parity.check.user import user_pair
    from parity.check.user_inputs import framework_of

    framework_of(source)  # a clear error for anything but a torch or Keras model
    framework_of(target)
    with _torch_state_kept(source, target):
        pair = user_pair(source, target, inputs, input_layouts=input_layouts, output_layouts=output_layouts,
                         output_names=output_names, tolerance=tolerance, batch=options.batch, seed=options.seed)
        options = dataclasses.replace(options, model=pair.spec.name, preset=pair.spec.preset,
                                      source=pair.source_framework)
        return run_check(options, user=pair, progress=progress or _quiet)
