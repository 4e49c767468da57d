"""torch cases: eager and ``torch.compile`` (dynamic=False), forward or a whole SGD training step.

fp16/bf16 run under ``torch.autocast`` (fp16 training with a ``GradScaler``); GPU work is
waited for with ``torch.cuda.synchronize`` and its memory read from the caching allocator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from parity.bench.case import LEARNING_RATE, MOMENTUM, Case, CaseHost, Skip, as_list, training_recipe
from parity.bench.given import GivenSpec
from parity.bench.memory import Memory, rss_memory
from parity.bench.timing import noop

Built = tuple[Callable[[], Any], dict[str, Any]]


def torch_case(host: CaseHost, mode: str, batch: int) -> Case:
    """The ``torch-<mode>`` case at ``batch`` ('eager' or 'compile')."""
    torch = host.module("torch")
    if host.device == "cuda" and not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    dev = torch.device(host.device)
    autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(host.config.precision)
    if mode == "compile":
        torch.compiler.reset()  # each shape compiles from scratch: its first call shows the whole cost
    maker = _train_step if host.config.train else _forward
    call, settings = maker(host, torch, dev, mode, batch, autocast)
    on_gpu = dev.type == "cuda"
    memory = Memory("torch.cuda.max_memory_allocated (reset per cell)", torch.cuda.reset_peak_memory_stats,
                    torch.cuda.max_memory_allocated) if on_gpu else rss_memory()
    sync = torch.cuda.synchronize if on_gpu else noop
    device_name = torch.cuda.get_device_name(dev) if on_gpu else "cpu"
    return Case(f"torch-{mode}", batch, call, sync, device_name, memory,
                {**host.common(mode), **settings, "tf32": bool(torch.backends.cuda.matmul.allow_tf32)})


def _forward(host: CaseHost, torch: Any, dev: Any, mode: str, batch: int, autocast: Any) -> Built:
    if "torch" not in host.models:
        host.models["torch"] = host.spec.build_torch(host.config.seed).eval()
    model = _on_device(host, host.models["torch"], dev)
    if mode == "compile":
        model = torch.compile(model, dynamic=False)
    arrays = host.inputs(batch, "torch")

    def forward(*xs: Any) -> Any:
        with torch.inference_mode(), _autocast(torch, dev.type, autocast):
            return model(*xs)

    if host.config.include_copies:
        def call() -> Any:
            out = forward(*[torch.from_numpy(a).to(dev) for a in arrays])
            return [o.cpu() for o in as_list(out)]
    else:
        tensors = [torch.from_numpy(a).to(dev) for a in arrays]

        def call() -> Any:
            return forward(*tensors)

    return call, {"autocast": str(autocast).split(".")[-1] if autocast else None,
                  "compile": {"dynamic": False} if mode == "compile" else None}


def _train_step(host: CaseHost, torch: Any, dev: Any, mode: str, batch: int, autocast: Any) -> Built:
    import torch.nn.functional as F

    loss_kind, labels = host.targets(batch, "torch")
    loss_of = F.cross_entropy if loss_kind == "cross_entropy" else F.mse_loss
    # a step changes the weights: a fresh twin, or a copy of a user's model (never the given one)
    given = isinstance(host.spec, GivenSpec)
    fresh = host.spec.training_copy("torch") if given else host.spec.build_torch(host.config.seed)
    model = fresh.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    scaler = torch.amp.GradScaler(dev.type) if host.config.precision == "fp16" else None
    arrays = host.inputs(batch, "torch")
    resident = [torch.from_numpy(a).to(dev) for a in arrays]
    y_resident = torch.from_numpy(labels).to(dev)

    def step(*xs: Any) -> Any:
        opt.zero_grad(set_to_none=True)
        with _autocast(torch, dev.type, autocast):
            loss = loss_of(as_list(model(*xs[:-1]))[0].float(), xs[-1])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss

    if mode == "compile":
        step = torch.compile(step, dynamic=False)

    if host.config.include_copies:
        def call() -> Any:
            return step(*[torch.from_numpy(a).to(dev) for a in [*arrays, labels]]).item()
    else:
        def call() -> Any:
            return step(*resident, y_resident)

    return call, {**training_recipe(loss_kind), "loss_scaling": scaler is not None,
                  "compile": "whole step (forward, backward, optimizer)" if mode == "compile" else None}


def _on_device(host: CaseHost, model: Any, dev: Any) -> Any:
    """The model on ``dev``; a user's model is copied there rather than moved (the caller keeps it as it was)."""
    return host.spec.on_device(model, str(dev)) if isinstance(host.spec, GivenSpec) else model.to(dev)


def _autocast(torch: Any, device_type: str, dtype: Any) -> Any:
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


__all__ = ["torch_case"]
