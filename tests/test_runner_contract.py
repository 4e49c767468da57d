"""The runner contract: a runner leaves the caller's model as it was, ONNX Runtime is fed by name,
the diagnostics run on the runner's device, a missing GPU is a usage error, and normal runs are quiet."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo
from parity.errors import RunnerInputError
from parity.runners import make_runner

ROOT = Path(__file__).resolve().parents[1]


def torch_state(model: Any) -> dict[str, Any]:
    """Everything a runner must not change: every parameter's and buffer's bytes, devices, modes."""
    tensors = {**dict(model.named_parameters()), **{f"buffer:{k}": v for k, v in model.named_buffers()}}
    return {
        "hashes": {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
                   for k, v in tensors.items()},
        "devices": {k: str(v.device) for k, v in tensors.items()},
        "requires_grad": {k: v.requires_grad for k, v in model.named_parameters()},
        "training": {name: m.training for name, m in model.named_modules()},
    }


def keras_state(model: Any) -> dict[str, Any]:
    return {"hashes": [hashlib.sha256(np.asarray(w).tobytes()).hexdigest() for w in model.get_weights()],
            "trainable": [layer.trainable for layer in model.layers], "names": [w.path for w in model.weights]}


def test_torch_runner_leaves_the_callers_model_as_it_was() -> None:
    """A model in train mode (one dropout put in eval mode by hand) keeps its modes, bytes and device."""
    spec = zoo.get("cnn")
    model = spec.build_torch(0).train()
    norms = [m for m in model.modules() if "BatchNorm" in type(m).__name__]
    norms[0].eval()  # a per-module mode the runner must put back as it was, not as model.train() would
    before = torch_state(model)
    runner = make_runner("torch", device="cpu").prepare(model, spec.input_names, spec.output_names)
    out = runner.run(spec.example_inputs(2, 0))
    runner.run(spec.example_inputs(3, 1))
    assert torch_state(model) == before
    assert runner.settings["copied"] is False  # on the CPU it runs the caller's model, no deep copy
    eval_out = make_runner("torch").prepare(spec.build_torch(0), spec.input_names, spec.output_names).run(
        spec.example_inputs(2, 0))
    np.testing.assert_array_equal(out["logits"], eval_out["logits"])  # it ran in eval mode all the same


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_export_leaves_the_callers_modes_and_weights_as_they_were(exporter: str, tmp_path: Path) -> None:
    from converters.export import export_model

    spec = zoo.get("cnn")
    model = spec.build_torch(0).train()
    before = torch_state(model)
    inputs = list(spec.inputs_for("torch", spec.example_inputs(2, 0)).values())
    export_model(model, "torch", inputs, tmp_path / "m.onnx", input_names=spec.input_names,
                 output_names=spec.output_names, exporter=exporter, lossless=True)
    assert torch_state(model) == before


def test_placing_on_another_device_copies_and_never_moves_the_callers_model() -> None:
    """``placed`` on the meta device (stands in for a GPU here): a copy there, tied weights still tied."""
    import torch

    from parity.runners.torch_runner import placed

    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5, bias=False), torch.nn.BatchNorm1d(3))
    model[1].weight = model[0].weight  # tied
    before = torch_state(model)
    copy = placed(model, "meta")
    assert copy is not model and {p.device.type for p in [*copy.parameters(), *copy.buffers()]} == {"meta"}
    assert copy[1].weight is copy[0].weight
    assert torch_state(model) == before
    assert placed(model, "cpu") is model


def test_keras_runner_leaves_the_model_as_it_was() -> None:
    spec = zoo.get("cnn")
    model = spec.build_keras(0)
    before = keras_state(model)
    runner = make_runner("tf", device="cpu").prepare(model, spec.input_names, spec.output_names)
    for seed in range(3):
        runner.run(spec.inputs_for("tf", spec.example_inputs(2, seed)))
    assert keras_state(model) == before


def two_input_graph(path: Path) -> Path:
    """y = a - 2 b, with the graph's inputs declared in the order (b, a)."""
    import onnx
    from onnx import TensorProto, helper

    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 3])
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Mul", ["b", "two"], ["b2"]), helper.make_node("Sub", ["a", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "two_inputs", [b, a], [y], initializer=[two])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_ort_is_fed_by_input_name_not_position(tmp_path: Path) -> None:
    path = two_input_graph(tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3), dtype=np.float32), rng.standard_normal((2, 3), dtype=np.float32)
    runner = make_runner("ort", device="cpu").prepare(path, ["a", "b"], ["y"])
    np.testing.assert_allclose(runner.run({"a": a, "b": b})["y"], a - 2 * b, rtol=1e-6)
    from parity.diagnostics.localize import capture_ort

    got = capture_ort(path, [a, b], {"out": "y"}, input_names=["a", "b"])  # layer-by-layer reads it by name too
    np.testing.assert_allclose(got.values["out"], a - 2 * b, rtol=1e-6)


def test_an_input_name_not_in_the_graph_is_one_clear_error(tmp_path: Path) -> None:
    path = two_input_graph(tmp_path / "two.onnx")
    with pytest.raises(RunnerInputError, match=r"graph's inputs are \['b', 'a'\].*not in the graph: \['x'\]"):
        make_runner("ort", device="cpu").prepare(path, ["a", "x"], ["y"])


