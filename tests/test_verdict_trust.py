"""Verdict trust: what the checker used to miss, crash on, or blame on the wrong layer (one test per item).

The pairs come from tests/planted_bugs.py (built with a bug's name, or '' for the correct
twin); each test here failed before its fix. Tolerances are the pairs' own (the user-pair
default: 1e-5 of the output scale, and 1e-5) unless a test says otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from planted_bugs import build

from parity.diagnostics import plot_series
from parity.diagnostics.grads import gradient_parity
from parity.diagnostics.localize import DepthTolerance, depth_tolerance, localize
from parity.diagnostics.training import default_optimizer, train_parity


def _layers(pair: str, bug: str, tolerance: DepthTolerance | None = None, seed: int = 0, batch: int = 2):  # noqa: ANN202
    tm, km, spec = build(pair, bug, seed)
    inputs = spec.example_inputs(batch, seed)
    t_in, k_in = spec.inputs_for("torch", inputs), spec.inputs_for("tf", inputs)
    tol = tolerance or depth_tolerance(spec.tolerance)
    return localize(tm, km, list(t_in.values()), list(k_in.values()), tolerance=tol)


# ----------------------------------------------------------------------------- 5. one rule for every verdict


def test_table_plot_and_verdict_apply_one_rule() -> None:
    """Absolute atol 1e-7 with rtol 1e-5 (as ``--atol 1e-7``): some rows pass only through rtol. Each row's
    verdict, the |a-b|/tol column, the plotted point and the report's verdict must all say the same."""
    tol = DepthTolerance(atol=1e-7, rtol=1e-5, reason="--atol 1e-7: tighter than float32 rounding of these layers",
                         scale_relative=False, strict=True)
    report = _layers("vision", "", tol)
    compared = [r for r in report.rows if r.depth]
    assert len(compared) >= 6
    for row in compared:
        assert row.passed == (row.ratio <= 1.0) == all(row.comparisons), row.layer
    rescued = [r for r in compared if r.passed and r.max_abs > r.atol]
    assert rescued, "no row passes through rtol alone: the test no longer covers the case"
    text = report.format()
    assert "|a-b| <= atol + rtol*|b|" in text
    for row in rescued:  # the printed numbers justify the "ok": rtol and the ratio are on the line
        line = next(ln for ln in text.splitlines() if f" {row.layer} " in ln)
        assert f"{row.rtol:.2e}" in line and line.rstrip().endswith("ok")
    points = plot_series(report)
    for row in compared:
        for c in row.comparisons:
            y = dict(points[f"{c.a} vs {c.b}"])[row.depth]
            assert (y > 1.0) == (not c.passed), (row.layer, y)
    assert report.passed == all(r.ratio <= 1.0 for r in compared)
    if not report.passed:
        assert report.first_divergence == next(r.layer for r in compared if r.ratio > 1.0)


def test_output_table_states_rtol_and_the_rule() -> None:
    from parity.check.results import format_table
    from parity.compare import compare

    class _Result:  # the fields format_table reads
        model, preset, source, target, ported = "m", "p", "torch", "tf", False
        port = type("P", (), {"layers": []})()
        lint, notes, passed = [], [], True
        comparisons = [compare(np.array([100.0]), np.array([100.0005]), atol=1e-7, rtol=1e-5, a="tf", b="torch")]
        failures: list = []

    text = format_table(_Result())  # type: ignore[arg-type]
    assert " rtol " in text.splitlines()[1] and "1.00e-05" in text.splitlines()[2]
    assert "|a-b| <= atol + rtol*|b|" in text  # 5e-4 > atol, ok: the rule that says why is printed


