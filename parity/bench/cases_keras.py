"""Keras 3 on its JAX and PyTorch backends: the ``keras-jax`` and ``keras-torch`` cells.

Keras reads its backend once per process, so these cells are timed in a worker process per
backend (``parity.runners.keras_worker``), with the engine's own timing core
(``parity.bench.timing.measure``), the same budget, minimum count, warm-up and seeded inputs
(and labels for a training step) as every other cell. The twin is saved once as ``.keras``; the
worker times every batch size in one go, and the engine turns each row into a ``Cell`` exactly
as it does for an in-process case. ``keras-jax`` is ``jax.jit`` over ``stateless_call`` (XLA);
``keras-torch`` runs the Keras layers' torch ops eagerly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parity.bench.case import Case, CaseHost, Skip, training_recipe
from parity.bench.given import GivenSpec
from parity.bench.memory import Memory
from parity.bench.timing import Measurement, Stats, noop

MODES = ("jax", "torch")


def keras_rows(host: CaseHost, mode: str, batches: Sequence[int], folder: str, *,
               fidelity: bool = False) -> dict[str, Any]:
    """Run the ``keras-<mode>`` worker over ``batches``; its answer (settings and one row per batch)."""
    from parity.runners.keras_backend import call_worker, layer_modules, save_twin, unavailable_reason
    from parity.runners.keras_worker import save_arrays

    if mode not in MODES:
        raise ValueError(f"unknown Keras backend {mode!r}; expected one of {', '.join(MODES)}")
    reason = unavailable_reason(mode)
    if reason:
        raise Skip(reason)
    if host.config.precision not in ("fp32", "tf32"):
        raise Skip(f"precision {host.config.precision}: the keras-{mode} cells time fp32/tf32 models only")
    if host.config.include_copies:
        raise Skip("--include-copies: the worker keeps inputs on its device; copies are not timed there")
    work = Path(folder)
    twin = work / "twin.keras"
    if not twin.exists():
        model = _keras_model(host)
        save_twin(model, work)
    cases = []
    for batch in batches:
        inputs = work / f"inputs-{batch}.npz"
        save_arrays(inputs, host.inputs(batch, "tf"))
        case: dict[str, Any] = {"batch": batch, "inputs": str(inputs)}
        if host.config.train:
            case["loss"], labels = host.targets(batch, "tf")
            np.save(work / f"labels-{batch}.npy", labels)
            case["labels"] = str(work / f"labels-{batch}.npy")
        cases.append(case)
    request = {"backend": mode, "model": str(twin), "modules": layer_modules(twin), "device": host.device,
               "threads": host.threads,
               "precision": host.config.precision,
               "bench": {"cases": cases, "train": host.config.train, "budget_s": host.config.budget_s,
                         "min_runs": host.config.min_runs, "warmup": host.config.warmup,
                         "warmup_s": host.config.warmup_s, "fidelity": fidelity}}
    return call_worker(request, host.threads)


def keras_measurement(host: CaseHost, mode: str, batch: int, folder: str) -> tuple[Case, Measurement]:
    """The ``keras-<mode>`` cell at ``batch`` as a (case, measurement) pair, from one worker run per mode
    (kept in ``host.models``); ``Skip`` when the backend cannot run, RuntimeError when its cell failed."""
    key = f"keras-{mode} rows"
    if key not in host.models:
        try:
            host.models[key] = keras_rows(host, mode, host.config.batches, folder)
        except Skip as exc:
            host.models[key] = exc
    answer = host.models[key]
    if isinstance(answer, Skip):
        raise answer
    row = next(r for r in answer["bench"] if r["batch"] == batch)
    if row["status"] != "ok":
        raise RuntimeError(row["reason"])
    settings = answer["settings"]
    loss = host.targets(batch, "tf")[0] if host.config.train else None
    recipe = training_recipe(loss) if loss else {}
    peak = row.get("peak_memory_bytes")
    memory = Memory(row["memory_source"], peak=lambda: peak, comparable=bool(row.get("memory_comparable")))
    case = Case(f"keras-{mode}", batch, noop, noop, str(settings.get("device", host.device)), memory,
                {**host.common(mode), **recipe, "execution": row["execution"], "worker": "subprocess",
                 **{k: v for k, v in settings.items() if k not in ("device", "device_type", "precision")}})
    samples = tuple(row.get("samples_s", ()))
    m = Measurement(first_call_s=row["first_call_s"], warmup_runs=row["warmup_runs"], stats=Stats(**row["stats"]),
                    loop_s=float(sum(samples)), samples=samples)
    return case, m


def _keras_model(host: CaseHost) -> Any:
    """The Keras twin to save: a user's model as given, or the zoo's twin built with the bench's seed."""
    if isinstance(host.spec, GivenSpec):
        if host.spec.keras_model is None:
            raise Skip("no Keras model given (--keras model.keras|pkg.module:factory)")
        return host.spec.build_keras()
    return host.spec.build_keras(host.config.seed)


__all__ = ["MODES", "keras_measurement", "keras_rows"]
