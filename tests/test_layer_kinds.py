"""Every layer kind x every exporter x both directions, on tiny pairs defined in tests/layer_pairs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from layer_pairs import PAIRS, Pair

from converters.errors import ConversionError
from converters.export import export_model
from converters.port import port_onnx
from zoo.weights import randomize

# One layer (or a handful) in float32: summation-order differences between frameworks
# stay near sqrt(K)*eps*|y| ~ 1e-6 of the output scale for K <= 200. The recurrent pairs
# run 5 steps through 2 stacked layers; measured gaps stay below 1e-6 there too.
# 1e-5 of the output scale is an order of magnitude of headroom and still two orders
# below any layout or gate-order mistake (those give O(1) relative errors).
RTOL_OF_SCALE = 1e-5

EXPORTERS = ["dynamo", "legacy"]


def _run_torch(model: object, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()  # type: ignore[operator]


def _run_keras(model: object, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False))  # type: ignore[operator]


def _to_torch_layout(y: np.ndarray, pair: Pair) -> np.ndarray:
    if y.ndim == 4:
        return y.transpose(0, 3, 1, 2)
    if y.ndim == 3 and pair.layout == "NCL":
        return y.transpose(0, 2, 1)
    return y


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, atol=RTOL_OF_SCALE * scale, rtol=0)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind", list(PAIRS))
def test_torch_to_keras(kind: str, exporter: str, tmp_path: Path) -> None:
    pair = PAIRS[kind]()
    randomize(pair.torch_model, "torch", 1)
    path = export_model(pair.torch_model.eval(), "torch", [pair.x], tmp_path / "m.onnx", input_names=["x"],
                        output_names=["y"], exporter=exporter)
    report = port_onnx(path, pair.keras_model)
    expected = _run_torch(pair.torch_model, pair.x)
    actual = _to_torch_layout(_run_keras(pair.keras_model, pair.keras_input()), pair)
    _assert_close(actual, expected)
    assert report.layers, "nothing was ported"


@pytest.mark.parametrize("kind", list(PAIRS))
def test_keras_to_torch(kind: str, tmp_path: Path) -> None:
    pair = PAIRS[kind]()
    randomize(pair.keras_model, "tf", 1)
    if kind == "conv2d_groups":
        with pytest.raises(ConversionError, match="tf2onnx export"):
            export_model(pair.keras_model, "tf", [pair.keras_input()], tmp_path / "m.onnx", input_names=["x"],
                         output_names=["y"])
        return
    path = export_model(pair.keras_model, "tf", [pair.keras_input()], tmp_path / "m.onnx", input_names=["x"],
                        output_names=["y"])
    report = port_onnx(path, pair.torch_model.eval(), [pair.x])
    expected = _to_torch_layout(_run_keras(pair.keras_model, pair.keras_input()), pair)
    actual = _run_torch(pair.torch_model, pair.x)
    _assert_close(actual, expected)
    assert report.layers


# ----------------------------------------------------------------------------- the target table: write and read


def _target_layers(pair: Pair, framework: str) -> list:
    from converters.targets import target_layers

    if framework == "torch":
        return target_layers(pair.torch_model, [pair.x])
    return target_layers(pair.keras_model)


def _lstm_bias_sum(b: np.ndarray) -> np.ndarray:
    """What both frameworks hold of an ONNX LSTM bias (dirs, 8H): Keras keeps one bias per gate, Wb + Rb."""
    half = b.shape[-1] // 2
    return b[..., :half] + b[..., half:]


@pytest.mark.parametrize("framework", ["torch", "tf"])
@pytest.mark.parametrize("kind", list(PAIRS))
def test_read_inverts_write(kind: str, framework: str) -> None:
    """Every registered kind's ``read`` gives back, in the canonical layout, what its ``write`` was given."""
    layers = _target_layers(PAIRS[kind](), framework)
    assert layers
    rng = np.random.default_rng(2)
    for layer in layers:
        canonical = {role: None if shape is None else rng.standard_normal(shape).astype(np.float32)
                     for role, shape in layer.shapes.items()}
        layer.write(canonical, {})
        back = layer.read()
        assert set(back) == set(layer.variables) == {r for r, s in layer.shapes.items() if s is not None}
        for role, value in back.items():
            expected = canonical[role]
            if layer.kind == "lstm" and role == "B":
                expected = _lstm_bias_sum(expected)
            np.testing.assert_array_equal(value, expected, err_msg=f"{framework} {layer.name}.{role}")


