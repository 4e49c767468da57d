"""Lossless round trips, the port API on model objects, the semantic-defaults lint and `parity port`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from layer_pairs import PAIRS

import zoo
from converters.lint import SemanticMismatchError, lint_models
from converters.port import port_weights
from parity.cli import main
from zoo.weights import randomize

ROUND_TRIP = ["dense2d", "dense3d", "conv1d", "conv2d_stride", "depthwise", "conv_transpose2d", "batchnorm2d",
              "layernorm", "groupnorm", "embedding", "lstm", "gru", "attention", "mixed_parameter_free"]


def _params_of(model: object, layer: str) -> dict[str, np.ndarray]:
    """A torch layer's own tensors; 'lstm.l1' selects that layer's weights of a stacked RNN."""
    match = re.fullmatch(r"(.+)\.l(\d+)", layer)
    name, index = (match.group(1), int(match.group(2))) if match else (layer, None)
    module = dict(model.named_modules())[name]  # type: ignore[attr-defined]
    tensors = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
    if isinstance(module, __import__("torch").nn.MultiheadAttention):
        tensors.update({f"out_proj.{k}": v for k, v in module.out_proj.named_parameters()})
    return {k: v.detach().numpy().copy() for k, v in tensors.items()
            if index is None or f"_l{index}" in k}


@pytest.mark.parametrize("kind", ROUND_TRIP)
def test_lossless_round_trip_torch_tf_torch_is_within_one_ulp(kind: str) -> None:
    pair = PAIRS[kind]()
    original = pair.torch_model.eval()
    randomize(original, "torch", 2)
    there = port_weights(original, pair.keras_model, [pair.x], lossless=True)
    back = PAIRS[kind]().torch_model.eval()  # same architecture, other initial weights
    again = port_weights(pair.keras_model, back, [pair.keras_input()], target_inputs=[pair.x])
    exact = [layer.target for layer in again.layers if layer.status == "exact"]
    for layer in there.layers:
        assert layer.status == "exact", f"{kind}: torch -> tf marked {layer.target} {layer.status}"
    for name in exact:
        before, after = _params_of(original, name), _params_of(back, name)
        for key, value in before.items():
            if key == "num_batches_tracked":
                continue
            np.testing.assert_array_max_ulp(after[key], value, maxulp=1)
    if kind == "batchnorm2d":
        assert not again.exact  # tf2onnx folds BatchNorm: that leg is inference-only and says so


def test_port_weights_from_keras_model_object_and_report_fields() -> None:
    spec = zoo.get("cnn")
    source, target = spec.build_keras(0), spec.build_torch(1)
    randomize(source, "tf", 0)
    inputs = spec.example_inputs(2, 0)
    report = port_weights(source, target, list(spec.inputs_for("tf", inputs).values()),
                          target_inputs=list(inputs.values()))
    d = report.to_dict()
    for key in ("layers", "unused_initializers", "warnings", "exact"):
        assert key in d
    assert d["exact"] is False  # tf2onnx folded the BatchNorms
    assert {x["target"] for x in d["layers"]} == {"conv1", "bn1", "conv2", "bn2", "fc"}
    for layer in d["layers"]:
        assert layer["onnx_nodes"] and layer["transform"] and layer["status"] in ("exact", "inference-only")


def test_lint_names_both_layers_for_each_disagreement() -> None:
    import keras

    pair = PAIRS["batchnorm2d"]()
    bn = pair.keras_model.get_layer("bn")
    bn.epsilon, bn.momentum = 1e-3, 0.99  # Keras defaults left in
    findings = lint_models(pair.torch_model, pair.keras_model, [pair.x])
    fields = {(f.field, f.source_layer, f.target_layer) for f in findings}
    assert ("epsilon", "bn", "bn") in fields and ("momentum", "bn", "bn") in fields
    assert all("bn" in f.message for f in findings)
    with pytest.raises(SemanticMismatchError, match="epsilon differs"):
        port_weights(pair.torch_model, pair.keras_model, [pair.x], strict=True)
    assert isinstance(bn, keras.layers.BatchNormalization)


def test_lint_catches_gelu_form_and_gru_reset_after() -> None:
    import keras
    from torch import nn

    from converters.lint import lint_layers, parameter_free_settings
    from converters.targets import target_layers

    gelu_t = nn.Sequential(nn.Linear(4, 4), nn.GELU(approximate="tanh"))
    inp = keras.Input((4,))
    gelu_k = keras.Model(inp, keras.layers.Dense(4, activation="gelu")(inp))
    assert parameter_free_settings(gelu_t)[0][2] == {"approximate": True}
    findings = lint_models(gelu_t, gelu_k)
    assert [f.field for f in findings] == ["gelu.approximate"]

    gru_t = nn.GRU(4, 4, batch_first=True)
    inp = keras.Input((3, 4))
    gru_k = keras.Model(inp, keras.layers.GRU(4, reset_after=False, return_sequences=True)(inp))
    findings = lint_layers(target_layers(gru_t), target_layers(gru_k))
    assert [(f.field, f.source_value, f.target_value) for f in findings] == [("reset_after", True, False)]


def test_check_strict_fails_on_keras_default_epsilon(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    import keras

    from parity.check import CheckOptions, run_check

    spec = zoo.get("cnn")

    def build(cfg: object) -> object:
        model = spec.keras_builder(cfg)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.epsilon = 1e-3
        return model

    planted = dataclasses.replace(spec, keras_builder=build)
    result = run_check(CheckOptions(model="cnn"), spec=planted, progress=lambda m: None)
    assert result.lint and result.lint[0]["source_layer"] == "bn1" and result.lint[0]["field"] == "epsilon"
    with pytest.raises(SemanticMismatchError, match="'bn1'"):
        run_check(CheckOptions(model="cnn", strict=True), spec=planted, progress=lambda m: None)


def test_parity_port_cli_writes_native_weights_onnx_and_report(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "to_tf"
    assert main(["port", "cnn", "--from", "torch", "--to", "tf", "--out", str(out), "--lossless"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["port_report.json", "source.onnx", "target.weights.h5"]
    report = json.loads((out / "port_report.json").read_text())
    assert report["exact"] is True and len(report["layers"]) == 5
    back = tmp_path / "to_torch"
    assert main(["port", "cnn", "--onnx", str(out / "source.onnx"), "--to", "torch", "--out", str(back)]) == 0
    assert (back / "target.safetensors").is_file()
    # the ported torch twin equals the source twin exactly where the report says exact
    from safetensors.numpy import load_file

    ported = load_file(str(back / "target.safetensors"))
    source = zoo.get("cnn").build_torch(0)
    randomize(source, "torch", 0)
    np.testing.assert_array_equal(ported["bn1.running_var"], source.bn1.running_var.numpy())


def test_parity_port_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x00\x01 not onnx")
    assert main(["port", "cnn", "--onnx", str(bogus), "--to", "tf", "--out", str(tmp_path / "o")]) == 2
    assert "bogus.onnx is not a readable ONNX model" in capsys.readouterr().err
    assert not any((tmp_path / "o").iterdir())
    assert main(["port", "cnn", "--out", str(tmp_path / "o")]) == 2
    assert "--from" in capsys.readouterr().err
