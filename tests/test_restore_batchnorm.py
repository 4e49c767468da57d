"""A Keras source's BatchNorms, folded by tf2onnx, are restored from the source: the port is exact again.

tf2onnx folds ``conv -> bn`` into the conv (``W * s``) and ``conv (with bias) -> bn`` into a per-channel
scale and shift; ``converters.restore_batchnorm`` reads gamma, beta and the moving statistics from the
Keras layers of the same names and un-folds the conv, so that gradients and training compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from converters.port import port_model
from converters.report import FOLDED_BATCHNORM, FOLDED_INTO, FOLDED_STATISTICS
from converters.restore_batchnorm import RESTORED_NOTE

EPS = 1e-5  # the same on both sides (Keras's default 1e-3 would be a lint finding, not this test's subject)
# Kernels come back as W' / s from grappler's float32 W' = W * s: one rounding there, one here, and s itself
# computed in float32 by TF (rsqrt) and in float64 here, each within a few ulp (1.2e-7): 1e-6 relative.
KERNEL_RTOL = 1e-6
# Gradients of one small model in training mode, float32 in both frameworks with their own summation orders:
# measured <= 1.1e-6 of the layer's largest gradient (two seeds); 1e-5 of it leaves ~10x room and still sees
# a folded conv (whose gradients are off by the BatchNorm's scale, O(1)). Judged per layer, as
# parity.diagnostics.grads does: conv_b's bias feeds a training-mode BatchNorm, so its gradient is zero in
# exact arithmetic and only rounding noise in float32.
GRAD_RTOL_OF_SCALE = 1e-5


def keras_model(seed: int = 0, zero_gamma: bool = False) -> Any:
    """conv (no bias) -> bn (folded into the conv) -> relu -> conv_b (bias) -> bn_b (folded into a
    scale and shift) -> flatten -> fc, with statistics far from identity."""
    import keras

    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((8, 8, 3), name="x")
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(x)
    x = keras.layers.BatchNormalization(epsilon=EPS, momentum=0.9, name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(5, 3, padding="same", name="conv_b")(x)
    x = keras.layers.BatchNormalization(epsilon=EPS, momentum=0.9, name="bn_b")(x)
    x = keras.layers.Flatten(name="flatten")(x)  # not a global pool: the gradient varies over positions
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(x))
    rng = np.random.default_rng(seed)
    for name, c in (("bn", 4), ("bn_b", 5)):
        gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)
        if zero_gamma and name == "bn":
            gamma[1] = 0.0
        model.get_layer(name).set_weights([gamma, rng.uniform(-0.5, 0.5, c), rng.uniform(-0.5, 0.5, c),
                                           rng.uniform(0.5, 2.0, c)])
    conv_b = model.get_layer("conv_b")
    conv_b.set_weights([conv_b.get_weights()[0], rng.uniform(-0.5, 0.5, 5)])
    return model


class TorchTwin(nn.Module):
    def __init__(self, bn: str = "bn", conv_bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=conv_bias)
        self.bn_name = bn
        self.add_module(bn, nn.BatchNorm2d(4, eps=EPS, momentum=0.1))
        self.conv_b = nn.Conv2d(4, 5, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(5, eps=EPS, momentum=0.1)
        self.fc = nn.Linear(5 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(getattr(self, self.bn_name)(self.conv(x)))
        return self.fc(torch.flatten(self.bn_b(self.conv_b(x)), 1))


def _inputs(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    return x, np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _port(source: Any, target: nn.Module, onnx_path: Path | None = None) -> Any:
    xk, xt = _inputs()
    return port_model(source, target, [xk], [xt], onnx_path=onnx_path)


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    source = keras_model()
    before = [np.array(w.numpy(), copy=True) for w in source.weights]  # moving statistics included
    target = TorchTwin().eval()
    path = tmp_path_factory.mktemp("restore") / "keras.onnx"
    report = _port(source, target, path)
    return {"source": source, "before": before, "target": target, "report": report, "onnx": path}


def test_batchnorm_statistics_and_kernels_are_the_keras_ones(restored: dict[str, Any]) -> None:
    source, target = restored["source"], restored["target"]
    for name in ("bn", "bn_b"):  # copied from the Keras layer: bit-identical
        keras_bn, torch_bn = source.get_layer(name), getattr(target, name)
        for theirs, ours in ((keras_bn.gamma, torch_bn.weight), (keras_bn.beta, torch_bn.bias),
                             (keras_bn.moving_mean, torch_bn.running_mean),
                             (keras_bn.moving_variance, torch_bn.running_var)):
            np.testing.assert_array_equal(ours.detach().numpy(), theirs.numpy(), err_msg=name)
    for name in ("conv", "conv_b"):  # un-folded (conv) or never folded (conv_b): the Keras kernel, transposed
        kernel = source.get_layer(name).kernel.numpy().transpose(3, 2, 0, 1)
        np.testing.assert_allclose(getattr(target, name).weight.detach().numpy(), kernel, rtol=KERNEL_RTOL,
                                   atol=KERNEL_RTOL * np.abs(kernel).max(), err_msg=name)
    np.testing.assert_allclose(target.conv_b.bias.detach().numpy(), source.get_layer("conv_b").bias.numpy(),
                               rtol=KERNEL_RTOL)


def test_restored_layers_are_reported_exact(restored: dict[str, Any]) -> None:
    report = restored["report"]
    assert report.exact, [(x.target, x.note) for x in report.inference_only]
    fields = {x.target: (x.folded_batchnorm, x.folded_into, x.note == RESTORED_NOTE) for x in report.layers}
    # what the ONNX file holds stays structured (localisation reads it); the note says the layer was restored
    assert fields == {"conv": ("bn", None, True), "bn": (None, "conv", True), "conv_b": (None, None, False),
                      "bn_b": (None, None, True), "fc": (None, None, False)}


def test_the_source_model_is_untouched(restored: dict[str, Any]) -> None:
    after = [w.numpy() for w in restored["source"].weights]
    assert len(after) == len(restored["before"])
    for old, new in zip(restored["before"], after, strict=True):
        np.testing.assert_array_equal(new, old)


def _keras_grads(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True)))
    grads = tape.gradient(loss, model.trainable_weights)
    # "layer/variable": a variable's path may carry an outer scope (e.g. the model's class name) depending on
    # what else the process built first
    return {"/".join(w.path.split("/")[-2:]): g.numpy() for w, g in zip(model.trainable_weights, grads, strict=True)}


def test_gradients_agree_in_training_mode(restored: dict[str, Any]) -> None:
    import copy

    source, target = restored["source"], copy.deepcopy(restored["target"]).train()
    xk, xt = _inputs(seed=2)
    keras_grads = _keras_grads(source, xk)
    target.zero_grad()
    torch.mean(target(torch.from_numpy(xt)) ** 2).backward()
    pairs = {"conv/kernel": (target.conv.weight, (3, 2, 0, 1)), "bn/gamma": (target.bn.weight, None),
             "bn/beta": (target.bn.bias, None), "conv_b/kernel": (target.conv_b.weight, (3, 2, 0, 1)),
             "conv_b/bias": (target.conv_b.bias, None), "bn_b/gamma": (target.bn_b.weight, None),
             "bn_b/beta": (target.bn_b.bias, None), "fc/bias": (target.fc.bias, None)}
    assert set(pairs) | {"fc/kernel"} == set(keras_grads)
    fc = keras_grads["fc/kernel"].reshape(8, 8, 5, 2).transpose(3, 2, 0, 1).reshape(2, -1)  # rows H, W, C -> C, H, W
    for name, (param, perm) in [*pairs.items(), ("fc/kernel", (target.fc.weight, None))]:
        want = fc if name == "fc/kernel" else keras_grads[name] if perm is None else keras_grads[name].transpose(perm)
        scale = max(float(np.abs(g).max()) for n, g in keras_grads.items() if n.split("/")[0] == name.split("/")[0])
        got = param.grad.numpy()  # type: ignore[union-attr]
        assert np.abs(got - want).max() <= GRAD_RTOL_OF_SCALE * scale, (name, np.abs(got - want).max(), scale)


def test_a_target_conv_with_a_bias_gets_the_bias_the_folded_shift_implies() -> None:
    """The torch conv has a bias the Keras conv lacks: the folded shift goes back to BatchNorm, the bias to ~0."""
    source = keras_model()
    target = TorchTwin(conv_bias=True).eval()
    report = _port(source, target)
    assert report.exact
    shift = np.abs(source.get_layer("bn").beta.numpy()).max() + np.abs(source.get_layer("bn").moving_mean.numpy()).max()
    assert np.abs(target.conv.bias.detach().numpy()).max() <= KERNEL_RTOL * shift  # type: ignore[union-attr]
    np.testing.assert_array_equal(target.bn.running_mean.numpy(), source.get_layer("bn").moving_mean.numpy())


@pytest.mark.parametrize(("case", "why"), [("renamed", "no BatchNormalization named 'norm'"),
                                           ("zero-gamma", "gamma of 'bn' is zero at channel 1")],
                         ids=["name-not-in-source", "zero-gamma"])
def test_a_batchnorm_that_cannot_be_restored_stays_inference_only(case: str, why: str) -> None:
    source = keras_model(zero_gamma=case == "zero-gamma")
    target = TorchTwin(bn="norm" if case == "renamed" else "bn").eval()
    report = _port(source, target)
    status = {x.target: (x.status, x.reason) for x in report.layers}
    bn = "norm" if case == "renamed" else "bn"
    assert status["conv"] == ("inference-only", FOLDED_BATCHNORM) and status[bn] == ("inference-only", FOLDED_INTO)
    assert status["bn_b"] == ("exact", "")  # the other BatchNorm is restored all the same
    assert why in report.layers[0].note and any(why in w for w in report.warnings)
    # and the port is still inference-exact: the folded weights stayed as they were
    xk, xt = _inputs()
    with torch.no_grad():
        got = target(torch.from_numpy(xt)).numpy()
    np.testing.assert_allclose(got, source(xk, training=False).numpy(), atol=1e-5, rtol=1e-5)


def test_an_onnx_file_alone_stays_inference_only(restored: dict[str, Any]) -> None:
    """Without the Keras model nothing can give the statistics back: `parity port FILE.onnx` says so."""
    report = port_model(restored["onnx"], TorchTwin().eval(), [], [_inputs()[1]])
    reasons = {x.target: x.reason for x in report.inference_only}
    assert reasons == {"conv": FOLDED_BATCHNORM, "bn": FOLDED_INTO, "bn_b": FOLDED_STATISTICS}


def test_a_check_that_cannot_restore_says_why_it_compares_no_gradients() -> None:
    """End to end through check_models: the reason reaches the skipped gradients and training."""
    from parity import check_models

    result = check_models(keras_model(), TorchTwin(bn="norm"), {"x": (8, 8, 3)}, grads=True, train_steps=1)
    assert all(result.comparisons) and not result.passed
    for key in ("gradients", "training"):
        skipped = result.to_dict()[key]["skipped"]
        assert "inference-only at conv, norm" in skipped and "no BatchNormalization named 'norm'" in skipped, skipped


def test_convert_prints_why_a_diagnostic_was_not_run() -> None:
    from types import SimpleNamespace

    from parity.cli.convert import diagnostic_lines
    from parity.diagnostics import NotCompared

    result = SimpleNamespace(layers=None, gradients=NotCompared("gradients", "the port is inference-only at conv"),
                             training=SimpleNamespace(passed=True))
    assert diagnostic_lines(result) == ["  gradients: NOT COMPARED: the port is inference-only at conv",
                                        "  training: ok"]


@pytest.mark.slow
def test_cnn_from_tf_compares_and_passes_gradients_and_training() -> None:
    from parity.check.pipeline import run_check
    from parity.check.results import CheckOptions

    options = CheckOptions(model="cnn", source="tf", batch=2, seed=0, grads=True, train_steps=3)
    result = run_check(options, progress=lambda message: None)
    assert result.port.exact and result.passed
    assert result.gradients.passed and result.training.passed  # type: ignore[union-attr]
    assert len(result.gradients.rows) == 9  # type: ignore[union-attr]  # both BatchNorms' gamma and beta included
