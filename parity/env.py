"""Environment capture, one JSON shape for `parity doctor`, check results and benchmark results.

``capture()`` returns::

    {"versions": {package: version or None, "python": ...},
     "platform": str, "machine": str, "executable": str,
     "cpu": {"model": str, "logical_cores": int, "usable_cores": int},
     "load_average_1min": float or None,
     "gpu": None or {"name", "count", "cuda", "cudnn"[, "nvidia_smi": {...}]},
     "torch": {...}, "tensorflow": {...}, "onnxruntime": {...}}

Each framework section is ``{"available": False, "error": ...}`` when the framework cannot be
imported, and is present only for the frameworks asked for (``frameworks``; all three by
default, none with ``frameworks=False``, so a torch-only benchmark never imports TensorFlow).
Thread counts and TF32 are read from the frameworks as they are at the time of the call.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Collection, Mapping
from typing import Any

PACKAGES = ("torch", "tensorflow", "keras", "onnx", "onnxruntime", "onnxruntime-gpu", "tf2onnx", "onnxscript", "numpy")
FRAMEWORKS = ("torch", "tensorflow", "onnxruntime")  # in import order: torch before TensorFlow, always


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide results (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The host's 1-minute load average: above the core count, other processes compete for the cores."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(env: Mapping[str, Any], device: str) -> str:
    """The name of ``device`` ('cpu' or 'cuda') in a captured environment."""
    gpu = env.get("gpu") or {}
    if device == "cuda" and gpu.get("name"):
        return str(gpu["name"])
    return str((env.get("cpu") or {}).get("model", device))


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


_INFO = {"torch": _torch_info, "tensorflow": _tf_info, "onnxruntime": _ort_info}


def _gpu_info() -> dict[str, Any] | None:
    """The first CUDA device as torch sees it (when torch is already imported), with nvidia-smi's view."""
    torch = sys.modules.get("torch")
    out: dict[str, Any] = {}
    if torch is not None and torch.cuda.is_available():
        out = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
               "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    smi = _nvidia_smi()
    if smi:
        out.setdefault("name", smi.get("name"))
        out["nvidia_smi"] = smi
    return out or None


def _nvidia_smi() -> dict[str, str]:
    """Driver, clocks and power limit from nvidia-smi, when it is on PATH and sees a GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    fields = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
    try:
        text = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    return dict(zip(fields.split(","), [v.strip() for v in text.split(",")], strict=False))


def capture(frameworks: bool | Collection[str] = True) -> dict[str, Any]:
    """Everything a result needs to be reproduced, in the shape described at the top of this module.

    ``frameworks``: True for all of torch, tensorflow and onnxruntime; False for none (no heavy
    imports); or the names of those to describe (always imported torch first).
    """
    wanted = FRAMEWORKS if frameworks is True else () if frameworks is False else tuple(frameworks)
    unknown = set(wanted) - set(FRAMEWORKS)
    if unknown:
        raise ValueError(f"unknown frameworks {sorted(unknown)}; expected some of {', '.join(FRAMEWORKS)}")
    env: dict[str, Any] = {
        "versions": versions(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "executable": sys.executable,
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": default_threads()},
        "load_average_1min": load_average(),
    }
    sections = {name: _INFO[name]() for name in FRAMEWORKS if name in wanted}  # torch first
    env["gpu"] = _gpu_info()
    env.update(sections)
    return env


__all__ = ["FRAMEWORKS", "PACKAGES", "capture", "cpu_model", "default_threads", "device_name", "load_average",
           "versions"]
