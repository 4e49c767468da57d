"""Gradient parity and training-step parity: every zoo model passes; planted bugs show where they should.

Tolerances come from each zoo spec (scale-relative, written beside the model) and grow as
parity.diagnostics.grads and parity.diagnostics.training explain (sqrt(2) for the backward pass; linearly with the
steps; Adam's per-element allowance); tests assert the tools' verdicts and the reasons.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from diagnostics_cache import TRAIN_STEPS, full_check

import zoo
from parity.diagnostics.grads import gradient_parity
from parity.diagnostics.training import OptimizerConfig, train_parity, unbiased_correction

ZOO = ["mlp", "cnn", "resnet18", "resnet50", "mobilenet_v2", "unet", "tcn", "lstm", "gru", "bert", "vit",
       "autoencoder"]


def _quiet(msg: str) -> None:
    pass


# ----------------------------------------------------------------------------- every zoo model


@pytest.mark.parametrize("model", ZOO)
def test_every_zoo_model_passes_grads(model: str) -> None:
    grads = full_check(model).gradients
    assert grads is not None and grads["passed"], grads["first_divergence_detail"]
    assert grads["loss"]["passed"]
    assert grads["parameters"] and grads["first_divergence"] is None
    for row in grads["parameters"]:
        # each gradient is judged relative to its layer's largest gradient (see parity.diagnostics.grads)
        assert row["max_abs"] <= row["atol"] + row["rtol"] * row["scale"] or row["passed"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("model", ZOO)
def test_every_zoo_model_passes_training_steps(model: str, optimizer: str) -> None:
    training = full_check(model).training
    assert training is not None and training["steps"] == TRAIN_STEPS
    run = training["runs"][optimizer]
    assert run["passed"], run["first_divergence_detail"] or run["losses"]
    assert len(run["losses"]) == TRAIN_STEPS and all(s["passed"] for s in run["losses"])
    moved = [p for p in run["parameters"] if p["scale"] > 0]
    assert moved, "nothing moved: the optimizer did not step"
    assert all(bn["converted"] for bn in training["batchnorm"])


def test_training_reports_its_alignments() -> None:
    """What had to be aligned, and why, is in the report (read from the cached checks)."""
    mobilenet = full_check("mobilenet_v2").training
    assert mobilenet is not None
    assert any("classifier.0" in d for d in mobilenet["dropout"]["disabled"])  # p = 0.2 on both sides
    assert "random stream" in mobilenet["dropout"]["reason"]
    cnn = full_check("cnn").training
    assert cnn is not None
    assert any("frozen in both twins: conv2.bias" in a for a in cnn["alignments"])  # bias before a BatchNorm
    assert any("unbiased" in a for a in cnn["alignments"])
    lstm = full_check("lstm").training
    assert lstm is not None and any("b_hh folded into b_ih" in a for a in lstm["alignments"])
    resnet = full_check("resnet18").training
    assert resnet is not None
    # a batch of 2 on layer4's 1x1 maps would normalise over 2 values per channel
    assert resnet["batch"]["requested"] == 2 and resnet["batch"]["used"] == 8
    assert "layer4" in resnet["batch"]["reason"]
    adam = cnn["runs"]["adam"]["optimizer"]
    assert adam["epsilon"]["aligned"] and len(adam["keras_epsilon_per_step"]) == TRAIN_STEPS


def test_an_inference_only_port_is_not_compared_in_training() -> None:
    """From Keras, tf2onnx folds BatchNorm into the convs: same outputs, different training functions."""
    result = full_check("cnn", "tf")
    assert all(result.comparisons) and not result.passed
    for key in ("gradients", "training"):
        part = getattr(result, key)
        assert part is not None and part["passed"] is False and "inference-only at conv1" in part["skipped"]
    autoencoder = full_check("autoencoder", "tf")  # no BatchNorm: exact port, so it trains alike from Keras too
    assert autoencoder.passed and autoencoder.training is not None and autoencoder.training["passed"]


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
    assert result.layers is not None and result.layers["passed"]
    assert result.gradients is not None and result.gradients["passed"]
    training = result.training
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


def _cnn_pair() -> tuple[zoo.ModelSpec, dict[str, object]]:
    from converters.port import port_weights
    from zoo.weights import randomize

    spec = zoo.get("cnn")
    tm = spec.build_torch(0)
    randomize(tm, "torch", 0)
    km = spec.build_keras(1)
    port_weights(tm, km, list(spec.inputs_for("torch", spec.example_inputs(2, 0)).values()),
                 target_inputs=list(spec.inputs_for("tf", spec.example_inputs(2, 0)).values()), lossless=True)
    return spec, {"torch": tm, "tf": km}
