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
from converters.report import FOLDED_BATCHNORM, FOLDED_INTO
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


# The parametric layers each twin's forward calls, in that order (read off zoo/mlp.py and zoo/cnn.py):
# the port report must list them so, whatever order the targets are enumerated in.
FORWARD_ORDER = {"mlp": ["fc1", "fc2", "head"], "cnn": ["conv1", "bn1", "conv2", "bn2", "fc"]}

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
    assert [x.target for x in report.layers] == FORWARD_ORDER[name]
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
    # structured, for code to read (localisation does): which BatchNorm went into which layer, and why
    fields = {x.target: (x.reason, x.folded_batchnorm, x.folded_into) for x in folded.layers}
    assert fields == {"conv1": (FOLDED_BATCHNORM, "bn1", None), "bn1": (FOLDED_INTO, None, "conv1"),
                      "conv2": (FOLDED_BATCHNORM, "bn2", None), "bn2": (FOLDED_INTO, None, "conv2"),
                      "fc": ("", None, None)}
    assert folded.to_dict()["layers"][0]["folded_batchnorm"] == "bn1"
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


# ----------------------------------------------------------------------------- the user's input or our bug


def _refused_model() -> object:
    """A torch model no exporter takes: linalg.eig has no ONNX form (the user's model, not our code)."""
    import torch
    from torch import nn

    class Eig(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eig(x)[0].real

    return Eig()


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_an_exporter_refusing_the_model_is_a_conversion_error(exporter: str, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    with pytest.raises(ConversionError, match=f"torch {exporter} export of Eig failed"):
        export_model(_refused_model(), "torch", [x], tmp_path / "m.onnx", input_names=["x"], output_names=["y"],
                     exporter=exporter)
    assert not (tmp_path / "m.onnx").exists()


def test_a_bug_of_ours_in_export_stays_a_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from converters import export, layouts
    from parity.cli import main

    def broken(path: object) -> None:  # a bug in our own post-export check
        raise AttributeError("'NoneType' object has no attribute 'graph'")

    monkeypatch.setattr(export, "check_onnx", broken)
    # not exit code 2 ("your input is wrong"): the whole traceback and exit code 3
    assert main(["port", "mlp", "--from", "torch", "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "AttributeError: 'NoneType' object has no attribute 'graph'" in err
    # inside an exporter call, a failure raised in our code (here converters.layouts) is ours too
    with pytest.raises(AttributeError):
        export.run_exporter("an export", layouts.conv_to_keras, None)
    with pytest.raises(ConversionError, match="an export failed: ValueError: the exporter says no"):
        export.run_exporter("an export", _raise_value_error, "the exporter says no")


def _raise_value_error(message: str) -> None:
    raise ValueError(message)


def test_a_bug_in_our_tf2onnx_op_handler_stays_a_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """tf2onnx logs a failing custom op handler and leaves the op unconverted; the error must not
    turn into "left TensorFlow ops that ONNX does not have" (a ConversionError, exit code 2)."""
    import keras

    from converters import export

    def broken(ctx: object, node: object, name: object, args: object) -> None:
        raise ZeroDivisionError("a bug in the Erfc handler")

    monkeypatch.setattr(export, "_erfc_as_erf", broken)
    inp = keras.Input((4,))
    dense = keras.layers.Dense(4, activation="gelu", kernel_initializer=keras.initializers.GlorotUniform(0))
    model = keras.Model(inp, dense(inp))  # exact GELU: TensorFlow computes it with Erfc
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with pytest.raises(ZeroDivisionError, match="Erfc handler"):
        export_model(model, "tf", [x], tmp_path / "k.onnx", input_names=["x"], output_names=["y"])


def _onnx_with_an_unfoldable_constant(path: Path) -> Path:
    """y = x @ transpose(w_t)^T + b, plus a constant Reshape to an impossible shape (so it cannot fold)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    const = {"c": np.arange(6, dtype=np.int64), "bad_shape": np.array([4, 2], np.int64)}
    nodes = [*(helper.make_node("Constant", [], [k], name=f"const_{k}", value=numpy_helper.from_array(v))
               for k, v in const.items()),
             helper.make_node("Transpose", ["w_t"], ["w"], name="transpose_w"),  # foldable: constant in, out
             helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1),
             helper.make_node("Reshape", ["c", "bad_shape"], ["r"], name="reshape_c"),
             helper.make_node("ReduceSum", ["r"], ["s"], name="sum_r", keepdims=0),
             helper.make_node("Cast", ["s"], ["sf"], name="cast_s", to=TensorProto.FLOAT),
             helper.make_node("Add", ["y", "sf"], ["out"], name="add")]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w_t"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_a_constant_the_reference_evaluator_cannot_fold_is_reported(tmp_path: Path) -> None:
    import keras

    path = _onnx_with_an_unfoldable_constant(tmp_path / "g.onnx")
    target = keras.Sequential([keras.Input((4,)),
                               keras.layers.Dense(3, name="fc", kernel_initializer=keras.initializers.Zeros())])
    report = port_onnx(path, target)
    assert [(x.target, x.status) for x in report.layers] == [("fc", "exact")]  # the folded Transpose was followed
    assert list(report.unfolded) == ["reshape_c"]
    assert "cannot reshape" in report.to_dict()["unfolded_constants"]["reshape_c"]


def test_a_bug_of_ours_in_constant_folding_propagates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from converters import graph

    def broken(*args: object) -> None:
        raise KeyError("a bug of ours while building the one-node model")

    path = _onnx_with_an_unfoldable_constant(tmp_path / "g.onnx")
    monkeypatch.setattr(graph, "_single_node_model", broken)
    with pytest.raises(KeyError, match="a bug of ours"):
        graph.fold(graph.load_onnx(path))
