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


def auto_device(kind: str) -> str:
    """What ``device="auto"`` must report for runner ``kind``, from what its framework sees:
    the GPU when it sees one (torch and TF report the GPU's name, ORT "cuda"), else "cpu"."""
    if kind == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    if kind == "tf":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU:0") if gpus else "cpu"
    import onnxruntime as ort

    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


@pytest.mark.parametrize("kind", ["torch", "tf", "ort"])
def test_runner_returns_named_outputs_and_reports_device(kind: str, mlp: tuple) -> None:
    spec, tm, km, path = mlp
    model = {"torch": tm, "tf": km, "ort": path}[kind]
    runner = make_runner(kind, device="auto", threads=1, precision="fp32").prepare(
        model, spec.input_names, spec.output_names)
    out = runner.run(spec.example_inputs(3, 1))
    assert list(out) == ["logits"] and out["logits"].shape == (3, 10) and out["logits"].dtype == np.float32
    info = runner.describe()
    assert info["device"] == auto_device(kind) and info["threads"] == 1 and info["precision"] == "fp32"
    assert info["device_type"] == ("cpu" if info["device"] == "cpu" else "cuda")  # where diagnostics follow it
    assert info["tf32"] is False  # fp32 means TF32 off, set explicitly
    if kind == "torch":  # the model really is where the runner says
        import torch

        assert next(runner.model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "ort":
        assert info["provider"] == ("CUDAExecutionProvider" if info["device"] == "cuda" else "CPUExecutionProvider")


def test_auto_picks_the_gpu_whenever_the_framework_reports_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """device="auto" on a machine each framework reports a GPU on, and on one without (no GPU needed)."""
    import onnxruntime as ort
    import tensorflow as tf
    import torch

    from parity.runners import ort_runner, tf_runner, torch_runner

    for gpu in (True, False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None, gpu=gpu: ["GPU:0"] if gpu and kind == "GPU" else [])
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        monkeypatch.setattr(ort, "get_available_providers", lambda providers=providers: providers)
        want = "cuda" if gpu else "cpu"
        assert torch_runner.resolve_device("auto") == want
        assert tf_runner.resolve_device("auto") == want
        chosen = ort_runner.providers_for("auto", "fp32")[0]
        assert (chosen[0] if isinstance(chosen, tuple) else chosen) == ("CUDAExecutionProvider" if gpu else
                                                                         "CPUExecutionProvider")
        if gpu:  # fp32 keeps TF32 off on the GPU too
            assert chosen == ("CUDAExecutionProvider", {"use_tf32": "0"})


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
            make_runner("torch", device="cuda").prepare(zoo.get("mlp").build_torch(0))
    with pytest.raises(ValueError, match="unknown runner 'jax'"):
        make_runner("jax")
