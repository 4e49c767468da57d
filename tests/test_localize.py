"""Layer-by-layer localisation: every zoo model passes, planted bugs are localised, ORT is left unchanged.

Tolerances are the zoo spec's (written beside each model, relative to the activation's
scale), growing with depth as parity.diagnostics.localize explains; tests assert the tool's verdicts
and, where a number is checked directly, say why that number.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from diagnostics_cache import full_check, zoo_params

import zoo
from converters import layouts
from parity.check import CheckOptions, run_check
from parity.diagnostics.localize import DepthTolerance, depth_tolerance, localize, to_layout

ZOO = ["mlp", "cnn", "resnet18", "resnet50", "mobilenet_v2", "unet", "tcn", "lstm", "gru", "bert", "vit",
       "autoencoder"]


def _quiet(msg: str) -> None:
    pass


def test_the_zoo_list_is_complete() -> None:
    assert sorted(ZOO) == sorted(zoo.names())


# ----------------------------------------------------------------------------- every zoo model


@pytest.mark.parametrize("model", zoo_params(ZOO))
def test_every_zoo_model_passes_layers(model: str) -> None:
    result = full_check(model)
    layers = result.layers
    assert layers is not None and layers.passed, layers.format()
    assert layers.first_divergence is None
    compared = [r for r in layers.rows if r.depth]
    assert len(compared) >= 3  # every twin shares at least its parametric layer names
    for row in compared:
        assert "tf" in {c.a for c in row.comparisons} | {row.reference} or row.torch is None
        # the spec's tolerance at the output, sqrt(d / D) of it at depth d (see parity.diagnostics.localize)
        assert row.atol <= layers.tolerance.atol * row.scale * 1.000001
    for label, info in layers.ort.items():
        assert info["outputs_identical"], f"{label}: extra outputs changed the final outputs ({info})"


@pytest.mark.parametrize("model", ["cnn", "autoencoder"])
def test_layers_from_tf_twin_use_the_port_mapping_for_ort_tf(model: str) -> None:
    """From Keras: tf2onnx folds BatchNorm into convs (those conv rows are skipped, their BatchNorm compared)
    and the autoencoder's decoder.fc orders its features H, W, C in Keras."""
    result = full_check(model, "tf")
    layers = result.layers
    assert layers is not None and layers.passed, layers.format()
    labels = {c.a for r in layers.rows for c in r.comparisons}
    assert {"torch", "ort-tf", "ort-torch"} <= labels
    if model == "cnn":
        # the port says so in structured fields; localisation reads those, never the human note
        # (tf2onnx folds bn1 into conv1 and leaves bn2 as a per-channel scale and shift)
        folded = {x.target: x.folded_batchnorm for x in result.port.layers if x.folded_batchnorm}
        assert folded == {"conv1": "bn1"}
        conv1 = next(r for r in layers.rows if r.layer == "conv1")
        assert conv1.depth == 0 and "folded BatchNorm 'bn1'" in " ".join(conv1.notes)
        assert next(r for r in layers.rows if r.layer == "bn1").depth > 0  # compared where the output is whole
    else:
        fc = next(r for r in layers.rows if r.layer == "decoder.fc")
        assert any("reordered to C, H, W" in n for n in fc.notes)


# ----------------------------------------------------------------------------- planted bugs


def _with_torch(spec: zoo.ModelSpec, edit: object) -> zoo.ModelSpec:
    def build(cfg: object) -> object:
        model = spec.torch_builder(cfg)
        edit(model)  # type: ignore[operator]
        return model

    return dataclasses.replace(spec, torch_builder=build)


def _with_keras(spec: zoo.ModelSpec, edit: object) -> zoo.ModelSpec:
    def build(cfg: object) -> object:
        model = spec.keras_builder(cfg)
        edit(model)  # type: ignore[operator]
        return model

    return dataclasses.replace(spec, keras_builder=build)


