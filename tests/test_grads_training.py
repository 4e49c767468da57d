"""Gradient parity and training-step parity: every zoo model passes; planted bugs show where they should.

Tolerances come from each zoo spec (scale-relative, written beside the model) and grow as
parity.diagnostics.grads and parity.diagnostics.training explain (sqrt(2) for the backward pass; linearly with the
steps; Adam's per-element allowance); tests assert the tools' verdicts and the reasons.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from diagnostics_cache import TRAIN_STEPS, full_check, zoo_params

import zoo
from parity.diagnostics.grads import gradient_parity
from parity.diagnostics.optimizers import AdamAllowance
from parity.diagnostics.training import OptimizerConfig, train_parity, unbiased_correction

ZOO = ["mlp", "cnn", "resnet18", "resnet50", "mobilenet_v2", "unet", "tcn", "lstm", "gru", "bert", "vit",
       "autoencoder"]


def _quiet(msg: str) -> None:
    pass


def _part(model: str, key: str, source: str = "torch") -> dict:
    """One diagnostic of the cached full check, as JSON (``CheckResult.to_dict()``)."""
    return full_check(model, source).to_dict()[key]


# ----------------------------------------------------------------------------- every zoo model


@pytest.mark.parametrize("model", zoo_params(ZOO))
def test_every_zoo_model_passes_grads(model: str) -> None:
    grads = _part(model, "gradients")
    assert grads is not None and grads["passed"], grads["first_divergence_detail"]
    assert grads["loss"]["passed"] and grads["loss"]["abs_diff"] <= grads["loss"]["atol"]
    assert grads["parameters"] and grads["first_divergence"] is None
    for row in grads["parameters"]:
        # each gradient is judged relative to its layer's largest gradient (see parity.diagnostics.grads):
        # the verdict recomputed from the row's own numbers, not taken from its "passed"
        assert row["passed"], row["explain"]
        assert row["atol"] == pytest.approx(grads["tolerance"]["atol"] * row["scale"], rel=1e-9)
        assert row["max_abs"] <= row["atol"] + row["rtol"] * row["scale"], row["explain"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("model", zoo_params(ZOO))
def test_every_zoo_model_passes_training_steps(model: str, optimizer: str) -> None:
    training = _part(model, "training")
    assert training is not None and training["steps"] == TRAIN_STEPS
    run = training["runs"][optimizer]
    assert run["passed"], run["first_divergence_detail"] or run["losses"]
    assert len(run["losses"]) == TRAIN_STEPS and all(s["passed"] for s in run["losses"])
    moved = [p for p in run["parameters"] if p["scale"] > 0]
    assert moved, "nothing moved: the optimizer did not step"
    assert all(bn["converted"] for bn in training["batchnorm"])


def test_training_reports_its_alignments() -> None:
    """What had to be aligned, and why, is in the report (read from the cached checks)."""
    mobilenet = _part("mobilenet_v2", "training")
    assert mobilenet is not None
    assert any("classifier.0" in d for d in mobilenet["dropout"]["disabled"])  # p = 0.2 on both sides
    assert "random stream" in mobilenet["dropout"]["reason"]
    cnn = _part("cnn", "training")
    assert cnn is not None
    assert any("frozen in both twins: conv2.bias" in a for a in cnn["alignments"])  # bias before a BatchNorm
    assert any("unbiased" in a for a in cnn["alignments"])
    lstm = _part("lstm", "training")
    assert lstm is not None and any("b_hh folded into b_ih" in a for a in lstm["alignments"])
    resnet = _part("resnet18", "training")
    assert resnet is not None
    # a batch of 2 on layer4's 1x1 maps would normalise over 2 values per channel
    assert resnet["batch"]["requested"] == 2 and resnet["batch"]["used"] == 8
    assert "layer4" in resnet["batch"]["reason"]
    adam = cnn["runs"]["adam"]["optimizer"]
    assert adam["epsilon"]["aligned"] and len(adam["keras_epsilon_per_step"]) == TRAIN_STEPS


def test_a_keras_source_with_folded_batchnorm_is_compared_in_training() -> None:
    """From Keras, tf2onnx folds BatchNorm into the convs; the port restores the statistics from the Keras
    model itself (converters.restore_batchnorm), so gradients and training are compared, and agree. A port
    that stays inference-only is not compared: tests/test_restore_batchnorm.py."""
    result = full_check("cnn", "tf")
    assert result.port.exact and result.passed
    for key in ("gradients", "training"):
        part = result.to_dict()[key]
        assert part is not None and part["passed"] and "skipped" not in part, part
    autoencoder = full_check("autoencoder", "tf")  # no BatchNorm: exact port, so it trains alike from Keras too
    training = autoencoder.to_dict()["training"]
    assert autoencoder.passed and training is not None and training["passed"]


# ----------------------------------------------------------------------------- planted bugs


@pytest.fixture(scope="module")
def mlp_pair() -> tuple[zoo.ModelSpec, object, object]:
    """mlp twins with the torch weights ported into Keras through ONNX."""
    from converters.port import port_weights
    from zoo.weights import randomize

    spec = zoo.get("mlp")
    tm = spec.build_torch(0)
    randomize(tm, "torch", 0)
    km = spec.build_keras(1)
    inputs = spec.inputs_for("torch", spec.example_inputs(2, 0))
    port_weights(tm, km, list(inputs.values()))
    return spec, tm, km


def test_adam_epsilon_left_at_each_default_shows_only_in_training(mlp_pair: tuple) -> None:
    spec, tm, km = mlp_pair
    inputs = spec.example_inputs(2, 0)
    assert gradient_parity(spec, tm, km, inputs).passed  # the gradients are the same
    report = train_parity(spec, tm, km, steps=TRAIN_STEPS,
                          optimizers=[OptimizerConfig("adam", lr=1e-4, epsilon=None), "sgd"])
    adam = report.runs["adam"]
    assert report.runs["sgd"].passed
    assert not adam.passed
    assert adam.losses[0].passed  # the same parameters before the first step
    assert adam.first_divergent_parameter == "fc1.kernel"  # the first parameter in forward order
    first = next(r for r in adam.parameters if not r.passed)
    # torch divides by sqrt(v_hat) + 1e-8, Keras by sqrt(v) + 1e-7, i.e. 3.2e-6 after bias correction:
    # updates of elements with |g| ~ 1e-4 differ by percents, orders above the 7e-5 tolerance
    assert first.relative_error > 10 * 1e-5 * np.sqrt(2) * TRAIN_STEPS
    assert adam.to_dict()["optimizer"]["epsilon"]["aligned"] is False
    aligned = train_parity(spec, tm, km, steps=TRAIN_STEPS, optimizers=["adam"])
    assert aligned.passed


def test_xent_loss_on_seeded_labels(mlp_pair: tuple) -> None:
    spec, tm, km = mlp_pair
    report = gradient_parity(spec, tm, km, spec.example_inputs(2, 0), loss="xent")
    assert report.passed and report.loss["kind"] == "xent"


def _keras_bn(spec: zoo.ModelSpec, **attrs: float) -> zoo.ModelSpec:
    import keras

    def build(cfg: object) -> object:
        model = spec.keras_builder(cfg)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                for k, v in attrs.items():
                    setattr(layer, k, v)
        return model

    return dataclasses.replace(spec, keras_builder=build)


def test_batchnorm_momentum_passed_through_unconverted_shows_only_at_the_running_statistics() -> None:
    from parity.check import CheckOptions, run_check

    spec = _keras_bn(zoo.get("cnn"), momentum=0.1)  # torch's 0.1 copied as is (Keras needs 1 - 0.1)
    result = run_check(CheckOptions(model="cnn", layers=True, grads=True, train_steps=TRAIN_STEPS),
                       spec=spec, progress=_quiet)
    assert all(result.comparisons)  # inference does not use the momentum
    parts = result.to_dict()
    assert parts["layers"] is not None and parts["layers"]["passed"]
    assert parts["gradients"] is not None and parts["gradients"]["passed"]
    training = parts["training"]
    assert training is not None and not training["passed"] and not result.passed
    assert [bn["converted"] for bn in training["batchnorm"]] == [False, False]
    for run in training["runs"].values():
        assert run["first_divergence"] == "bn1.mean"
        assert all(s["passed"] for s in run["losses"])
        assert all(p["passed"] for p in run["parameters"])  # trainable parameters agree
        assert not all(s["passed"] for s in run["statistics"])


def test_running_variance_is_compared_after_the_unbiased_correction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the n / (n - 1) correction the running variances would differ; with it they agree."""
    from parity.diagnostics import training

    history = [(np.array([0.5, 2.0]), 4), (np.array([1.0, 1.0]), 4)]
    m = 0.1
    # torch: v = 0.9 v + 0.1 * var * 4/3 twice; Keras: the same with var; the gap is the correction
    torch_v = keras_v = np.array([1.0, 1.0])
    for var, n in history:
        torch_v = (1 - m) * torch_v + m * var * n / (n - 1)
        keras_v = (1 - m) * keras_v + m * var
    assert np.allclose(torch_v - unbiased_correction(history, m), keras_v, rtol=0, atol=1e-15)

    spec, models = _cnn_pair()
    monkeypatch.setattr(training, "unbiased_correction", lambda history, momentum: np.zeros_like(history[0][0]))
    report = training.train_parity(spec, models["torch"], models["tf"], steps=2, optimizers=["sgd"])
    assert report.runs["sgd"].first_divergent_parameter == "bn1.var"


