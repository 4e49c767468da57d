"""The environment a benchmark ran in: versions, host, device, driver, CUDA/cuDNN, load."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load_average() -> float | None:
    """The host's 1-minute load average: above the thread count, other processes compete for the cores."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def capture_environment(modules: Mapping[str, Any], device: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Versions, host, device, driver, CUDA/cuDNN, threads and precision settings."""
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(), "usable_cores": default_threads(), "versions": _versions(),
        "device": device, "threads": dict(settings.get("threads", {})),
        "precision": dict(settings.get("precision", {})),
    }
    if "ort" in modules:
        env["onnxruntime_providers"] = list(modules["ort"].get_available_providers())
    env.update(_gpu_environment(modules, device))
    return env


def _versions() -> dict[str, str | None]:
    from parity.env import versions

    return {k: v for k, v in versions().items() if v is not None and k != "python"}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_environment(modules: Mapping[str, Any], device: str) -> dict[str, Any]:
    if device != "cuda":
        return {"device_name": _cpu_model()}
    out: dict[str, Any] = {}
    torch = modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out.update({"device_name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version()})
    tf = modules.get("tf")
    if tf is not None:
        info = tf.sysconfig.get_build_info()
        out["tf_build"] = {"cuda": info.get("cuda_version"), "cudnn": info.get("cudnn_version")}
    out.update(_nvidia_smi())
    return out


def _nvidia_smi() -> dict[str, Any]:
    """Driver and clocks from nvidia-smi, when it is on PATH."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    fields = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
    try:
        text = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    return {"nvidia_smi": dict(zip(fields.split(","), [v.strip() for v in text.split(",")], strict=False))}