def test_plot_draws_the_rule(tmp_path: Path) -> None:
    report = _layers("mlp", "sigmoid_for_tanh")
    path = tmp_path / "layers.png"
    from parity.diagnostics import plot_layers

    plot_layers(report, path)
    assert path.stat().st_size > 1000
    worst = max(y for pts in plot_series(report).values() for _, y in pts)
    assert worst > 1.0 and not report.passed
    from parity.diagnostics import layer_ticks

    depths, names = layer_ticks(report)  # the x axis names the layers, not depth numbers
    compared = [r for r in report.rows if r.depth]
    assert names == [r.layer for r in compared] and depths == [r.depth for r in compared]
    assert len(layer_ticks(report, most=2)[1]) <= 2


# ----------------------------------------------------------------------------- 3. fused activations


@pytest.mark.parametrize("bug, layer", [("head_softmax", "head +softmax"), ("fused_elu", "conv2 +elu")])
def test_fused_activation_on_one_side_is_localised_to_its_layer(bug: str, layer: str) -> None:
    report = _layers("vision", bug)
    assert not report.passed
    assert report.first_divergence == layer
    pre = next(r for r in report.rows if r.layer == layer.split(" +")[0])
    assert pre.passed  # before the activation the layer agrees: the activation is the step that differs
    assert any("compared before it" in n for n in pre.notes)
    first = report.first_row
    assert first is not None and first.relative_error > 1e-2  # an activation's difference is order 1, not rounding


def test_fused_activation_of_a_correct_pair_is_compared_not_copied() -> None:
    report = _layers("mlp", "")
    assert report.passed, report.format()
    post = [r for r in report.rows if " +" in r.layer]
    assert [r.layer for r in post] == ["fc1 +gelu", "fc2 +tanh"]
    assert all(r.comparisons and r.depth for r in post)  # compared, against torch's own post-activation values
    assert any("input of torch 'fc2'" in n for n in post[0].notes)


# ----------------------------------------------------------------------------- 1. frozen layers


def _grads(pair: str, bug: str, seed: int = 0, batch: int = 4):  # noqa: ANN202
    tm, km, spec = build(pair, bug, seed)
    return gradient_parity(spec, tm, km, spec.example_inputs(batch, seed), seed=seed)


def test_frozen_batchnorm_on_one_side_is_reported_at_the_batchnorm() -> None:
    grads = _grads("vision", "frozen_bn_keras")
    assert not grads.passed
    assert grads.first_divergence == "bn.gamma"  # not conv1, which diverges only because of it
    row = next(r for r in grads.rows if r.name == "bn.gamma")
    assert row.cause == "frozen in tf only (trainable in torch)"


def test_frozen_batchnorm_on_both_sides_passes() -> None:
    """Keras runs a non-trainable BatchNormalization in inference mode; the frozen torch twin must too."""
    import torch

    tm, km, spec = build("vision", "frozen_bn_keras", 0)
    for p in tm.bn.parameters():
        p.requires_grad_(False)
    grads = gradient_parity(spec, tm, km, spec.example_inputs(4, 0))
    assert grads.passed, grads.format()
    assert any("run in eval mode" in n for n in grads.notes)
    before = tm.bn.running_mean.clone()
    report = train_parity(spec, tm, km, steps=2, batch=4)
    assert report.passed, report.format()
    assert torch.equal(tm.bn.running_mean, before)  # the twins are given back as they were


@pytest.mark.parametrize("bug, side", [("frozen_embedding_keras", "tf"), ("frozen_embedding_torch", "torch")])
def test_frozen_embedding_mismatch_is_a_finding_at_the_embedding(bug: str, side: str) -> None:
    tm, km, spec = build("seq", bug, 0)
    inputs = spec.example_inputs(2, 0)
    grads = gradient_parity(spec, tm, km, inputs)
    assert grads.first_divergence == "emb.table"
    assert next(r for r in grads.rows if r.name == "emb.table").cause.startswith(f"frozen in {side} only")
    report = train_parity(spec, tm, km, steps=2, batch=2, optimizers=[default_optimizer("sgd")])
    assert report.runs["sgd"].first_divergence == "emb.table"


