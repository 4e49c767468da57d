"""Generated PyTorch twins of Keras sources (converters.codegen): tf2onnx's 1-D layers (2-D ops on
a size-1 axis) become nn.Conv1d and 1-D pools, a Keras Bidirectional LSTM's two while-loops (masked
or not) a bidirectional nn.LSTM (stacked as torch stacks it), and the matrix of non-attention zoo
models passes `parity convert --layers --grads --train-steps 3`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
from converters.codegen import generate
from converters.errors import UnsupportedLayerError
from converters.export import export_model
from zoo.weights import randomize


def _conv1d_onnx(path: Path, pads: list[int], unit_kernel: int = 1, bias: bool = True) -> Path:
    """A Keras Conv1D as tf2onnx writes it, by hand: x (N, L, C) -> Unsqueeze(1) -> Transpose to
    (N, C, 1, L) -> Conv (kernel (1, 3), dilation 2) -> Squeeze(2) -> bias Add -> Transpose to (N, L, O)."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, unit_kernel, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "model_1/conv_1/convolution/ExpandDims_1:0"),
             numpy_helper.from_array(rng.normal(size=(4, 1)).astype(np.float32), "model_1/conv_1/BiasAdd/bias:0"),
             numpy_helper.from_array(np.array([1], np.int64), "one"), numpy_helper.from_array(np.array([2], np.int64), "two")]
    nodes = [helper.make_node("Unsqueeze", ["x", "one"], ["u"], name="model_1/conv_1/convolution/ExpandDims"),
             helper.make_node("Transpose", ["u"], ["t"], perm=[0, 3, 1, 2], name="model_1/conv_1/convolution__5"),
             helper.make_node("Conv", ["t", "model_1/conv_1/convolution/ExpandDims_1:0"], ["c"], dilations=[1, 2],
                              kernel_shape=[unit_kernel, 3], pads=pads, name="model_1/conv_1/convolution"),
             helper.make_node("Squeeze", ["c", "two"], ["s"], name="model_1/conv_1/convolution/Squeeze"),
             helper.make_node("Add" if bias else "Relu", ["s", "model_1/conv_1/BiasAdd/bias:0"][: 2 if bias else 1],
                              ["b"], name="model_1/conv_1/BiasAdd"),
             helper.make_node("Transpose", ["b"], ["y"], perm=[0, 2, 1], name="Transpose__9")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 10, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tf2onnx")
    save(model, str(path))
    return path


@pytest.mark.parametrize("bias", [True, False], ids=["bias-add", "no-bias"])
def test_keras_conv1d_chain_becomes_conv1d(tmp_path: Path, bias: bool) -> None:
    """The Unsqueeze/Transpose/Squeeze chain is followed, not transcribed: one nn.Conv1d with the
    dilation, the causal pad (4 = (k-1)*d on the left) as F.pad, and no permute; ported, it computes
    what ONNX Runtime computes on the file. Without a bias the Squeeze itself ends the layer."""
    from parity.convert import convert_onnx

    path = _conv1d_onnx(tmp_path / "conv1d.onnx", pads=[0, 4, 0, 0], bias=bias)
    result = convert_onnx(path, "torch", tmp_path / "out", spatial_inputs={"x"})
    assert f"self.conv = nn.Conv1d(3, 4, 3, dilation=2{'' if bias else ', bias=False'})" in result.code
    assert "x = F.pad(x, (4, 0))" in result.code and "x = self.conv(x)" in result.code
    assert "permute" not in result.code and "reshape" not in result.code and "Conv2d" not in result.code
    (c,) = result.comparisons
    assert c.max_abs <= c.atol and c.atol <= 1e-4, c  # user-pair default: 1e-5 of the output scale


def test_conv_over_a_real_second_axis_is_not_a_conv1d(tmp_path: Path) -> None:
    """A kernel of 3 along the inserted axis (padded to keep its size 1) is a real 2-D conv: it is
    not squeezed into a Conv1d, and the rank change between its Unsqueeze and Squeeze is refused."""
    path = _conv1d_onnx(tmp_path / "conv2d.onnx", pads=[1, 4, 1, 0], unit_kernel=3)
    with pytest.raises(UnsupportedLayerError, match="between Unsqueeze and Squeeze"):
        generate(path, "torch", spatial_inputs={"x"})


def test_keras_1d_stack_with_pooling_becomes_1d_layers(tmp_path: Path) -> None:
    """Conv1D -> MaxPooling1D -> Conv1D: tf2onnx cancels the Squeeze/Unsqueeze pairs between them, so
    the pool and the next conv are 2-D ops on the unit axis; the whole region is rewritten as 1-D:
    'same' pads as conv padding (or an F.pad where TF pads one side more), no reshape or permute."""
    import keras
    import torch  # noqa: F401  (torch before TensorFlow in one process)

    from parity.convert import convert_onnx

    x = inputs = keras.Input((24, 3), name="x")
    x = keras.layers.Conv1D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling1D(2, name="pool")(x)
    x = keras.layers.Conv1D(6, 5, padding="same", dilation_rate=2, use_bias=False, name="conv2")(x)
    x = keras.layers.Conv1D(4, 3, strides=2, padding="same", name="conv3")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D(name="gap")(x), name="c1d")
    for k, w in enumerate(model.weights):  # seeded, non-zero biases: a dropped bias would show
        w.assign(np.random.default_rng(k).normal(0, 0.3, w.shape).astype(np.float32))
    path = export_model(model, "tf", [np.zeros((2, 24, 3), np.float32)], tmp_path / "c1d.onnx", input_names=["x"],
                        output_names=["y"])
    result = convert_onnx(path, "torch", tmp_path / "out", spatial_inputs={"x"})
    for line in ("self.conv1 = nn.Conv1d(3, 8, 3, padding=1)", "x = F.max_pool1d(x, 2, stride=2)",
                 "self.conv2 = nn.Conv1d(8, 6, 5, padding=4, dilation=2, bias=False)",
                 "self.conv3 = nn.Conv1d(6, 4, 3, stride=2)", "x = F.pad(x, (0, 1))"):
        assert line in result.code, line
    assert not any(word in result.code for word in ("permute", "reshape", "2d"))
    (c,) = result.comparisons
    assert c.max_abs <= c.atol and c.atol <= 1e-4, c  # user-pair default: 1e-5 of the output scale


