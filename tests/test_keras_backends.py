"""The Keras twin on Keras 3's JAX and PyTorch backends (worker processes), in check and bench.

The workers run with TensorFlow made unimportable (scripts/gpu_notf, as on the GPU machine), so
these tests also prove that the keras-jax/keras-torch path never needs TensorFlow.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import zoo
from parity.bench.fidelity import bare_loop
from parity.check.pipeline import CHECK_RUNTIMES, DEFAULT_RUNTIMES, check_runtimes
from parity.errors import UsageError

NO_TF = str(Path(__file__).resolve().parents[1] / "scripts" / "gpu_notf")
KERAS = ("keras-jax", "keras-torch")


@pytest.fixture
def no_tensorflow_in_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers inherit PYTHONPATH: with scripts/gpu_notf first, `import tensorflow` fails in them."""
    monkeypatch.setenv("PYTHONPATH", NO_TF)


# ---------------------------------------------------------------------------- --runtimes


def test_runtime_selection_default_order_and_errors() -> None:
    assert check_runtimes(None, "torch") == DEFAULT_RUNTIMES == ("torch", "tf", "ort-torch", "ort-tf")
    assert check_runtimes(("ort-tf", "keras-jax", "tf"), "tf") == ("tf", "keras-jax", "ort-tf")  # canonical order
    assert set(CHECK_RUNTIMES) == {"torch", "tf", "keras-jax", "keras-torch", "ort-torch", "ort-tf"}
    with pytest.raises(UsageError, match=r"unknown 'jax'.*choose from torch, tf, keras-jax"):
        check_runtimes(("torch", "jax"), "torch")
    with pytest.raises(UsageError, match=r"the source \(torch\) is the reference.*add torch"):
        check_runtimes(("tf", "keras-jax"), "torch")
    with pytest.raises(UsageError, match="at least one runtime besides the source"):
        check_runtimes(("torch",), "torch")


# ---------------------------------------------------------------------------- check


@pytest.fixture(scope="module")
def mlp_check() -> object:
    """`parity check mlp` on every runtime, Keras backends included, with TensorFlow blocked in the workers."""
    from parity.check import CheckOptions, run_check

    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", NO_TF)
    try:
        return run_check(CheckOptions(model="mlp", device="cpu", threads=1, runtimes=CHECK_RUNTIMES[:4]),
                         progress=lambda _m: None)
    finally:
        mp.undo()


@pytest.mark.parametrize("runtime", KERAS)
def test_check_runs_keras_backends_within_tolerance(mlp_check: object, runtime: str) -> None:
    result = mlp_check
    mine = [c for c in result.comparisons if c.a == runtime]
    assert [c.b for c in mine] == ["torch"] and mine[0].output == "logits"
    c = mine[0]
    # the same comparison rule and tolerance as tf's row: spec's 1e-5 of the output scale
    tf_row = next(x for x in result.comparisons if x.a == "tf")
    assert c.atol == tf_row.atol and c.rtol == tf_row.rtol
    # float32 Dense layers on the CPU: a few ulps of the output scale apart, as torch and TF are
    scale = float(np.abs(result.outputs["torch"]["logits"]).max())
    assert c.max_abs <= 1e-6 * scale, (c.max_abs, scale)
    assert c.passed
    info = result.runners[runtime]
    assert info["device_type"] == "cpu" and info["worker"] == "subprocess"
    assert info["keras_backend"] == runtime.split("-")[1]
    assert info["tensorflow_imported_in_worker"] is False
    np.testing.assert_allclose(result.outputs[runtime]["logits"], result.outputs["tf"]["logits"], rtol=0,
                               atol=1e-6 * scale)


def test_check_table_names_every_runtime(mlp_check: object) -> None:
    from parity.check import format_table

    table = format_table(mlp_check)
    assert mlp_check.passed and table.endswith("PASSED")
    rows = [line.split()[0] for line in table.splitlines()[2:5]]
    assert rows == ["tf", "keras-jax", "keras-torch"]
    assert "  keras-torch torch" in table  # the runtime column is wide enough for its longest name


def test_absent_backend_is_skipped_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from parity.errors import DeviceUnavailableError
    from parity.runners import keras_backend, make_runner

    real = importlib.util.find_spec
    monkeypatch.setattr(keras_backend.importlib.util, "find_spec",
                        lambda name, *a: None if name == "jaxlib" else real(name, *a))
    assert keras_backend.unavailable_reason("jax") == (
        "keras-jax: jaxlib not installed (pip install -c constraints.txt '.[jax]')")
    with pytest.raises(DeviceUnavailableError, match="jaxlib not installed"):
        make_runner("keras-jax", device="cpu").prepare("model.keras")


# ---------------------------------------------------------------------------- the worker itself


def test_dotless_copy_renames_only_dotted_layer_names(tmp_path: Path) -> None:
    from parity.runners.keras_backend import save_twin
    from parity.runners.keras_worker import dotless_copy

    model = zoo.get("resnet18").build_keras(0)
    path = save_twin(model, tmp_path)
    copy, renamed = dotless_copy(str(path), str(tmp_path))
    dotted = {layer.name for layer in model.layers if "." in layer.name}
    assert renamed >= len(dotted) > 10
    with zipfile.ZipFile(copy) as z, zipfile.ZipFile(path) as original:
        config = json.loads(z.read("config.json"))
        assert z.read("model.weights.h5") == original.read("model.weights.h5")  # weights untouched
    names = [layer["name"] for layer in config["config"]["layers"]]
    assert not any("." in n for n in names) and "layer1_0_conv1" in names
    assert "relu" in names  # undotted names (which also spell activations) stay as they were


