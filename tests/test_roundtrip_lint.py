"""Lossless round trips, the port API on model objects, the semantic-defaults lint and `parity port`."""

from __future__ import annotations

import json
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


def _state(model: object) -> dict[str, np.ndarray]:
    """Every parameter and buffer of a torch model (not BatchNorm's step counter), by name."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}  # type: ignore[attr-defined]
    return {k: v.detach().numpy().copy() for k, v in tensors.items() if not k.endswith("num_batches_tracked")}


# What the Keras side provably cannot hold separately, so the round trip keeps only a function of it
# (written out here, not taken from the port report's own verdict): a Keras LSTM has one bias per gate,
# so torch's b_ih + b_hh comes back as a sum (in b_ih, b_hh zero). tf2onnx folds BatchNorm (grappler),
# but the return leg ports from the Keras model object, whose statistics restore it (and un-fold the
# conv: W * s / s, measured bit-identical), so conv -> BatchNorm comes back within one ulp too.


@pytest.mark.parametrize("kind", ROUND_TRIP)
def test_lossless_round_trip_torch_tf_torch_is_within_one_ulp(kind: str) -> None:
    pair = PAIRS[kind](seed=0)
    original = pair.torch_model.eval()
    randomize(original, "torch", 2)
    there = port_weights(original, pair.keras_model, [pair.x], lossless=True)
    for layer in there.layers:
        assert layer.exact, f"{kind}: torch -> tf marked {layer.target} {layer.status}"
    back = PAIRS[kind](seed=1).torch_model.eval()  # same architecture, other values everywhere
    randomize(back, "torch", 9)
    port_weights(pair.keras_model, back, [pair.keras_input()], target_inputs=[pair.x])
    before, after = _state(original), _state(back)
    assert sorted(before) == sorted(after)
    compared = set(before)
    if kind == "lstm":
        for key in [k for k in before if k.startswith("lstm.bias_ih")]:
            hh = key.replace("bias_ih", "bias_hh")
            np.testing.assert_array_max_ulp(after[key] + after[hh], before[key] + before[hh], maxulp=1)
            compared -= {key, hh}
    for key in sorted(compared):  # every other parameter and statistic: the same float32 values
        np.testing.assert_array_max_ulp(after[key], before[key], maxulp=1)


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
    assert d["exact"] is True  # tf2onnx folded the BatchNorms; restored from the Keras model object itself
    assert {x["target"] for x in d["layers"]} == {"conv1", "bn1", "conv2", "bn2", "fc"}
    for layer in d["layers"]:
        assert layer["onnx_nodes"] and layer["transform"] and layer["status"] in ("exact", "inference-only")


def test_lint_names_both_layers_for_each_disagreement() -> None:
    pair = PAIRS["batchnorm2d"](seed=0)
    bn = pair.keras_model.get_layer("bn")
    bn.epsilon, bn.momentum = 1e-3, 0.99  # Keras defaults left in
    findings = lint_models(pair.torch_model, pair.keras_model, [pair.x])
    fields = {(f.field, f.source_layer, f.target_layer) for f in findings}
    assert ("epsilon", "bn", "bn") in fields and ("momentum", "bn", "bn") in fields
    assert all("bn" in f.message for f in findings)
    untouched = [w.numpy().copy() for w in pair.keras_model.weights]
    with pytest.raises(SemanticMismatchError, match="epsilon differs"):
        port_weights(pair.torch_model, pair.keras_model, [pair.x], strict=True)
    # strict refuses before anything is exported or written: the target keeps its own weights
    for before, after in zip(untouched, pair.keras_model.weights, strict=True):
        np.testing.assert_array_equal(after.numpy(), before)
    report = port_weights(pair.torch_model, pair.keras_model, [pair.x])  # not strict: ported, and reported
    assert [(f.field, f.source_layer, f.target_layer) for f in report.lint] == [
        (f.field, f.source_layer, f.target_layer) for f in findings]
    assert {d["field"] for d in report.to_dict()["lint"]} == {"epsilon", "momentum"}


def test_lint_catches_gelu_form_and_gru_reset_after() -> None:
    import keras
    import torch
    from torch import nn

    from converters.lint import lint_layers, parameter_free_settings
    from converters.targets import target_layers

    init = keras.initializers
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the session's generator
        torch.manual_seed(0)
        gelu_t = nn.Sequential(nn.Linear(4, 4), nn.GELU(approximate="tanh"))
        gru_t = nn.GRU(4, 4, batch_first=True)
    inp = keras.Input((4,))
    gelu_k = keras.Model(inp, keras.layers.Dense(4, activation="gelu", kernel_initializer=init.GlorotUniform(0))(inp))
    assert parameter_free_settings(gelu_t)[0][2] == {"approximate": True}
    findings = lint_models(gelu_t, gelu_k)
    assert [f.field for f in findings] == ["gelu.approximate"]

    inp = keras.Input((3, 4))
    gru = keras.layers.GRU(4, reset_after=False, return_sequences=True, kernel_initializer=init.GlorotUniform(1),
                           recurrent_initializer=init.Orthogonal(seed=2))
    gru_k = keras.Model(inp, gru(inp))
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
    assert result.lint and result.lint[0].source_layer == "bn1" and result.lint[0].field == "epsilon"
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
    assert not (tmp_path / "o").exists()  # the failed run removed the folder it created
    assert main(["port", "cnn", "--out", str(tmp_path / "o")]) == 2
    assert "--from" in capsys.readouterr().err