def _export(name: str, path: Path, seed: int = 0, **overrides: object) -> Path:
    spec = zoo.get(name, preset="small", **overrides)
    model = spec.build("tf", seed)
    randomize(model, "tf", seed)
    inputs = spec.inputs_for("tf", spec.example_inputs(2, seed))
    return export_model(model, "tf", list(inputs.values()), path, input_names=list(inputs),
                        output_names=spec.output_names, lossless=True)


def _twin_against_onnx(path: Path, code: str, spec: zoo.spec.ModelSpec, tmp_path: Path) -> tuple[float, float]:
    """The generated torch twin with the file's weights against ONNX Runtime on the file, on the
    zoo's right-padded inputs (batch 4, another seed): (max |twin - ort|, the zoo's atol for it)."""
    import onnxruntime as ort
    import torch

    from converters.codegen.files import load_model_module
    from converters.port import port_onnx

    (tmp_path / "model.py").write_text(code)
    twin = load_model_module(tmp_path / "model.py").build_model()
    inputs = spec.inputs_for("tf", spec.example_inputs(4, seed=3))
    assert int(inputs["attention_mask"].sum()) < inputs["attention_mask"].size  # some padding to mask
    port_onnx(path, twin, list(inputs.values()))
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    with torch.no_grad():
        got = twin.eval()(*(torch.from_numpy(a) for a in inputs.values())).numpy()
    # the zoo lstm's own tolerance (1e-5 of the output scale; its reason is in zoo/rnn.py)
    return float(np.abs(got - want).max()), spec.tolerance.absolute(float(np.abs(want).max()))


