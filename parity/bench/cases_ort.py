"""ONNX Runtime cases: the CPU, CUDA and TensorRT execution providers, inference only.

The session runs the torch twin's ONNX export (else the Keras twin's, or a user's own
file), fed by input name, with every graph optimisation on (ORT_ENABLE_ALL) and the bench's
thread budget for intra- and inter-op threads. On GPU with inputs resident, IO binding keeps
inputs and outputs on the device and ``synchronize_outputs`` waits for the work; otherwise
``session.run`` on numpy arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from parity.bench.case import Case, CaseHost, Skip
from parity.bench.memory import Memory, rss_memory
from parity.bench.timing import noop

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def ort_case(host: CaseHost, mode: str, batch: int) -> Case:
    """The ``ort-<mode>`` case at ``batch`` ('cpu', 'cuda' or 'tensorrt')."""
    ort = host.module("ort")
    provider = PROVIDERS[mode]
    _check(host, ort, mode, provider)
    from parity.runners.ort_runner import session_options

    opts = session_options(host.threads, optimize=True)
    opts.inter_op_num_threads = host.threads
    session = ort.InferenceSession(host.onnx_path(), opts, providers=_providers(host, mode))
    used = session.get_providers()[0]
    if used != provider:
        raise Skip(f"onnxruntime fell back to {used} instead of {provider}")
    feeds = host.onnx_inputs(batch)  # by name, in the layout of the framework it was exported from
    names = [i.name for i in session.get_inputs()]
    if sorted(names) != sorted(feeds):
        raise ValueError(f"the ONNX file's inputs {names} are not the model's inputs {list(feeds)}")
    outputs = [o.name for o in session.get_outputs()]
    call, sync, how = _call(host, ort, session, feeds, outputs, on_gpu=mode != "cpu")
    memory = rss_memory() if mode == "cpu" else Memory("not exposed by onnxruntime's Python API")
    return Case(f"ort-{mode}", batch, call, sync, host.device if mode == "cpu" else host.gpu_name(), memory,
                {**host.common(mode), "provider": used, "graph_optimization": "ORT_ENABLE_ALL",
                 "onnx_source": os.path.basename(host.onnx_path()), "call": how,
                 "tf32": host.config.precision == "tf32" and mode != "cpu"})


def _check(host: CaseHost, ort: Any, mode: str, provider: str) -> None:
    """``Skip`` with the reason when this provider cannot run this configuration here."""
    if host.config.train:
        raise Skip("ONNX Runtime is benchmarked for inference only")
    available = ort.get_available_providers()
    if provider not in available:
        raise Skip(f"onnxruntime has no {provider} (available: {', '.join(available)}); "
                   "install onnxruntime-gpu for CUDA/TensorRT")
    if mode == "cpu" and host.device != "cpu":
        raise Skip(f"device is {host.device}; the CPU provider is benchmarked with --device cpu")
    if mode != "cpu" and host.device != "cuda":
        raise Skip(f"device is {host.device}; {provider} needs --device cuda (or auto on a GPU machine)")
    if host.config.precision in ("fp16", "bf16"):
        raise Skip(f"precision {host.config.precision} needs an ONNX model converted to that type")


def _providers(host: CaseHost, mode: str) -> list[Any]:
    from parity.runners.ort_runner import providers_for

    if mode == "cpu":
        return ["CPUExecutionProvider"]
    cuda = providers_for("cuda", host.config.precision)
    if mode == "tensorrt":
        return [("TensorrtExecutionProvider", {"trt_fp16_enable": False}), *cuda]
    return cuda


def _call(host: CaseHost, ort: Any, session: Any, feeds: dict[str, np.ndarray], outputs: list[str],
          on_gpu: bool) -> tuple[Callable[[], Any], Callable[[], Any], str]:
    """CPU, or GPU with copies: ``session.run`` on numpy. GPU resident: IO binding, outputs left on device."""
    if not on_gpu or host.config.include_copies:
        return (lambda: session.run(outputs, feeds)), noop, "session.run (numpy in, numpy out)"
    binding = session.io_binding()
    values = {n: ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0) for n, a in feeds.items()}
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    for name in outputs:
        binding.bind_output(name, "cuda", 0)
    binding.synchronize_inputs()

    def call() -> Any:
        session.run_with_iobinding(binding)
        return values  # keeps the device inputs alive with the closure

    return call, binding.synchronize_outputs, "run_with_iobinding (inputs and outputs on the device)"


__all__ = ["PROVIDERS", "ort_case"]