def test_lstm_bias_gradient_is_either_torch_bias() -> None:
    """The canonical LSTM bias both frameworks share is b_ih + b_hh; its gradient is b_ih's (= b_hh's)."""
    from converters.targets import fetch_from

    for layer in _target_layers(PAIRS["lstm"](), "torch"):
        biases = layer.variables["B"]  # b_ih, b_hh per direction
        arrays = {id(p): np.full(tuple(p.shape), 1.0 if i % 2 == 0 else 2.0, np.float32) for i, p in enumerate(biases)}
        value, grad = layer.read(fetch_from(arrays))["B"], layer.read(fetch_from(arrays), "grad")["B"]
        assert value.shape == grad.shape == (len(biases) // 2, 4 * layer.obj.hidden_size)
        np.testing.assert_array_equal(value, 3.0)  # 1 + 2: the sum of the two biases
        np.testing.assert_array_equal(grad, 1.0)  # b_ih's


@pytest.mark.parametrize("framework", ["torch", "tf"])
@pytest.mark.parametrize("attrs", [{"flatten": ("CHW", (3, 2, 4))}, {"flatten": ("HWC", (2, 4, 3))},
                                   {"unflatten": ("CHW", (3, 2, 4))}, {"unflatten": ("HWC", (2, 4, 3))}],
                         ids=["rows-chw", "rows-hwc", "columns-chw", "columns-hwc"])
def test_dense_read_undoes_the_flatten_order(attrs: dict, framework: str) -> None:
    """A dense layer fed by a flattened map (or reshaped into one) reads back in the order it was written in."""
    import keras
    import torch

    if framework == "torch":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(24, 24))
        layer = _target_layers(Pair(model, None, np.zeros((1, 24), np.float32), "NC"), "torch")[0]
    else:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((24,)), keras.layers.Dense(24)])
        layer = _target_layers(Pair(None, model, np.zeros((1, 24), np.float32), "NC"), "tf")[0]
    rng = np.random.default_rng(3)
    canonical = {"kernel": rng.standard_normal((24, 24)).astype(np.float32),
                 "bias": rng.standard_normal(24).astype(np.float32)}
    layer.write(canonical, attrs)
    back = layer.read(attrs=attrs)
    for role in ("kernel", "bias"):
        np.testing.assert_array_equal(back[role], canonical[role])
    native = "CHW" if framework == "torch" else "HWC"
    if next(iter(attrs.values()))[0] != native:  # the framework really holds it permuted
        assert not np.array_equal(layer.read()["kernel"], canonical["kernel"])


def test_a_subclass_is_the_kind_of_its_base() -> None:
    """Describers are found along the MRO: a user's Dense or Linear subclass is a dense layer, not raw tensors,
    and the port writes it as one."""
    import keras
    import torch

    from converters.port import port_weights

    class MyDense(keras.layers.Dense):
        pass

    class MyLinear(torch.nn.Linear):
        pass

    keras.utils.set_random_seed(0)
    km = keras.Sequential([keras.Input((6,)), MyDense(5, name="fc")])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tm = torch.nn.Sequential(MyLinear(6, 5))
    x = np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32)
    assert [t.kind for t in _target_layers(Pair(tm, km, x, "NC"), "tf")] == ["dense"]
    assert [t.kind for t in _target_layers(Pair(tm, km, x, "NC"), "torch")] == ["dense"]
    port_weights(tm, km, [x])
    _assert_close(_run_keras(km, x), _run_torch(tm.eval(), x))


def test_registering_a_class_twice_raises() -> None:
    import keras

    from converters.targets import Registry, registry

    table = registry("tf")
    known = table.lookup(keras.layers.Dense)
    with pytest.raises(ValueError, match="Dense is registered twice"):
        table.kind(keras.layers.Flatten, keras.layers.Dense)(lambda name, layer: [])
    assert table.lookup(keras.layers.Dense) is known
    assert table.lookup(keras.layers.Flatten) is None  # nothing registered half-way

    fresh = Registry("test")
    fresh.kind(int)(lambda name, layer: [])
    assert fresh.lookup(bool) is fresh.lookup(int) is not None  # a subclass finds its base's describer
    assert fresh.lookup(str) is None and fresh.describe("s", "text") is None