def _assert_ruff_clean(code: str, tmp_path: Path) -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    (tmp_path / "generated.py").write_text(code)
    config = str(Path(__file__).resolve().parents[1] / "pyproject.toml")
    for args in (["format", "--check", "--diff"], ["check"]):
        run = subprocess.run([ruff, *args, "--config", config, str(tmp_path / "generated.py")], capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_masked_keras_bidirectional_lstm_becomes_packed_nn_lstm(tmp_path: Path) -> None:
    """The zoo lstm's Keras twin: two masked Bidirectional layers (lstm.l0, lstm.l1), each two while-loops
    (the backward one on the reversed sequence and mask). They become one stacked bidirectional nn.LSTM
    over a packed sequence (lengths: the mask's valid steps), equal to the source with its padding."""
    spec = zoo.get("lstm", preset="small")
    path = _export("lstm", tmp_path / "lstm.onnx")
    code = generate(path, "torch", model="lstm").code
    assert "self.lstm = nn.LSTM(16, 16, num_layers=2, batch_first=True, bidirectional=True)" in code
    assert code.count("nn.utils.rnn.pack_padded_sequence(") == 1 and code.count("total_length=12)[0]") == 1
    assert code.count(".sum((1, 2)).cpu()") == 1 and "input_ids = self.lstm(input_ids)[0]" in code
    _assert_ruff_clean(code, tmp_path)  # the long packing call is wrapped inside its parentheses
    worst, atol = _twin_against_onnx(path, code, spec, tmp_path)
    assert worst <= atol, (worst, atol)
    # to a Keras twin the mask stays a mask (any pattern: convert_onnx feeds random 0/1 masks)
    from parity.convert import convert_onnx

    keras_twin = convert_onnx(path, "tf", tmp_path / "keras")
    assert keras_twin.code.count("(x1, mask=x3)") == 2, keras_twin.code
    (c,) = keras_twin.comparisons
    assert c.max_abs <= c.atol, c  # user-pair default: 1e-5 of the output scale


def test_unmasked_keras_bidirectional_lstm_becomes_nn_lstm(tmp_path: Path) -> None:
    """Without a mask (``packed=False``) tf2onnx writes an ONNX bidirectional LSTM whose output it splits
    per direction (Slice, Squeeze, Concat): that chain is no code, and the layers keep their Keras names
    (lstm.l0, lstm.l1: one stacked module ``lstm``)."""
    spec = zoo.get("lstm", preset="small", packed=False)
    path = _export("lstm", tmp_path / "lstm.onnx", packed=False)
    code = generate(path, "torch", model="lstm").code
    assert "self.lstm = nn.LSTM(16, 16, num_layers=2, batch_first=True, bidirectional=True)" in code
    assert "input_ids = self.lstm(input_ids)[0]" in code and "pack_padded_sequence" not in code
    assert "permute" not in code and "torch.cat" not in code
    worst, atol = _twin_against_onnx(path, code, spec, tmp_path)
    assert worst <= atol, (worst, atol)


def test_stacking_needs_the_names_and_a_private_chain() -> None:
    """Only layers named base.l0, base.l1 ..., each read by the next alone, become one stacked module."""
    from types import SimpleNamespace

    from converters.codegen.masked_rnn import stack_layers
    from converters.codegen.program import Op
    from converters.params import ParamGroup

    def lowered(names: tuple[str, str], extra_use: bool) -> SimpleNamespace:
        group = ParamGroup("lstm", ["n"], {})
        attrs = {"direction": "forward", "hidden": 8, "reset_after": True}
        ops = [Op("layer", "v1", ["v0"], dict(attrs), names[0], group),
               Op("layer", "v2", ["v1"], dict(attrs), names[1], group), Op("relu", "v3", ["v2"])]
        ops += [Op("relu", "v4", ["v1"])] if extra_use else []  # the lower layer's output read elsewhere too
        graph = SimpleNamespace(outputs=["y"])
        return SimpleNamespace(ops=ops, vars={"y": (ops[-1].out, (0, 1))}, graph=graph)

    low = lowered(("rnn.l0", "rnn.l1"), False)
    stack_layers(low)
    assert [(op.name, op.attrs.get("num_layers"), op.args) for op in low.ops] == [("rnn", 2, ["v0"]), ("", None, ["v1"])]
    for names, extra in ((("rnn.l0", "other.l1"), False), (("rnn.l1", "rnn.l2"), False), (("rnn.l0", "rnn.l1"), True)):
        low = lowered(names, extra)
        stack_layers(low)
        assert [op.name for op in low.ops if op.kind == "layer"] == list(names), names


def test_masked_one_direction_keras_lstm_is_refused(tmp_path: Path) -> None:
    """A masked Keras LSTM outside Bidirectional repeats its last output at masked steps; a packed
    nn.LSTM writes zeros there, so it is refused with the reason rather than generated wrong."""
    import keras
    import torch  # noqa: F401  (torch before TensorFlow in one process)

    ids = keras.Input((6,), dtype="int64", name="ids")
    mask = keras.Input((6,), dtype="int64", name="mask")
    x = keras.layers.Embedding(20, 4, name="embedding")(ids)
    x = keras.layers.LSTM(3, return_sequences=True, name="lstm")(x, mask=keras.ops.cast(mask, "bool"))
    model = keras.Model([ids, mask], keras.layers.Dense(2, name="head")(x))
    batch = [np.array([[3, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6]], np.int64),
             np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], np.int64)]
    path = export_model(model, "tf", batch, tmp_path / "masked.onnx", input_names=["ids", "mask"], output_names=["y"])
    with pytest.raises(UnsupportedLayerError, match="zero_output_for_mask=False"):
        generate(path, "torch")


# The matrix: all twelve zoo models, both directions, with the diagnostics of `parity convert --layers
# --grads --train-steps 3`. tf2onnx folds BatchNorm into its convolution; the port restores it from the Keras
# source (converters/restore_batchnorm.py), so gradients and training are compared from Keras sources too.
MODELS = ["mlp", "cnn", "resnet18", "resnet50", "mobilenet_v2", "unet", "autoencoder", "gru", "lstm", "tcn",
          "bert", "vit"]
MATRIX = [(m, s) for m in MODELS for s in ("torch", "tf")]


def test_the_matrix_covers_every_zoo_model() -> None:
    import zoo

    assert sorted(MODELS) == sorted(zoo.names())


@pytest.mark.slow
@pytest.mark.parametrize(("name", "source"), MATRIX, ids=[f"{n}-from-{s}" for n, s in MATRIX])
def test_generated_twin_matrix(name: str, source: str, tmp_path: Path) -> None:
    from parity.convert import convert_zoo

    result = convert_zoo(name, tmp_path / "twin", source=source, layers=True, grads=True, train_steps=3)
    check = result.result
    for c in check.comparisons:  # the zoo model's own tolerance, its reason in the spec
        assert c.max_abs <= c.atol, c
    assert check.layers.passed and check.layers.first_divergence is None
    data = result.data
    for part in ("gradients", "training"):
        assert data[part]["passed"], (part, data[part])
    assert result.passed
