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
    """The zoo cnn's stride-2 'same' conv on an even input: both twins' conv1 outputs, computed by
    zoo/cnn.py's own padding code (torch pads (0, 1) in its forward, Keras uses padding='same'),
    equal TensorFlow's 'SAME' convolution with the same kernel."""
    import keras
    import tensorflow as tf

    from converters.torch_hooks import run_with_hooks

    spec = zoo.get("cnn")
    assert spec.config.image % 2 == 0, "the asymmetric (0, 1) case needs an even input"
    tm, km = spec.build_torch(0), spec.build_keras(0)
    x = spec.example_inputs(2, seed=0)["x"]  # torch layout (N, C, H, W)
    seen: dict[str, np.ndarray] = {}
    run_with_hooks(tm, [x], [("conv1", tm.conv1)],
                   lambda name: lambda module, args, out: seen.update({name: out.numpy().transpose(0, 2, 3, 1)}))
    kernel = tm.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)
    x_nhwc = spec.inputs_for("tf", {"x": x})["x"]
    y_tf = tf.nn.conv2d(x_nhwc, kernel, strides=2, padding="SAME").numpy()
    km.get_layer("conv1").set_weights([kernel])
    y_keras = np.asarray(keras.Model(km.inputs, km.get_layer("conv1").output)(x_nhwc))
    scale = float(np.abs(y_tf).max())
    # one 27-term dot product per element: float32 rounding only (~1e-7 of the output scale)
    np.testing.assert_allclose(seen["conv1"], y_tf, atol=1e-5 * scale, rtol=1e-5)
    np.testing.assert_allclose(y_keras, y_tf, atol=1e-5 * scale, rtol=1e-5)
    # the check discriminates: symmetric padding (the classic bug) is far off
    y_sym = tf.nn.conv2d(np.pad(x_nhwc, ((0, 0), (1, 1), (1, 1), (0, 0))), kernel, strides=2, padding="VALID").numpy()
    assert np.abs(y_sym - y_tf).max() > 0.1 * scale