def test_bare_loop_times_with_cuda_events_when_given() -> None:
    class FakeEvent:  # elapsed_time in milliseconds, as torch.cuda.Event reports it
        def __init__(self, enable_timing: bool) -> None:
            assert enable_timing

        def record(self) -> None: ...

        def synchronize(self) -> None: ...

        def elapsed_time(self, end: FakeEvent) -> float:
            return 2.5

    calls: list[int] = []
    times = bare_loop(lambda: calls.append(1), lambda: None, 4, cuda_events=FakeEvent)
    assert times == [0.0025] * 4 and len(calls) == 4


# ---------------------------------------------------------------------------- bench


@pytest.mark.usefixtures("no_tensorflow_in_workers")
def test_bench_keras_cells_have_the_same_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    from parity.bench.engine import run_benchmark
    from parity.bench.results import BenchConfig
    from parity.runners import keras_backend

    config = BenchConfig(batches=(1, 4), device="cpu", threads=1, budget_s=0.01, min_runs=5, warmup=1,
                         runtimes=("torch-eager", "keras-jax", "keras-torch"), probe_peak=False, train=True)
    real = keras_backend.unavailable_reason
    monkeypatch.setattr(keras_backend, "unavailable_reason",
                        lambda b: "keras-torch: planted absence" if b == "torch" else real(b))
    data = run_benchmark(zoo.get("mlp"), config).to_dict()
    cells = {(c["runtime"], c["batch"]): c for c in data["cells"]}
    assert set(cells) == {(r, b) for r in ("torch-eager", "keras-jax", "keras-torch") for b in (1, 4)}
    for b in (1, 4):
        eager, jx = cells["torch-eager", b], cells["keras-jax", b]
        assert jx["status"] == "ok", jx["reason"]
        assert set(jx["stats"]) == set(eager["stats"]) and jx["stats"]["count"] >= 5
        assert len(jx["samples_s"]) == jx["stats"]["count"]
        assert jx["throughput"] == pytest.approx(b / jx["stats"]["median_s"])
        assert jx["flops"] == eager["flops"] == 3 * b * 13568  # a training step: 3x the forward
        assert jx["settings"]["optimizer"] == "SGD" and jx["settings"]["loss"] == "cross_entropy"
        assert "jax.jit" in jx["settings"]["execution"] and jx["settings"]["keras_backend"] == "jax"
        skipped = cells["keras-torch", b]
        assert skipped["status"] == "skipped" and skipped["reason"] == "keras-torch: planted absence"


# ---------------------------------------------------------------------------- the GPU evidence report


def _gpu_report_module() -> object:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_report.py"
    spec = importlib.util.spec_from_file_location("gpu_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_report_tables_speedups_and_what_was_not_measured(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    report = _gpu_report_module()
    monkeypatch.setattr(report, "has", lambda name: name not in ("matplotlib", "jinja2", "tensorflow"))

    def cell(runtime: str, median_ms: float, status: str = "ok") -> dict:
        if status != "ok":
            return {"runtime": runtime, "batch": 8, "status": status, "reason": "onnxruntime has no CUDA provider"}
        return {"runtime": runtime, "batch": 8, "status": "ok", "throughput": 8 / (median_ms / 1e3),
                "first_call_s": 0.5, "stats": {"median_s": median_ms / 1e3, "p90_s": median_ms * 1.1 / 1e3}}

    (tmp_path / "environment.json").write_text(json.dumps(
        {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.9", "tensorflow": report.TF_NOTE}))
    (tmp_path / "bench_resnet50_inference.json").write_text(json.dumps(
        {"model": "resnet50", "preset": "standard", "task": "inference", "config": {"device_resolved": "cuda"},
         "cells": [cell("torch-eager", 4.0), cell("keras-jax", 2.5), cell("ort-cuda", 0, "skipped")]}))
    (tmp_path / "fidelity_resnet50_inference.json").write_text(json.dumps({"rows": [
        {"runtime": "torch-eager", "batch": 32, "status": "ok", "ratio": 1.012, "within_band": True,
         "bare_clock": "CUDA events around the call"}]}))
    (tmp_path / "parity.json").write_text(json.dumps({"reference": "torch on the CPU, float32", "rule": "r", "rows": [
        {"model": "vit", "precision": "fp32", "runtime": "keras-jax", "status": "ok", "device": "cuda:0 H100",
         "output": "logits", "max_abs": 3.1e-6, "max_rel_of_scale": 1.2e-6, "atol": 2e-5, "passed": True}]}))
    text = report.report(tmp_path).read_text()
    assert "Card: NVIDIA H100 80GB HBM3" in text
    assert "**TensorFlow: not measured on this GPU (not installable there)**" in text
    assert "| 8 | keras-jax | 2.5 | 2.75 | 3,200 | 500 | 1.60x |" in text  # 4.0 ms / 2.5 ms
    assert "| 8 | torch-eager | 4 | 4.4 | 2,000 | 500 | 1.00x |" in text
    assert "| 8 | ort-cuda | skipped: onnxruntime has no CUDA provider |" in text
    assert "| vit | fp32 | keras-jax | cuda:0 H100 | logits | 3.10e-06 | 1.2e-06 | 2.00e-05 | ok |" in text
    assert "| torch-eager | 32 | 1.012 | yes | CUDA events around the call |" in text
