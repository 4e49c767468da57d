"""Weight porting through ONNX: layouts, exporters, faithfulness and mismatch errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import zoo
from converters import layouts
from converters.errors import ConversionError, UnsupportedLayerError, WeightMappingError
from converters.export import export_model
from converters.port import port_onnx, port_weights
from parity.runners import make_runner
from zoo.weights import randomize

OTHER = {"torch": "tf", "tf": "torch"}


def test_flatten_reorder_known_answer() -> None:
    # kernel rows indexed by (c, h, w) in C-major order; value = 100c + 10h + w
    c, h, w = 2, 3, 4
    rows = np.array([100 * ci + 10 * hi + wi for ci in range(c) for hi in range(h) for wi in range(w)], np.float32)
    kernel = rows[:, None]
    hwc = layouts.reorder_flatten_rows(kernel, "CHW", (c, h, w), "HWC")
    expected = np.array([100 * ci + 10 * hi + wi for hi in range(h) for wi in range(w) for ci in range(c)])
    np.testing.assert_array_equal(hwc[:, 0], expected)
    back = layouts.reorder_flatten_rows(hwc, "HWC", (h, w, c), "CHW")
    np.testing.assert_array_equal(back, kernel)


def test_conv_layout_round_trip() -> None:
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 5)).astype(np.float32)
    k = layouts.conv_to_keras(w)
    assert k.shape == (3, 5, 3, 8)
    np.testing.assert_array_equal(layouts.conv_from_keras(k), w)


def _ported_pair(name: str, src: str, tmp_path: Path, exporter: str = "dynamo", lossless: bool = False):
    spec = zoo.get(name)
    inputs = spec.example_inputs(2, 0)
    source = spec.build(src, 0)
    randomize(source, src, 0)
    target = spec.build(OTHER[src], 1)
    path = export_model(source, src, list(spec.inputs_for(src, inputs).values()), tmp_path / "m.onnx",
                        input_names=spec.input_names, output_names=spec.output_names, exporter=exporter,
                        lossless=lossless)
    report = port_onnx(path, target, list(spec.inputs_for(OTHER[src], inputs).values()))
    outs = {}
    for fw, model in ((src, source), (OTHER[src], target)):
        runner = make_runner(fw).prepare(model, spec.input_names, spec.output_names)
        outs[fw] = spec.outputs_from(fw, runner.run(spec.inputs_for(fw, inputs)))["logits"]
    return spec, report, outs, path


CASES = [
    pytest.param(name, src, exporter, lossless, id=f"{name}-{src}-{exporter if src == 'torch' else 'tf2onnx'}"
                 + ("-lossless" if lossless else ""))
    for name in ("mlp", "cnn")
    for src, exporter, lossless in (("torch", "dynamo", False), ("torch", "legacy", False),
                                    ("torch", "dynamo", True), ("torch", "legacy", True), ("tf", "dynamo", False))
]


@pytest.mark.parametrize(("name", "src", "exporter", "lossless"), CASES)
def test_port_matches_source(name: str, src: str, exporter: str, lossless: bool, tmp_path: Path) -> None:
    spec, report, outs, _ = _ported_pair(name, src, tmp_path, exporter, lossless)
    ref = outs[src]
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(outs[OTHER[src]], ref, atol=spec.tolerance.absolute(scale), rtol=spec.tolerance.rtol)
    assert [x.target for x in report.layers] == [x.name for x in
                                                  __import__("converters.targets", fromlist=["x"]).target_layers(
                                                      spec.build(OTHER[src], 1))]
    # every initializer is consumed exactly once or listed with a reason
    assert all(n == 1 for n in report.consumed_initializers.values())
    assert all(reason for reason in report.unused_initializers.values())
    assert not any("not used" in r for r in report.unused_initializers.values())


def test_folded_batchnorm_is_marked_inference_only(tmp_path: Path) -> None:
    _, folded, _, _ = _ported_pair("cnn", "torch", tmp_path, "dynamo", lossless=False)
    status = {x.target: x.status for x in folded.layers}
    assert status == {"conv1": "inference-only", "bn1": "inference-only", "conv2": "inference-only",
                      "bn2": "inference-only", "fc": "exact"}
    assert not folded.exact
    _, lossless, _, _ = _ported_pair("cnn", "torch", tmp_path, "dynamo", lossless=True)
    assert lossless.exact


def test_lossless_port_copies_batchnorm_statistics_exactly(tmp_path: Path) -> None:
    spec = zoo.get("cnn")
    source = spec.build_torch(0)
    randomize(source, "torch", 3)
    target = spec.build_keras(1)
    port_weights(source, target, list(spec.example_inputs(1, 0).values()), lossless=True)
    bn = target.get_layer("bn1")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), source.bn1.running_var.numpy())
    np.testing.assert_array_equal(bn.gamma.numpy(), source.bn1.weight.detach().numpy())


def _build_pair(cfg_torch: dict, cfg_keras: dict):
    t = zoo.get("cnn", **cfg_torch).build_torch(0)
    k = zoo.get("cnn", **cfg_keras).build_keras(0)
    return t, k


def test_different_channel_count_names_first_mismatching_layer(tmp_path: Path) -> None:
    spec = zoo.get("cnn")
    source = spec.build_torch(0)
    path = export_model(source, "torch", list(spec.example_inputs(1, 0).values()), tmp_path / "m.onnx",
                        input_names=["x"], output_names=["logits"])
    target = zoo.get("cnn", channels=(8, 12)).build_keras(0)
    with pytest.raises(WeightMappingError, match=r"first mismatching layer: target tf layer 'conv2'.*\(16, 8, 3, 3\)"):
        port_onnx(path, target)


def test_missing_and_extra_layers(tmp_path: Path) -> None:
    spec = zoo.get("mlp")
    path = export_model(spec.build_torch(0), "torch", list(spec.example_inputs(1, 0).values()), tmp_path / "m.onnx",
                        input_names=["x"], output_names=["logits"])
    fewer = zoo.get("mlp", hidden=(64,)).build_keras(0)
    with pytest.raises(WeightMappingError, match="first mismatching layer"):
        port_onnx(path, fewer)
    more = zoo.get("mlp", hidden=(64, 64, 64)).build_keras(0)
    with pytest.raises(WeightMappingError, match="first mismatching layer: target tf layer 'fc3'"):
        port_onnx(path, more)


def test_truncated_and_missing_onnx_files(tmp_path: Path) -> None:
    spec = zoo.get("mlp")
    path = export_model(spec.build_torch(0), "torch", list(spec.example_inputs(1, 0).values()), tmp_path / "m.onnx",
                        input_names=["x"], output_names=["logits"])
    data = path.read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(data[: len(data) // 2])
    target = spec.build_keras(0)
    with pytest.raises(ConversionError, match="broken.onnx"):
        port_onnx(broken, target)
    with pytest.raises(ConversionError, match="not found"):
        port_onnx(tmp_path / "nope.onnx", target)


def test_unsupported_parametric_op_lists_supported_kinds(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    prelu = numpy_helper.from_array(np.full((1, 4), 0.25, np.float32), "slope")
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "slope"], ["y"], name="act")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], [prelu])
    path = tmp_path / "prelu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(UnsupportedLayerError, match=r"'act' \(PRelu\).*supported parametric ops: .*Conv.*Gemm"):
        port_onnx(path, zoo.get("mlp").build_keras(0))


def test_external_data_outside_model_folder_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(helper.make_model(graph), folder / "m.onnx")
    with pytest.raises(ConversionError, match="outside the model's folder"):
        port_onnx(folder / "m.onnx", zoo.get("mlp").build_keras(0))