def _ported(model: str) -> tuple[zoo.ModelSpec, object, object]:
    """The zoo twins, torch weights ported into Keras through a lossless ONNX export, as `parity check` does."""
    from converters.port import port_weights
    from zoo.weights import randomize

    spec = zoo.get(model)
    tm = spec.build_torch(0)
    randomize(tm, "torch", 0)
    km = spec.build_keras(1)
    port_weights(tm, km, list(spec.inputs_for("torch", spec.example_inputs(2, 0)).values()),
                 target_inputs=list(spec.inputs_for("tf", spec.example_inputs(2, 0)).values()), lossless=True,
                 exporter=spec.torch_exporter)
    return spec, tm, km


def _cnn_pair() -> tuple[zoo.ModelSpec, dict[str, object]]:
    spec, tm, km = _ported("cnn")
    return spec, {"torch": tm, "tf": km}


@pytest.mark.parametrize("model", ["cnn", "bert", "gru"])
def test_adam_epsilon_left_at_each_default_is_caught(model: str) -> None:
    """Keras adds 1e-7 to sqrt(v) before the bias correction (3.2e-6 after), torch 1e-8 to sqrt(v_hat): an
    element's update moves by about 3.2e-6 / |g| of itself. Adam's allowance comes from the reference twin's own
    float32 rounding alone, so the slip cannot widen it (the earlier allowance, scaled by the twins' measured
    gradient gap, let it pass on cnn). mlp: test_adam_epsilon_left_at_each_default_shows_only_in_training."""
    spec, tm, km = _ported(model)
    report = train_parity(spec, tm, km, steps=TRAIN_STEPS,
                          optimizers=[OptimizerConfig("adam", lr=1e-4, epsilon=None)])
    adam = report.runs["adam"]
    assert adam.losses[0].passed  # the same parameters before the first step
    assert not adam.passed
    first = next(r for r in adam.parameters if not r.passed)
    assert first.name == adam.first_divergence and not first.statistic