def test_gelu_tanh_in_one_bert_block_is_localised_to_the_layer_after_it() -> None:
    from torch import nn

    def tanh_gelu(model: object) -> None:
        model.encoder.layer[1].intermediate.act = nn.GELU(approximate="tanh")  # type: ignore[attr-defined]

    spec = _with_torch(zoo.get("bert"), tanh_gelu)
    result = run_check(CheckOptions(model="bert", layers=True), spec=spec, progress=_quiet)
    assert not result.passed
    layers = result.layers
    assert layers is not None
    # the GELU has no Keras twin: the first compared layer after it is its consumer
    assert layers.first_divergence == "encoder.layer.1.output.dense"
    assert "encoder.layer.1.intermediate.act (GELU)" in layers.suspects
    rows = layers.rows
    first = next(i for i, r in enumerate(rows) if not r.passed)
    assert all(r.passed for r in rows[:first])
    assert rows[first - 1].layer == "encoder.layer.1.intermediate.dense"  # the GELU's input still agrees
    # the tanh form differs by up to ~5e-4 of a unit activation; through one dense layer that is
    # ~1e-4 of the activation scale, 10x over the tolerance at that depth (about 2e-5 x 0.95)
    detail = layers.first_row
    assert detail is not None and detail.relative_error > 5 * detail.atol / detail.scale


def test_gru_gates_r_and_z_swapped_in_the_port_are_localised_without_asking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layouts, "GRU_ONNX_TO_KERAS", (1, 0, 2))  # r, z, h instead of z, r, h
    result = run_check(CheckOptions(model="gru"), progress=_quiet)  # no --layers: a failed check localises
    assert not result.passed
    layers = result.layers
    assert layers is not None and layers.first_divergence == "gru"
    assert next(r for r in layers.rows if r.layer == "embedding").passed
    assert layers.first_row is not None and layers.first_row.relative_error > 0.1  # swapped gates: order 1


def test_layernorm_epsilon_1e3_on_one_side_is_localised_to_that_layernorm() -> None:
    name = "encoder.layers.encoder_layer_0.ln_2"

    def keras_default_eps(model: object) -> None:
        model.get_layer(name).epsilon = 1e-3  # type: ignore[attr-defined]  # Keras's default, left in

    spec = _with_keras(zoo.get("vit"), keras_default_eps)
    result = run_check(CheckOptions(model="vit", layers=True), spec=spec, progress=_quiet)
    assert not result.passed
    layers = result.layers
    assert layers is not None and layers.first_divergence == name
    before = layers.rows[: next(i for i, r in enumerate(layers.rows) if r.layer == name)]
    assert before and all(r.passed for r in before)


# ----------------------------------------------------------------------------- outside the zoo, ORT


def test_a_pair_outside_the_zoo_gets_its_table_through_the_port_mapping(tmp_path: Path) -> None:
    """Unrelated names on the two sides ("0", "2" vs "hidden", "logits"): only the port report pairs them."""
    import keras
    import torch
    from torch import nn

    from converters.port import port_weights

    with torch.random.fork_rng():  # seeded, without touching the session's generator
        torch.manual_seed(0)
        tm = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = keras.Input((6,))
    seeded = keras.initializers.GlorotUniform  # overwritten by the port; seeded all the same
    h = keras.layers.Dense(8, activation="relu", name="hidden", kernel_initializer=seeded(seed=1))(x)
    km = keras.Model(x, keras.layers.Dense(4, name="logits", kernel_initializer=seeded(seed=2))(h))
    batch = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    path = tmp_path / "source.onnx"
    report = port_weights(tm, km, [batch], onnx_path=path)
    tol = DepthTolerance(atol=1e-5, rtol=1e-5, reason="two small dense layers: float32 sums of K <= 8 terms")
    table = localize(tm, km, [batch], [batch], tolerance=tol, port=report, onnx_files={"torch": path})
    # Keras's fused relu is its own row, against the input of torch's "2"
    assert [(r.torch, r.keras) for r in table.rows] == [("0", "hidden"), ("0", "hidden"), ("2", "logits")]
    assert table.passed
    for row in (table.rows[0], table.rows[2]):
        assert {c.a for c in row.comparisons} == {"tf", "ort-torch"}
    assert table.rows[1].layer == "0 <-> hidden +relu" and {c.a for c in table.rows[1].comparisons} == {"tf"}
    assert any("fuses relu" in n for n in table.rows[0].notes)  # compared before the activation, then after it


