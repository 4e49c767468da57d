"""Environment capture: versions, devices, providers, threads, TF32 and oneDNN state."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys
from typing import Any

PACKAGES = ("torch", "tensorflow", "keras", "onnx", "onnxruntime", "onnxruntime-gpu", "tf2onnx", "onnxscript", "numpy")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:
        return {"available": False, "error": str(exc)}
    cuda = torch.cuda.is_available()
    return {
        "available": True,
        "devices": ["cpu"] + [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn_conv": torch.backends.cudnn.allow_tf32},
    }


def _tf_info() -> dict[str, Any]:
    try:
        import tensorflow as tf
    except ImportError as exc:
        return {"available": False, "error": str(exc)}
    build = tf.sysconfig.get_build_info()
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    return {
        "available": True,
        "devices": [d.name for d in tf.config.list_physical_devices()],
        "cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),
        # oneDNN is on by default on x86 unless TF_ENABLE_ONEDNN_OPTS=0
        "onednn": onednn != "0",
        "onednn_env": onednn,
    }


def _ort_info() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"available": False, "error": str(exc)}
    return {"available": True, "providers": ort.get_available_providers(), "device": ort.get_device()}


def capture(frameworks: bool = True) -> dict[str, Any]:
    """Everything a result needs to be reproduced; ``frameworks=False`` skips the heavy imports."""
    env: dict[str, Any] = {
        "versions": versions(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "executable": sys.executable,
    }
    if frameworks:
        env["torch"] = _torch_info()  # torch first: importing TF first can crash torch
        env["tensorflow"] = _tf_info()
        env["onnxruntime"] = _ort_info()
    return env
