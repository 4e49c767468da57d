"""Run a torch model once with hooks on some of its modules, and always take the hooks off.

The one place that registers forward (pre-)hooks, feeds numpy inputs, and cleans up,
used by the layer-order trace, localisation and the training diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

HookFactory = Callable[[str], Callable[..., None]]  # module name -> the hook for that module


def as_torch_inputs(inputs: Sequence[np.ndarray]) -> list[Any]:
    import torch

    # writable and contiguous: torch.from_numpy warns on read-only arrays (np.load of an .npz, memmaps)
    return [torch.from_numpy(np.require(a, requirements=["C", "W"])) for a in inputs]


@contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """``model`` in eval mode for the duration; every module's own training flag is put back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in modes:
            m.training = flag


def attach(modules: Iterable[tuple[str, Any]], make_hook: HookFactory, *, pre: bool = False) -> list[Any]:
    """Register ``make_hook(name)`` on each module (a pre-hook with ``pre``); the handles to remove."""
    return [m.register_forward_pre_hook(make_hook(n)) if pre else m.register_forward_hook(make_hook(n))
            for n, m in modules]


def detach(handles: Iterable[Any]) -> None:
    for h in handles:
        h.remove()


def run_with_hooks(model: Any, inputs: Sequence[np.ndarray], modules: Iterable[tuple[str, Any]],
                   make_hook: HookFactory, *, pre: bool = False) -> Any:
    """One forward pass without gradients, hooks attached for its duration; returns the output."""
    import torch

    handles = attach(modules, make_hook, pre=pre)
    try:
        with torch.no_grad():
            return model(*as_torch_inputs(inputs))
    finally:
        detach(handles)
