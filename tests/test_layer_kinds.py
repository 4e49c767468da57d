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