def test_attention_key_bias_frozen_as_noise_leaves_the_packed_q_and_v_biases_training() -> None:
    """torch packs the q, k and v biases into one tensor: freezing the key bias (its gradient is rounding
    noise) must not freeze the other two in torch only."""
    tm, km, spec = build("attn", "", 0)
    report = train_parity(spec, tm, km, steps=3, batch=2)
    assert any("mha.k_bias" in a for a in report.alignments)
    assert report.passed, report.format()


# ----------------------------------------------------------------------------- 2. regularisers


def test_a_regulariser_on_one_side_shows_in_gradients_at_its_layer() -> None:
    grads = _grads("vision", "l2_head_keras")
    assert not grads.passed and grads.first_divergence == "head.kernel"
    assert all(r.passed for r in grads.rows if not r.name.startswith("head."))


def test_the_same_regulariser_declared_on_both_sides_passes() -> None:
    tm, km, spec = build("vision", "l2_head_keras", 0)
    tm.head.regularizers = {"kernel": {"l2": 1e-2}}  # Keras's L2(1e-2), declared for torch
    grads = gradient_parity(spec, tm, km, spec.example_inputs(4, 0))
    assert grads.passed, grads.format()
    loss = grads.loss
    kernel = tm.head.weight.detach().double()
    assert loss["torch"] > 1e-2 * float((kernel**2).sum()) * 0.999  # the penalty is in the loss


def test_lint_compares_regularisers_and_frozen_status_per_matched_layer() -> None:
    from converters.lint import lint_models

    tm, km, spec = build("vision", "l2_head_keras", 0)
    tm.conv1.weight.requires_grad_(False)
    x = list(spec.inputs_for("torch", spec.example_inputs(2, 0)).values())
    found = {(f.source_layer, f.target_layer, f.field): (f.source_value, f.target_value)
             for f in lint_models(tm, km, x)}
    assert found[("head", "head", "kernel_regularizer")] == ("none", {"l2": pytest.approx(1e-2)})
    assert found[("conv1", "conv1", "frozen")] == (["weight"], "none")
    assert len(found) == 2
    tm.head.regularizers = {"kernel": {"l2": 1e-2}}
    tm.conv1.weight.requires_grad_(True)
    assert lint_models(tm, km, x) == []


# ----------------------------------------------------------------------------- 4. correct pairs that were refused


