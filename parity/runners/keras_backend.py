"""The ``keras-jax`` and ``keras-torch`` runners: the Keras twin on Keras 3's JAX or PyTorch backend.

Keras reads ``KERAS_BACKEND`` once per process, so the twin is saved as a ``.keras`` file and run
in a worker subprocess (``parity.runners.keras_worker``) started with that backend; inputs go
there as ``.npz`` and outputs come back the same way, in the twin's own layout, so the caller
compares them exactly as it compares the ``tf`` runner's. A backend that is not installed
raises ``BackendUnavailableError`` with the reason; a check lists such a runtime as skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from parity.errors import DeviceUnavailableError
from parity.runners.base import Runner

KERAS_RUNTIMES = {"keras-jax": "jax", "keras-torch": "torch"}
# A forward pass of a standard-size twin on 2 CPU cores takes seconds; a worker that has not
# answered in this long is stuck (a deadlocked backend), not slow.
WORKER_TIMEOUT_S = 900


class BackendUnavailableError(DeviceUnavailableError):
    """This Keras backend (or the device asked for) cannot run here; the message says why."""


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run in this environment, or None when it can (a cheap check: no import)."""
    needs = {"jax": ("keras", "jax", "jaxlib"), "torch": ("keras", "torch")}[backend]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        extra = " (pip install -c constraints.txt '.[jax]')" if backend == "jax" else ""
        return f"keras-{backend}: {', '.join(missing)} not installed{extra}"
    return None


def worker_env(backend: str, device: str, threads: int | None) -> dict[str, str]:
    """The worker's environment: the backend, the device it may see, its threads, quiet logs."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the parity package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["KERAS_BACKEND"] = backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if backend == "jax":
        env["JAX_PLATFORMS"] = "cuda,cpu" if device == "cuda" else "cpu"
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with the parent's torch
        if threads is not None and device != "cuda":
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if threads == 1 else ""
            env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), flags) if f)
            env["OMP_NUM_THREADS"] = str(threads)
    else:
        env["KERAS_TORCH_DEVICE"] = "cuda" if device == "cuda" else "cpu"
    return env


def resolve_device(device: str) -> str:
    """'auto' is cuda when torch sees a GPU (the machine has one), else cpu."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def call_worker(request: dict[str, Any], threads: int | None, timeout_s: float = WORKER_TIMEOUT_S) -> dict[str, Any]:
    """Run one worker on ``request`` (its ``result`` path is filled in here) and return its answer."""
    backend, device = request["backend"], request["device"]
    with tempfile.TemporaryDirectory(prefix="parity-keras-worker-") as tmp:
        req_path, res_path = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req_path.write_text(json.dumps({**request, "result": str(res_path)}))
        proc = subprocess.run([sys.executable, "-m", "parity.runners.keras_worker", str(req_path)],
                              env=worker_env(backend, device, threads), capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        if not res_path.exists():
            raise RuntimeError(f"keras-{backend} worker exited with code {proc.returncode} and no answer:\n"
                               f"{proc.stderr[-3000:]}")
        answer = json.loads(res_path.read_text())
    if not answer["ok"]:
        if answer.get("missing_module") in ("keras", "jax", "jaxlib", "torch"):  # the backend itself is absent
            raise BackendUnavailableError(f"keras-{backend}: {answer['message']}")
        if device == "cuda" and answer["error"] == "RuntimeError" and any(
                w in answer["message"].lower() for w in ("cuda", "gpu")):  # no GPU for this backend here
            raise BackendUnavailableError(f"keras-{backend}: --device cuda, but {answer['message']}")
        raise RuntimeError(f"keras-{backend} worker failed: {answer['error']}: {answer['message']}\n"
                           f"{answer.get('traceback', '')}")
    return answer


def save_twin(model: Any, folder: str | Path) -> Path:
    """The Keras twin as a ``.keras`` file that any backend loads (architecture + weights), and beside it
    ``twin.modules.json``: the modules defining its own layer classes, which the worker imports first."""
    path = Path(folder) / "twin.keras"
    model.save(str(path))
    modules = {}
    for layer in _all_layers(model):
        module = sys.modules.get(type(layer).__module__)
        if module is not None and not module.__name__.startswith("keras"):
            modules[module.__name__] = getattr(module, "__file__", None)
    (Path(folder) / "twin.modules.json").write_text(json.dumps(modules, sort_keys=True))
    return path


def _all_layers(layer: Any) -> list[Any]:
    """``layer`` and every layer inside it (nested models and Sequentials included)."""
    return [layer, *(inner for child in getattr(layer, "layers", []) for inner in _all_layers(child))]


def layer_modules(twin: str | Path) -> dict[str, str | None]:
    """The modules saved beside ``twin`` by ``save_twin`` (none for a ``.keras`` file given as is)."""
    path = Path(twin).with_name("twin.modules.json")
    return json.loads(path.read_text()) if path.exists() else {}


class KerasBackendRunner(Runner):
    """A Keras twin run by a worker on the JAX or PyTorch backend (``backend``); the model is only read."""

    def __init__(self, *args: Any, backend: str = "jax", **kwargs: Any):
        super().__init__(*args, **kwargs)
        if backend not in ("jax", "torch"):
            raise ValueError(f"unknown Keras backend {backend!r}; expected 'jax' or 'torch'")
        self.backend, self.name = backend, f"keras-{backend}"
        self._tmp = tempfile.TemporaryDirectory(prefix="parity-keras-")

    def _prepare(self, model: Any) -> None:
        """``model``: a Keras model (saved here as ``.keras``) or the path of a ``.keras`` file."""
        reason = unavailable_reason(self.backend)
        if reason:
            raise BackendUnavailableError(reason)
        if self.precision in ("fp16", "bf16"):
            raise BackendUnavailableError(f"{self.name} runner: the parity runner compares fp32/tf32 only")
        self.device_type = resolve_device(self.device)
        self.path = Path(model) if isinstance(model, (str, Path)) else save_twin(model, self._tmp.name)
        if not self.input_names and not isinstance(model, (str, Path)):
            self.input_names = [t.name.split(":")[0] for t in model.inputs]
        if not self.output_names and not isinstance(model, (str, Path)):
            self.output_names = [f"output_{i}" for i in range(len(model.outputs))]
        self.device_used = self.device_type  # until the worker names the device

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        from parity.runners.keras_worker import load_arrays, save_arrays

        folder = Path(self._tmp.name)
        save_arrays(folder / "inputs.npz", inputs)
        answer = call_worker({"backend": self.backend, "model": str(self.path), "device": self.device_type,
                              "modules": layer_modules(self.path),
                              "threads": self.threads, "precision": self.precision,
                              "run": {"inputs": str(folder / "inputs.npz"), "outputs": str(folder / "outputs.npz")}},
                             self.threads)
        settings = answer["settings"]
        self.device_used = settings.get("device", self.device_type)
        self.settings.update({k: v for k, v in settings.items() if k not in ("device", "device_type")})
        self.settings.update({"execution": answer["run"]["execution"], "worker": "subprocess",
                              "tensorflow_imported_in_worker": answer["tensorflow_imported"]})
        return load_arrays(answer["run"]["outputs"])


__all__ = ["KERAS_RUNTIMES", "BackendUnavailableError", "KerasBackendRunner", "call_worker", "unavailable_reason",
           "worker_env"]
