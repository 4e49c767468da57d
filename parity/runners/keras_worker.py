"""The worker process of the ``keras-jax`` and ``keras-torch`` runtimes.

Keras picks its backend once per process (``KERAS_BACKEND``, read at ``import keras``), so a
Keras twin runs on JAX or PyTorch in a process of its own: ``python -m parity.runners.keras_worker
REQUEST.json``. The request names the saved twin (a ``.keras`` file, loaded with
``safe_mode=True``), the inputs (``.npz``, in the twin's layout and input order), the device,
threads and precision, and what to do: ``run`` (one forward pass, outputs written as ``.npz``)
and/or ``bench`` (the engine's timing core on each batch size, optionally with the bare-loop
check). The answer is a JSON file; a failure is written there too (type and message), so the
parent can tell a missing backend from a broken model. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from converters.files import write_json_atomic

BACKENDS = ("jax", "torch")


def load_arrays(path: str) -> list[np.ndarray]:
    """Arrays saved as x0, x1, ... (never pickled objects)."""
    with np.load(path, allow_pickle=False) as data:
        return [data[f"x{i}"] for i in range(len(data.files))]


def save_arrays(path: str | Path, arrays: list[np.ndarray]) -> None:
    np.savez(path, **{f"x{i}": a for i, a in enumerate(arrays)})


def setup(backend: str, device: str, threads: int | None, precision: str) -> dict[str, Any]:
    """Apply threads and precision on ``backend``; return what was set and where it runs."""
    import keras

    if keras.backend.backend() != backend:
        raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()!r}, the request says {backend!r}")
    info: dict[str, Any] = {"keras": keras.__version__, "keras_backend": backend}
    if backend == "jax":
        import jax

        dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
        info.update({"jax": jax.__version__, "device": f"{dev.platform}:{dev.id} {dev.device_kind}",
                     "threads": threads if threads else "XLA's default (all cores)",
                     "xla_flags": os.environ.get("XLA_FLAGS", "")})
    else:
        import torch

        from parity.runners.torch_runner import apply_threads

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        info.update({"torch": torch.__version__, **apply_threads(threads),
                     "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"})
    info["device_type"] = device
    return {**info, **set_precision(backend, precision)}


def set_precision(backend: str, precision: str) -> dict[str, Any]:
    """fp32 strict (no TF32 passes on a GPU) or TF32, set explicitly on ``backend``; what was set."""
    if backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest" if precision == "fp32" else "tensorfloat32")
        return {"precision": precision, "matmul_precision": jax.config.jax_default_matmul_precision}
    from parity.runners.torch_runner import apply_precision

    return {"precision": precision, **apply_precision(precision)}


def load_model(path: str) -> Any:
    import keras

    return keras.saving.load_model(path, compile=False, safe_mode=True)


def import_layer_modules(modules: dict[str, str | None]) -> None:
    """Import the modules that define the twin's own layer classes (registered serializable there),
    by name, else from the file the parent process loaded them from."""
    import importlib
    import importlib.util

    for name, file in modules.items():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            if not file:
                raise
            spec = importlib.util.spec_from_file_location(name, file)
            if spec is None or spec.loader is None:
                raise
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)


def dotless_copy(path: str, folder: str) -> tuple[str, int]:
    """A copy of the ``.keras`` file whose layer names have '.' replaced by '_', and how many were renamed.

    Keras's torch backend keeps a layer's variables in a ``torch.nn.ParameterDict`` keyed by
    variable path, and torch refuses keys with '.'; the zoo's layer names are torch's module
    paths (``layer1.0.conv1``). Only names containing '.' are mapped (no other config string
    looks like one), and weights are stored by position in the file, not by name: unchanged.
    """
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    config = json.loads(entries["config.json"])
    names: set[str] = set()
    _collect_names(config, names)
    renames = {n: n.replace(".", "_") for n in names if "." in n}
    if not renames:
        return path, 0
    entries["config.json"] = json.dumps(_rename(config, renames)).encode()
    out = str(Path(folder) / "twin-dotless.keras")
    with zipfile.ZipFile(out, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return out, len(renames)


def _collect_names(node: Any, names: set[str]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("name"), str):
            names.add(node["name"])
        for value in node.values():
            _collect_names(value, names)
    elif isinstance(node, list):
        for value in node:
            _collect_names(value, names)


def _rename(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _rename(v, renames) for k, v in node.items()}
    if isinstance(node, list):
        return [_rename(v, renames) for v in node]
    return renames.get(node, node) if isinstance(node, str) else node


def run_once(model: Any, backend: str, device: str, job: dict[str, Any]) -> dict[str, Any]:
    from parity.runners.keras_steps import prepare, to_numpy

    prepared = prepare(backend, model, load_arrays(job["inputs"]), device)
    outputs = to_numpy(prepared.call())
    save_arrays(job["outputs"], outputs)
    return {"outputs": job["outputs"], "count": len(outputs), "execution": prepared.execution}


def bench(model_path: str, backend: str, device: str, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Every batch size of ``job`` timed with ``parity.bench.timing.measure``; a failure becomes its row."""
    from parity.bench.results import keep_samples
    from parity.bench.timing import measure
    from parity.runners.keras_steps import prepare

    rows = []
    for case in job["cases"]:
        row: dict[str, Any] = {"batch": case["batch"]}
        try:
            # a training step changes the weights: each batch size starts from the saved twin
            model = load_model(model_path)
            train = (np.load(case["labels"], allow_pickle=False), case["loss"]) if job["train"] else None
            prepared = prepare(backend, model, load_arrays(case["inputs"]), device, train)
            memory = _memory(backend, device)
            memory["reset"]()
            m = measure(prepared.call, prepared.sync, budget_s=job["budget_s"], min_runs=job["min_runs"],
                        warmup=job["warmup"], warmup_s=job["warmup_s"])
            row.update({"status": "ok", "first_call_s": m.first_call_s, "warmup_runs": m.warmup_runs,
                        "stats": m.stats.to_dict(), "samples_s": list(keep_samples(m.samples)),
                        "execution": prepared.execution,
                        "peak_memory_bytes": memory["peak"](), "memory_source": memory["source"],
                        "memory_comparable": memory["comparable"]})
            if job.get("fidelity"):
                from parity.bench.fidelity import fidelity

                row["fidelity"] = fidelity(prepared.call, prepared.sync, cuda_events=_events(backend, device))
        except Exception as exc:  # XLA or a backend op raised: this cell fails with the reason, others go on
            row.update({"status": "failed", "reason": f"{type(exc).__name__}: {str(exc).strip()[:300]}"})
        rows.append(row)
    return rows


