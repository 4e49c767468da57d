"""PyTorch runner (eager), and the helpers that run a model on a device without moving the caller's."""

from __future__ import annotations

import copy
import inspect
import itertools
from typing import Any

import numpy as np
import torch

from converters.torch_hooks import eval_mode
from parity.errors import DeviceUnavailableError, UsageError
from parity.runners.base import Runner


def resolve_device(device: str) -> str:
    """'cpu' or 'cuda' for ``device`` ('auto' picks CUDA when torch sees it); a missing GPU is an error with its reason."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        why = (f"this torch build ({torch.__version__}) has no CUDA support; install a CUDA build of torch"
               if torch.version.cuda is None else
               f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device: no GPU, no driver, or "
               "CUDA_VISIBLE_DEVICES hides it")
        raise DeviceUnavailableError(f"torch: --device cuda was asked for but torch sees no CUDA device: {why}; "
                                     "use --device cpu or auto")
    return device


def apply_precision(precision: str) -> dict[str, Any]:
    """Set TF32 explicitly (fp32 means TF32 off) and return what was set."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"tf32": tf32, "autocast": {"fp16": "float16", "bf16": "bfloat16"}.get(precision)}


def apply_threads(threads: int | None) -> dict[str, Any]:
    if threads is not None:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # may only be set before the first parallel work
            pass
    return {"intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads()}


def target_device(device: str) -> torch.device:
    """``device`` ('cpu', 'cuda', or any torch device string) with CUDA's index made explicit."""
    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    return target


def placed(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``model`` itself when all its tensors are on ``device``, else a copy whose tensors are created there.

    The caller's model is never moved: the copy's parameters and buffers are made on the
    device directly (no intermediate copy on the model's own device), tied weights stay tied.
    """
    target = target_device(device)
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    if all(t.device == target for t in tensors):
        return model
    memo: dict[int, Any] = {}
    with torch.no_grad():
        for p in model.parameters():
            memo[id(p)] = torch.nn.Parameter(p.detach().to(target, copy=True), requires_grad=p.requires_grad)
        for b in model.buffers():
            memo[id(b)] = b.detach().to(target, copy=True)
    try:
        return copy.deepcopy(model, memo)
    except (TypeError, RuntimeError, copy.Error) as exc:
        raise UsageError(f"to run {type(model).__name__} on {target} without moving your model, parity copies it, and "
                         f"it cannot be copied ({type(exc).__name__}: {exc}); move the model to {target} yourself"
                         ) from exc


class TorchRunner(Runner):
    """Eager PyTorch in eval mode under ``inference_mode``, on the caller's model or a copy on the device."""

    name = "torch"

    def _prepare(self, model: Any) -> None:
        device = resolve_device(self.device)
        self.settings.update(apply_threads(self.threads))
        self.settings.update(apply_precision(self.precision))
        self.model = placed(model, device)
        self.settings["copied"] = self.model is not model
        self.torch_device = target_device(device)
        self.device_type = device
        self.device_used = torch.cuda.get_device_name(self.torch_device) if device == "cuda" else "cpu"
        if not self.input_names:
            self.input_names = [p for p in inspect.signature(model.forward).parameters if p != "self"]
        if not self.output_names:
            self.output_names = ["output"]

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.require(a, requirements=["C", "W"])).to(self.torch_device) for a in inputs]
        autocast = self.settings.get("autocast")
        with eval_mode(self.model), torch.inference_mode():
            if autocast:
                with torch.autocast(self.torch_device.type, dtype=getattr(torch, autocast)):
                    out = self.model(*tensors)
            else:
                out = self.model(*tensors)
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().cpu().numpy() for o in outs]