@pytest.mark.parametrize("pair", ["vision", "attn"])
def test_upsample_and_a_constant_causal_mask_port_from_torch(pair: str, tmp_path: Path) -> None:
    """nn.Upsample's Resize scales and a folded ``triu(ones) * finfo.min`` mask are not parameters."""
    import torch

    from converters.port import port_weights

    tm, km, spec = build(pair, "", 0)
    for w in km.weights:  # scramble the target, so that only the port can make it agree
        w.assign(np.zeros(tuple(w.shape), np.float32) + 0.5)
    inputs = spec.example_inputs(2, 0)
    t_in, k_in = spec.inputs_for("torch", inputs), spec.inputs_for("tf", inputs)
    port_weights(tm, km, list(t_in.values()), onnx_path=tmp_path / "s.onnx")
    with torch.no_grad():
        want = tm(*[torch.from_numpy(a) for a in t_in.values()]).numpy()
    got = np.asarray(km(next(iter(k_in.values())), training=False))
    # float32 sums of at most 54 terms per output (3x3x6 conv taps): within 1e-5 of the output scale
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def test_keras_bilinear_upsampling_ports_to_torch(tmp_path: Path) -> None:
    import keras
    import torch
    from torch import nn

    from converters.port import port_weights

    keras.utils.set_random_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tm = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Upsample(scale_factor=2, mode="bilinear"),
                           nn.Conv2d(4, 2, 3, padding=1))
    x = inp = keras.Input((6, 6, 3))
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="1")(keras.layers.Conv2D(4, 3, padding="same",
                                                                                           name="0")(x))
    km = keras.Model(inp, keras.layers.Conv2D(2, 3, padding="same", name="2")(x))
    batch = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    port_weights(km, tm, [batch], onnx_path=tmp_path / "k.onnx")
    with torch.no_grad():
        got = tm.eval()(torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    want = np.asarray(km(batch, training=False))
    # float32 sums of at most 36 terms per output (3x3x4 taps) through bilinear weights <= 1
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    assert math.isfinite(float(np.max(np.abs(want))))


def test_activity_regularisers_count_on_both_sides() -> None:
    import keras

    tm, km, spec = build("mlp", "", 0)
    km.get_layer("head").activity_regularizer = keras.regularizers.L2(1e-1)  # on its output, over the batch
    inputs = spec.example_inputs(4, 0)
    grads = gradient_parity(spec, tm, km, inputs)
    assert not grads.passed and grads.first_divergence == "fc1.kernel"  # upstream of the penalised output
    tm.head.regularizers = {"activity": {"l2": 1e-1}}  # the torch twin declares the same penalty
    assert gradient_parity(spec, tm, km, inputs).passed


def test_a_failed_layer_table_fails_the_check_through_the_api() -> None:
    """check_models with --layers and an absolute tolerance below float32 rounding: the FAIL rows, the
    first divergence and the verdict agree (no PASSED beside a layer over tolerance)."""
    from parity import check_models
    from zoo.spec import Tolerance

    tm, km, _ = build("vision", "", 0)
    tight = Tolerance(atol=1e-9, rtol=0.0, reason="below float32 rounding on purpose", scale_relative=False)
    result = check_models(tm, km, {"x": (3, 8, 8)}, layers=True, tolerance=tight)
    layers = result.layers
    assert layers is not None and not layers.passed
    assert not result.passed
    assert layers.first_divergence == next(r.layer for r in layers.rows if r.depth and r.ratio > 1.0)


def _cross_attention_pair():  # noqa: ANN202
    """nn.MultiheadAttention(E=8, 2 heads) whose query (x / 2) differs from its key and value (x), and its
    Keras twin. torch's export packs the key and value projections into one (8, 16) MatMul."""
    import keras
    import torch
    from torch import nn

    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.mha(x / 2, x, x, need_weights=False)[0])

    keras.utils.set_random_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tm = Cross()
        with torch.no_grad():  # distinct biases, so that a k/v mix-up of the bias halves shows too
            tm.mha.in_proj_bias.copy_(torch.linspace(-1.0, 1.0, 24))
    x = inp = keras.Input((4, 8), name="x")
    a = keras.layers.MultiHeadAttention(2, 4, name="mha")(keras.layers.Rescaling(0.5, name="half")(x), x)
    return tm, keras.Model(inp, keras.layers.Dense(3, name="head")(a))


def test_attention_with_a_query_apart_from_key_and_value_ports_and_passes() -> None:
    """The packed (E, 2E) key-value projection is split into k (first E columns) and v (next E), torch's
    in_proj order; before, the port refused this correct pair (a k kernel of (8, 16), not (8, 8))."""
    from parity import check_models

    tm, km = _cross_attention_pair()
    for w in km.weights:  # scramble the target, so that only the port can make it agree
        w.assign(np.zeros(tuple(w.shape), np.float32) + 0.5)
    result = check_models(tm, km, {"x": (4, 8)}, layers=True)
    assert result.passed and not result.failures, [str(c) for c in result.failures]
    assert result.layers is not None and result.layers.passed
    mha = km.get_layer("mha")
    e, heads, dim = 8, 2, 4
    w, b = tm.mha.in_proj_weight.detach().numpy(), tm.mha.in_proj_bias.detach().numpy()
    for i, dense in enumerate((mha.query_dense, mha.key_dense, mha.value_dense)):  # q; k; v rows of in_proj
        kernel, bias = (np.asarray(v) for v in dense.weights)
        np.testing.assert_array_equal(kernel.reshape(e, e), w[i * e:(i + 1) * e].T)
        np.testing.assert_array_equal(bias.reshape(heads * dim), b[i * e:(i + 1) * e])