def test_ort_localisation_does_not_change_what_is_checked(tmp_path: Path) -> None:
    """Every node output of a BatchNorm CNN exposed at once: the final outputs stay bit-identical."""
    import onnx

    from converters.export import export_model
    from parity.diagnostics.localize import capture_ort
    from parity.runners import make_runner
    from zoo.weights import randomize

    spec = zoo.get("cnn")
    model = spec.build_torch(0)
    randomize(model, "torch", 0)
    inputs = spec.inputs_for("torch", spec.example_inputs(2, 0))
    path = tmp_path / "cnn.onnx"
    export_model(model, "torch", list(inputs.values()), path, input_names=spec.input_names,
                 output_names=spec.output_names, lossless=True)
    graph = onnx.load(str(path)).graph
    finals = {o.name for o in graph.output}
    every = {f"t{i}": o for i, n in enumerate(graph.node) for o in n.output[:1] if o and o not in finals}
    got = capture_ort(path, list(inputs.values()), every)
    plain = make_runner("ort", device="cpu").prepare(path, spec.input_names, spec.output_names).run(inputs)
    assert got.info["outputs_identical"]
    for name, value in zip(spec.output_names, got.outputs, strict=True):
        assert np.array_equal(value, plain[name])  # bit for bit, against the check's own ORT runner
    assert got.info["unoptimized_session"]  # some tensors were fused away and read elsewhere, not exposed
    assert len(got.values) == len(every)


# ----------------------------------------------------------------------------- tolerance policy, CLI


def test_tolerance_grows_with_depth_unless_strict() -> None:
    spec_tol = zoo.get("bert").tolerance
    grown = depth_tolerance(spec_tol)
    strict = depth_tolerance(spec_tol, strict=True)
    total = 16
    atols = [grown.at(d, total, 1.0)[0] for d in range(1, total + 1)]
    assert atols == sorted(atols)
    assert atols[-1] == pytest.approx(spec_tol.atol)  # the output's tolerance at the last layer
    assert atols[3] == pytest.approx(spec_tol.atol * 0.5)  # sqrt(4 / 16)
    assert {strict.at(d, total, 1.0)[0] for d in range(1, total + 1)} == {spec_tol.atol}
    given = depth_tolerance(spec_tol, atol=1e-3, rtol=0.0)  # --atol/--rtol: absolute, as given
    assert given.at(1, total, 50.0) == (1e-3, 0.0)


def test_layouts_are_undone_from_shapes() -> None:
    nchw = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    moved = to_layout(nchw.transpose(0, 2, 3, 1), nchw.shape, channels_last_first=True)
    assert moved is not None and np.array_equal(moved[0], nchw)
    seq = nchw[:, :, :, 0]  # (B, L, C) time-major -> batch-first
    moved = to_layout(seq.transpose(1, 0, 2), seq.shape, channels_last_first=False)
    assert moved is not None and np.array_equal(moved[0], seq)


def test_cli_layers_grads_training_plot_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from parity.cli import main

    out, plot = tmp_path / "r.json", tmp_path / "layers.png"
    rc = main(["check", "mlp", "--layers", "--grads", "--train-steps", "2", "--optimizer", "adam",
               "--plot", str(plot), "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    # each report's own format(): the layer table, the gradient table, one line per optimizer
    assert "layer-by-layer (reference torch" in text and "every layer within tolerance" in text
    assert "gradients (mse: torch" in text and "training adam (2 steps" in text
    data = json.loads(out.read_text())
    for key in ("model", "source", "passed", "environment", "comparisons"):  # never renamed
        assert key in data
    assert data["layers"]["passed"] and data["gradients"]["passed"] and data["training"]["passed"]
    assert list(data["training"]["runs"]) == ["adam"] and data["training"]["steps"] == 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_steps_defaults_to_five() -> None:
    from parity.cli import build_parser

    assert build_parser().parse_args(["check", "mlp", "--train-steps"]).train_steps == 5
    assert build_parser().parse_args(["check", "mlp"]).train_steps == 0
