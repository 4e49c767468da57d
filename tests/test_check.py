"""End-to-end `parity check`: both twins, both directions, planted bugs caught."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import zoo
from converters import layouts
from parity.check import CheckOptions, run_check
from parity.cli import main

RUNTIMES = {"torch", "tf", "ort-torch", "ort-tf"}


def _quiet(msg: str) -> None:
    pass


@pytest.mark.parametrize("source", ["torch", "tf"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_check_passes_within_1e5_of_output_scale(name: str, source: str) -> None:
    result = run_check(CheckOptions(model=name, source=source), progress=_quiet)
    assert result.passed, [c.explain() for c in result.failures]
    assert len(result.comparisons) == 3
    assert {c.a for c in result.comparisons} | {source} == RUNTIMES
    for c in result.comparisons:
        assert c.b == source
        # the acceptance bar: worst |a-b| at most 1e-5 of the output scale
        assert c.max_abs <= 1e-5 * c.reference_scale
        assert c.cosine > 0.999999


def test_flatten_permutation_left_out_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Dense kernel ported without the NCHW->NHWC row permutation."""
    monkeypatch.setattr(layouts, "reorder_flatten_rows", lambda kernel, *args: kernel)
    result = run_check(CheckOptions(model="cnn", source="torch"), progress=_quiet)
    assert not result.passed
    failing = {c.a for c in result.failures}
    assert failing == {"tf", "ort-tf"}  # the ported Keras twin and its export; torch's own export still agrees


def _keras_bn_eps(spec: zoo.ModelSpec, eps: float) -> zoo.ModelSpec:
    import keras

    def build(cfg: object) -> object:
        model = spec.keras_builder(cfg)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.epsilon = eps  # Keras's default, left in by mistake
        return model

    return dataclasses.replace(spec, keras_builder=build)


def test_keras_batchnorm_epsilon_1e3_is_caught(capsys: pytest.CaptureFixture[str]) -> None:
    spec = _keras_bn_eps(zoo.get("cnn"), 1e-3)
    result = run_check(CheckOptions(model="cnn", source="torch"), spec=spec, progress=_quiet)
    assert not result.passed
    assert {c.a for c in result.failures} == {"tf", "ort-tf"}
    worst = max(result.failures, key=lambda c: c.max_abs)
    assert "over tolerance" in worst.explain()


def test_cli_exit_code_1_names_the_diverging_comparison(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(layouts, "reorder_flatten_rows", lambda kernel, *args: kernel)
    rc = main(["check", "cnn", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "tf vs torch [logits]" in out and "FAILED" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False


def test_json_contract_and_out_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(["check", "mlp", "--from", "tf", "--json", str(tmp_path / "r.json"), "--out", str(out),
               "--batch", "3", "--seed", "5", "--threads", "2"])
    assert rc == 0
    data = json.loads((tmp_path / "r.json").read_text())
    for key in ("model", "source", "passed", "environment", "comparisons"):
        assert key in data
    assert data["model"] == "mlp" and data["source"] == "tf" and data["passed"] is True
    for c in data["comparisons"]:
        for key in ("a", "b", "output", "max_abs", "max_rel", "mean_abs", "atol", "rtol", "passed"):
            assert key in c
    assert data["tolerance"]["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["port_report.json", "target.safetensors", "tf.onnx", "torch.onnx"]
    from safetensors.numpy import load_file

    weights = load_file(str(out / "target.safetensors"))
    assert weights["fc1.weight"].shape == (64, 32)


def test_nonfinite_source_output_is_an_input_error() -> None:
    spec = zoo.get("mlp")

    def broken(cfg: object) -> object:
        import torch

        model = spec.torch_builder(cfg)
        with torch.no_grad():
            model.head.weight[0, 0] = float("nan")
        return model

    from converters.safety import nonfinite_weights_allowed
    from parity.errors import NonFiniteOutputError

    with pytest.raises(NonFiniteOutputError, match="NaN or Inf"), nonfinite_weights_allowed():  # past the port
        run_check(CheckOptions(model="mlp"), spec=dataclasses.replace(spec, torch_builder=broken), progress=_quiet)


def test_batch_sizes_one_and_five() -> None:
    for batch in (1, 5):
        result = run_check(CheckOptions(model="cnn", batch=batch), progress=_quiet)
        assert result.passed
        assert np.all([c.shape_a[0] == batch for c in result.comparisons])
