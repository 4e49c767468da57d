"""The runner interface: same inputs, same outputs, clear errors, the device actually used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import zoo
from converters.export import export_model
from parity.errors import DeviceUnavailableError, RunnerInputError, UsageError
from parity.runners import make_runner


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[zoo.ModelSpec, object, object, Path]:
    spec = zoo.get("mlp")
    tm, km = spec.build_torch(0), spec.build_keras(0)
    path = export_model(tm, "torch", list(spec.example_inputs(2, 0).values()),
                        tmp_path_factory.mktemp("onnx") / "mlp.onnx", input_names=spec.input_names,
                        output_names=spec.output_names)
    return spec, tm, km, path


@pytest.mark.parametrize("kind", ["torch", "tf", "ort"])
def test_runner_returns_named_outputs_and_reports_device(kind: str, mlp: tuple) -> None:
    spec, tm, km, path = mlp
    model = {"torch": tm, "tf": km, "ort": path}[kind]
    runner = make_runner(kind, device="auto", threads=1, precision="fp32").prepare(
        model, spec.input_names, spec.output_names)
    out = runner.run(spec.example_inputs(3, 1))
    assert list(out) == ["logits"] and out["logits"].shape == (3, 10) and out["logits"].dtype == np.float32
    info = runner.describe()
    assert info["device"] == "cpu" and info["threads"] == 1 and info["precision"] == "fp32"
    assert info["tf32"] is False  # fp32 means TF32 off, set explicitly


def test_torch_and_ort_agree_on_the_same_export(mlp: tuple) -> None:
    spec, tm, _, path = mlp
    inputs = spec.example_inputs(4, 2)
    a = make_runner("torch").prepare(tm, spec.input_names, spec.output_names).run(inputs)["logits"]
    b = make_runner("ort").prepare(path, spec.input_names, spec.output_names).run(inputs)["logits"]
    # one export of a 3-layer MLP: only summation order differs (~1e-7 of |y|~0.5)
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5)


def test_wrong_input_names_are_one_clear_error(mlp: tuple) -> None:
    spec, tm, _, _ = mlp
    runner = make_runner("torch").prepare(tm, spec.input_names, spec.output_names)
    with pytest.raises(RunnerInputError, match=r"missing \['x'\], unexpected \['y'\]"):
        runner.run({"y": np.zeros((1, 32), np.float32)})


def test_bad_options_and_missing_devices() -> None:
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        make_runner("torch", device="tpu")
    with pytest.raises(UsageError, match="threads must be a positive integer"):
        make_runner("ort", threads=0)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
            make_runner("torch", device="cuda").prepare(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown runner 'jax'"):
        make_runner("jax")
