"""The zoo mechanism and the twins' structure."""

from __future__ import annotations

import numpy as np
import pytest

import zoo
from converters.targets import target_layers

MODELS = zoo.names()


def test_names_and_unknown_model() -> None:
    assert {"mlp", "cnn"} <= set(MODELS)
    with pytest.raises(zoo.UnknownModelError, match="known models: .*cnn.*mlp"):
        zoo.get("nosuchmodel")


def test_presets_and_overrides() -> None:
    assert zoo.get("cnn", image=32).config.image == 32
    with pytest.raises(ValueError, match="no preset 'huge'"):
        zoo.get("cnn", preset="huge")
    with pytest.raises(ValueError, match="no config field"):
        zoo.get("cnn", bogus=1)


def test_example_inputs_are_seeded_and_layouts_convert() -> None:
    spec = zoo.get("cnn")
    a, b = spec.example_inputs(3, seed=7), spec.example_inputs(3, seed=7)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["x"].shape == (3, 3, 16, 16)
    nhwc = spec.inputs_for("tf", a)["x"]
    assert nhwc.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(nhwc[:, 4, 5, :], a["x"][:, :, 4, 5])
    np.testing.assert_array_equal(spec.inputs[0].from_framework(nhwc, "tf"), a["x"])


@pytest.mark.parametrize("name", MODELS)
def test_twins_share_layer_names_and_parameter_counts(name: str) -> None:
    spec = zoo.get(name)
    tm, km = spec.build_torch(0), spec.build_keras(0)
    inputs = list(spec.inputs_for("torch", spec.example_inputs(1, 0)).values())
    t_layers = [(x.name, x.kind) for x in target_layers(tm, inputs)]
    k_layers = [(x.name, x.kind) for x in target_layers(km)]
    assert t_layers == k_layers
    n_torch = sum(p.numel() for p in tm.parameters())
    n_keras = sum(int(np.prod(w.shape)) for w in km.trainable_weights)
    assert n_torch - n_keras == spec.param_difference, spec.param_difference_reason


def test_cnn_same_padding_matches_tensorflow_exactly() -> None:
    """Stride-2 'same' on an even input pads (0, 1): torch must reproduce TF's output."""
    import tensorflow as tf
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 16, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    y_tf = tf.nn.conv2d(x, k, strides=2, padding="SAME").numpy()
    xt = torch.nn.functional.pad(torch.from_numpy(x.transpose(0, 3, 1, 2)), (0, 1, 0, 1))
    y_t = torch.nn.functional.conv2d(xt, torch.from_numpy(k.transpose(3, 2, 0, 1)), stride=2).numpy()
    # one 27-term dot product per element: float32 rounding only (~1e-6 at |y|~5)
    np.testing.assert_allclose(y_t.transpose(0, 2, 3, 1), y_tf, atol=1e-5, rtol=1e-5)
    y_sym = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                       torch.from_numpy(k.transpose(3, 2, 0, 1)), stride=2, padding=1).numpy()
    assert np.abs(y_sym.transpose(0, 2, 3, 1) - y_tf).max() > 0.1  # symmetric padding is the classic bug