def test_adam_allowance_does_not_grow_with_the_gap_it_judges(mlp_pair: tuple) -> None:
    """A Keras twin whose gradients differ (a perturbed weight) leaves the Adam allowance's inputs unchanged:
    they are measured on the torch twin alone."""
    spec, tm, km = mlp_pair
    clean = train_parity(spec, tm, km, steps=2, optimizers=["adam"]).runs["adam"]
    kernel = km.get_layer("fc2").kernel
    saved = kernel.numpy().copy()
    try:
        kernel.assign(saved * (1 + 1e-3 * np.random.default_rng(0).standard_normal(saved.shape)).astype(np.float32))
        planted = train_parity(spec, tm, km, steps=2, optimizers=["adam"]).runs["adam"]
    finally:
        kernel.assign(saved)
    assert not planted.passed  # the gap is there, and judged
    rounding = clean.tolerance["parameters"]["gradient_rounding"]
    assert rounding and planted.tolerance["parameters"]["gradient_rounding"] == rounding


def _adam_displacement(g: np.ndarray, lr: float, eps: object, b1: float = 0.9, b2: float = 0.999) -> np.ndarray:
    """p_N - p_0 under torch's Adam, in float64, for gradients g[t] (eps: a number, or a function of t)."""
    m = v = np.zeros(g.shape[1:])
    p = np.zeros(g.shape[1:])
    for t in range(1, len(g) + 1):
        m = b1 * m + (1 - b1) * g[t - 1]
        v = b2 * v + (1 - b2) * g[t - 1] ** 2
        e = eps(t) if callable(eps) else eps
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + e)
    return p


def test_adam_allowance_bounds_what_gradient_errors_of_that_size_do() -> None:
    """Known answer: Adam run again in float64 with every gradient moved by up to delta never leaves the
    allowance; and the Adam-epsilon slip does, where gradients stand well above delta."""
    from parity.diagnostics.optimizers import GAP_OVER_ROUNDING

    rng = np.random.default_rng(0)
    steps, size, lr, rho = TRAIN_STEPS, 4000, 1e-4, 2e-7
    delta = GAP_OVER_ROUNDING * rho  # layer scale 1
    mags = np.logspace(-9, 0, size)  # from far under the rounding to the layer's largest gradient
    g = rng.standard_normal((steps, size)) * mags  # signs that change from step to step
    g[:, ::2] = np.abs(g[:, ::2]) + mags[::2]  # and gradients that keep their sign
    g[:, :10] = 0.0  # and exact zeros
    cfg = OptimizerConfig("adam", lr=lr)
    allowance = AdamAllowance(cfg, ["layer"], {"layer": rho})
    for t in range(steps):
        allowance.step([g[t]], {"layer": 1.0})
    bound = allowance.totals()[0]
    base = _adam_displacement(g, lr, 1e-8)
    for trial in range(24):
        if trial < 2:  # the extremes, all one way
            err = np.full_like(g, delta if trial == 0 else -delta)
        else:
            err = rng.uniform(-delta, delta, g.shape) if trial % 2 else delta * rng.choice([-1.0, 1.0], g.shape)
        moved = np.abs(_adam_displacement(g + err, lr, 1e-8) - base)
        assert np.all(moved <= bound), f"trial {trial}: {np.max(moved / np.maximum(bound, 1e-300)):.3g} x the bound"
    slip = np.abs(_adam_displacement(g, lr, lambda t: 1e-7 / np.sqrt(1 - 0.999 ** t)) - base)
    caught = slip > bound
    assert caught[(mags > 1e-4) & (mags < 1e-1)].mean() > 0.9  # most of the elements with |g| between 1e-4 and 0.1