def _events(backend: str, device: str) -> Any:
    if backend == "torch" and device == "cuda":
        import torch

        return torch.cuda.Event
    return None


def _memory(backend: str, device: str) -> dict[str, Any]:
    if device != "cuda":
        from parity.bench.memory import rss_memory

        m = rss_memory()
        return {"reset": m.reset, "peak": m.peak, "source": "worker " + m.source, "comparable": False}
    if backend == "torch":
        import torch

        return {"reset": torch.cuda.reset_peak_memory_stats, "peak": torch.cuda.max_memory_allocated,
                "source": "torch.cuda.max_memory_allocated (reset per cell)", "comparable": True}
    import jax

    dev = jax.devices("gpu")[0]
    return {"reset": lambda: None, "peak": lambda: int((dev.memory_stats() or {}).get("peak_bytes_in_use", 0)) or None,
            "source": "JAX peak_bytes_in_use (not resettable: the worker's peak so far)", "comparable": False}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m parity.runners.keras_worker REQUEST.json", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text())
    answer: dict[str, Any] = {"ok": False}
    try:
        backend, device = request["backend"], request["device"]
        answer["settings"] = setup(backend, device, request.get("threads"), request.get("precision", "fp32"))
        import_layer_modules(request.get("modules", {}))
        with tempfile.TemporaryDirectory(prefix="parity-keras-worker-") as tmp:
            model_path, renamed = (dotless_copy(request["model"], tmp) if backend == "torch"
                                   else (request["model"], 0))
            if renamed:
                answer["settings"]["renamed_layers"] = (
                    f"{renamed} layer names with '.' loaded with '_' instead (torch.nn.ParameterDict keys "
                    "cannot contain '.'); weights unchanged")
            if "run" in request:
                answer["run"] = run_once(load_model(model_path), backend, device, request["run"])
            if "runs" in request:  # several precisions in one worker: [{precision, inputs, outputs}, ...]
                answer["runs"] = [{**set_precision(backend, job["precision"]),
                                   **run_once(load_model(model_path), backend, device, job)}
                                  for job in request["runs"]]
            if "bench" in request:
                answer["bench"] = bench(model_path, backend, device, request["bench"])
        answer["ok"] = True
    except Exception as exc:  # reported to the parent, which raises the right error type there
        missing = exc.name if isinstance(exc, ImportError) and exc.name else ""
        answer.update({"error": type(exc).__name__, "missing_module": missing.split(".")[0],
                       "message": str(exc).strip()[:2000], "traceback": traceback.format_exc()[-4000:]})
    answer["tensorflow_imported"] = "tensorflow" in sys.modules
    write_json_atomic(Path(request["result"]), answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