def test_the_feeding_hook_moves_cpu_inputs_to_the_models_device() -> None:
    """torch_placed on the meta device: CPU tensors fed through converters' hooks reach a model there."""
    import torch

    from converters.torch_hooks import run_with_hooks
    from parity.diagnostics.device import torch_placed

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    before = torch_state(model)
    x = np.ones((2, 4), np.float32)
    with torch_placed(model, "meta") as there:
        out = run_with_hooks(there, [x], [], lambda name: lambda *args: None)
        assert out.device.type == "meta" and there is not model
    assert torch_state(model) == before and not there._forward_pre_hooks  # the hook is gone afterwards


def test_diagnostics_run_on_the_device_each_runner_ran_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A check whose torch runner reports CUDA: every torch diagnostic asks for CUDA, Keras and ORT stay where
    their runners ran (the CPU). No GPU here, so the copy to CUDA is recorded and the model returned as is."""
    import torch

    from parity.check import run_check
    from parity.check.results import CheckOptions
    from parity.diagnostics import diagnose
    from parity.diagnostics.device import Placement
    from parity.runners import ort_runner, tf_runner, torch_runner

    options = CheckOptions(model="mlp", device="cpu", layers=True, grads=True, train_steps=1)
    seen: dict[str, list[Any]] = {"torch": [], "tf": [], "ort": []}
    captured: dict[str, Any] = {}

    def keep(result: Any, opts: Any, **kw: Any) -> None:  # the finished check, before any diagnostic
        captured.update(result=result, **kw)

    monkeypatch.setattr("parity.diagnostics.diagnose", keep)
    run_check(CheckOptions(model="mlp", device="cpu", out=tmp_path), progress=lambda s: None)  # out: keeps the .onnx
    monkeypatch.undo()
    assert captured, "run_check no longer calls parity.diagnostics.diagnose"
    result = captured.pop("result")
    assert Placement.of_check(result.runners) == Placement("cpu", "cpu", "cpu")  # what real runners report
    result.runners["torch"]["device_type"] = "cuda"

    real_tf_name, real_providers = tf_runner.tf_device_name, ort_runner.providers_for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch_runner, "placed", lambda model, device: seen["torch"].append(device) or model)
    monkeypatch.setattr(tf_runner, "tf_device_name", lambda d: seen["tf"].append(d) or real_tf_name(d))
    monkeypatch.setattr(ort_runner, "providers_for", lambda d, p: seen["ort"].append(d) or real_providers(d, p))
    diagnose(result, options, **captured)
    assert seen["torch"] == ["cuda"] * 4  # diagnose's one copy, then layers, gradients and training
    assert seen["tf"] == ["cpu"] * 3 and seen["ort"] == ["cpu"]
    assert result.layers is not None and result.gradients is not None and result.training is not None


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    from parity.cli import main

    assert main(["check", "mlp", "--device", "cuda"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[parity]")]
    assert len(err) == 1 and err[0].startswith("parity check: error: torch: --device cuda"), err
    assert "sees no CUDA device: " in err[0] and "use --device cpu or auto" in err[0]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_check_device_fails_before_any_work_with_the_reason() -> None:
    from parity.errors import DeviceUnavailableError, UsageError
    from parity.runners import check_device

    check_device("cpu")
    check_device("auto")
    with pytest.raises(DeviceUnavailableError, match="torch sees no CUDA device: "):
        check_device("cuda")
    with pytest.raises(DeviceUnavailableError, match="TensorFlow sees no GPU: "):
        check_device("cuda", kinds=("tf",))
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        check_device("tpu")


NOISE_SCRIPT = r"""
import json, logging, sys, warnings
import torch
import tensorflow as tf
import zoo
from converters.port import port_weights
from parity.runners import make_runner

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
tf.get_logger().addHandler(Keep())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    spec = zoo.get("cnn")
    inputs = spec.example_inputs(2, 0)
    port_weights(spec.build_keras(0), spec.build_torch(1), example_inputs=list(spec.inputs_for("tf", inputs).values()))
    for name in ["mlp", "cnn", "tcn"] * 2:  # six runners: TF warns from five tracings of one function on
        s = zoo.get(name)
        runner = make_runner("tf", device="cpu").prepare(s.build_keras(0), s.input_names, s.output_names)
        for seed in range(2):
            runner.run(s.inputs_for("tf", s.example_inputs(2, seed)))
ours = [f"{w.category.__name__} {w.filename}:{w.lineno}: {w.message}" for w in caught
        if any(part in w.filename for part in ("/converters/", "/parity/", "/zoo/"))]
print("RESULT " + json.dumps({"warnings": ours, "retracing": [r for r in records if "retracing" in r]}))
"""


def test_a_tf_port_and_consecutive_tf_runs_are_quiet() -> None:
    """No warning from the project's own code on a tf -> torch port (torch warns about a read-only array
    once per process, hence a fresh one), and no tf.function retracing warning over six TF runners."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", NOISE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    found = json.loads(lines[-1][len("RESULT "):])
    assert found == {"warnings": [], "retracing": []}
