"""PyTorch runner (eager)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from parity.errors import DeviceUnavailableError
from parity.runners.base import Runner


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("torch: --device cuda was asked for but torch sees no CUDA device")
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


class TorchRunner(Runner):
    name = "torch"

    def _prepare(self, model: Any) -> None:
        device = resolve_device(self.device)
        self.settings.update(apply_threads(self.threads))
        self.settings.update(apply_precision(self.precision))
        self.model = model.to(device).eval()
        self.torch_device = torch.device(device)
        self.device_used = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
        if not self.input_names:
            import inspect

            self.input_names = [p for p in inspect.signature(model.forward).parameters if p != "self"]
        if not self.output_names:
            self.output_names = ["output"]

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.torch_device) for a in inputs]
        autocast = self.settings.get("autocast")
        with torch.inference_mode():
            if autocast:
                with torch.autocast(self.torch_device.type, dtype=getattr(torch, autocast)):
                    out = self.model(*tensors)
            else:
                out = self.model(*tensors)
        outs = out if isinstance(out, (tuple, list)) else [out]
        return [o.detach().float().cpu().numpy() for o in outs]
