"""The generated twin (converters.codegen, `parity convert`): readable source in the other framework
that, with the ported weights, passes the parity check against its source."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
from converters.codegen import generate
from converters.codegen import layout as lay
from converters.errors import UnsupportedLayerError
from converters.export import export_model
from zoo.weights import randomize


def _export(name: str, source: str, path: Path, seed: int = 0) -> Path:
    spec = zoo.get(name, preset="small")
    model = spec.build(source, seed)
    randomize(model, source, seed)
    inputs = spec.inputs_for(source, spec.example_inputs(2, seed))
    return export_model(model, source, list(inputs.values()), path, input_names=list(inputs),
                        output_names=spec.output_names, lossless=True)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """The small cnn's ONNX exports from its torch twin (dynamo) and its Keras twin (tf2onnx)."""
    base = tmp_path_factory.mktemp("codegen-onnx")
    return {(n, fw): _export(n, fw, base / f"{n}_{fw}.onnx") for n, fw in (("cnn", "torch"), ("cnn", "tf"))}


def test_layout_algebra_known_answers() -> None:
    nchw_from_nhwc = lay.channels_last(4)  # t (NCHW) = v (NHWC).transpose(0, 3, 1, 2)
    assert nchw_from_nhwc == (0, 3, 1, 2)
    assert lay.compose(nchw_from_nhwc, (0, 2, 3, 1)) == (0, 1, 2, 3)  # tf2onnx's Transpose back: no code
    assert lay.to_reach((0, 3, 1, 2), (0, 1, 2, 3)) == (0, 3, 1, 2)
    v = np.arange(24).reshape(1, 2, 3, 4)
    t = v.transpose(nchw_from_nhwc)
    assert np.array_equal(t.transpose(0, 2, 3, 1), v.transpose(lay.compose(nchw_from_nhwc, (0, 2, 3, 1))))
    assert lay.drop_axes((0, 3, 1, 2), [2, 3]) == (0, 1)  # NCHW mean over H, W of an NHWC variable


@pytest.mark.parametrize("source", ["torch", "tf"])
def test_generated_cnn_has_no_interior_transposes(onnx_files: dict, source: str) -> None:
    """The Keras twin is channels-last end to end; the torch twin from tf2onnx's graph drops its
    NHWC <-> NCHW Transpose pairs (the cnn's tf graph has two)."""
    target = "tf" if source == "torch" else "torch"
    generated = generate(onnx_files["cnn", source], target, model="cnn")
    kinds = [op.kind for op in generated.program.ops]
    assert "transpose" not in kinds
    assert not any(word in generated.code for word in ("Permute", "permute", "transpose"))
    # the source's own layer names; from tf, the BatchNorms that tf2onnx folded into conv1/conv2 are layers again
    assert [op.name for op in generated.program.layers()] == ["conv1", "bn1", "conv2", "bn2", "fc"]
    if source == "tf":  # what was followed rather than transcribed: tf2onnx's NHWC -> NCHW -> NHWC pair
        from converters.graph import fold, load_onnx

        assert sum(n.op_type == "Transpose" for n in fold(load_onnx(onnx_files["cnn", "tf"])).nodes) == 2


def test_regeneration_is_byte_identical(onnx_files: dict, tmp_path: Path) -> None:
    first = generate(onnx_files["cnn", "torch"], "tf", model="cnn").code
    again = generate(onnx_files["cnn", "torch"], "tf", model="cnn").code
    assert first == again
    fresh = generate(_export("cnn", "torch", tmp_path / "cnn_torch.onnx"), "tf", model="cnn").code
    assert fresh == first  # a new export of the unchanged model
    assert not any(str(year) in first for year in range(2020, 2040))  # no timestamp in the header


@pytest.mark.parametrize("source", ["torch", "tf"])
def test_generated_code_is_ruff_clean(onnx_files: dict, source: str, tmp_path: Path) -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    target = "tf" if source == "torch" else "torch"
    path = tmp_path / "model.py"
    path.write_text(generate(onnx_files["cnn", source], target, model="cnn").code)
    config = Path(__file__).resolve().parents[1] / "pyproject.toml"
    fmt = subprocess.run([ruff, "format", "--check", "--diff", "--config", str(config), str(path)],
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = subprocess.run([ruff, "check", "--config", str(config), str(path)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _odd_onnx(tmp_path: Path) -> Path:
    """A graph with two ops that have no generator between two that do."""
    from onnx import TensorProto, helper, save

    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Hardmax", ["a"], ["b"], name="pick"),
             helper.make_node("Relu", ["b"], ["c"], name="relu2"),
             helper.make_node("LpNormalization", ["c"], ["y"], name="norm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    path = tmp_path / "odd.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_recurrent_layers_are_generated_as_layers(tmp_path: Path) -> None:
    """A packed bidirectional 2-layer nn.LSTM (legacy export: a batch sort, sequence_lens) becomes one Keras
    Bidirectional LSTM per layer, masked by the lengths; a Keras GRU's while-loop becomes nn.GRU."""
    spec = zoo.get("lstm", preset="small")
    model = spec.build("torch", 0)
    inputs = spec.inputs_for("torch", spec.example_inputs(2, 0))
    path = export_model(model, "torch", list(inputs.values()), tmp_path / "lstm.onnx", input_names=list(inputs),
                        output_names=spec.output_names, exporter=spec.torch_exporter)
    code = generate(path, "tf", model="lstm").code
    for k in (0, 1):
        assert f'layers.Bidirectional(layers.LSTM(16, return_sequences=True), name="lstm.l{k}")(x1, mask=x5)' in code
    assert "keras.ops.less_equal(" in code and "Permute" not in code  # the mask; no transposes for time-major ONNX
    keras_code = generate(_export("gru", "tf", tmp_path / "gru.onnx"), "torch", model="gru").code
    assert "self.gru = nn.GRU(16, 24, batch_first=True)" in keras_code
    assert "input_ids = self.gru(input_ids)[0]" in keras_code
    assert "self.embedding = nn.Embedding(50, 16)" in keras_code and "permute" not in keras_code


def test_a_masked_rnn_model_is_right_for_masks_with_holes(tmp_path: Path) -> None:
    """Keras's Multiply replaces the masked steps of an input carrying a Keras mask by 1, so the lstm's
    `out * mask` must be written as keras.ops.multiply: with a layer, a mask with holes (steps valid in
    `attention_mask` past the packed length) read 1.15 off ONNX Runtime on the torch source."""
    import onnxruntime as ort

    from converters.codegen.files import load_model_module
    from parity.convert import convert_onnx

    spec = zoo.get("lstm", preset="small")
    inputs = spec.inputs_for("torch", spec.example_inputs(2, 0))
    path = export_model(spec.build("torch", 0), "torch", list(inputs.values()), tmp_path / "lstm.onnx",
                        input_names=list(inputs), output_names=spec.output_names, exporter=spec.torch_exporter)
    result = convert_onnx(path, "tf", tmp_path / "out")
    assert result.passed
    code = (tmp_path / "out" / "model.py").read_text()
    assert "layers.Multiply" not in code and "keras.ops.multiply(" in code
    twin = load_model_module(tmp_path / "out" / "model.py").build_model()
    twin.load_weights(tmp_path / "out" / "model.weights.h5")
    ids = np.random.default_rng(0).integers(0, 50, (3, 12))
    holes = np.array([[1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1], [0, 1, 1] + [0] * 9, [1] * 7 + [0] * 5])
    feeds = {"input_ids": ids, "attention_mask": holes}
    expected = ort.InferenceSession(str(path)).run(None, feeds)[0]
    got = np.asarray(twin([ids, holes]))
    assert np.abs(got - expected).max() <= spec.tolerance.atol  # measured 1.5e-8; 1.15 before


def test_unsupported_ops_are_listed_each(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedLayerError) as err:
        generate(_odd_onnx(tmp_path), "torch")
    message = str(err.value)
    assert "2 ONNX node(s)" in message
    assert "pick (Hardmax)" in message and "norm (LpNormalization)" in message
    assert "relu (" not in message


# Each conversion builds the source twin, exports it, generates, ports and checks four runtimes.
# From torch the export is lossless, so gradients are compared too; tf2onnx folds BatchNorm, which the
# port restores from the Keras source (converters/restore_batchnorm.py), so from Keras too.
FAST = [("mlp", "torch"), ("cnn", "torch"), ("cnn", "tf"), ("gru", "torch")]
SLOW = [("mlp", "tf"), ("resnet18", "torch"), ("resnet18", "tf"), ("mobilenet_v2", "torch"), ("mobilenet_v2", "tf"),
        ("unet", "torch"), ("unet", "tf"), ("autoencoder", "torch"), ("autoencoder", "tf"), ("tcn", "torch"),
        ("gru", "tf"), ("lstm", "torch")]


def _convert(name: str, source: str, out: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    from parity.convert import convert_zoo

    return convert_zoo(name, out, source=source, **kwargs)  # type: ignore[arg-type]


def _assert_reloads(name: str, source: str, out: Path) -> None:
    """model.py and its weights file alone reproduce the source (ONNX Runtime on source.onnx) on new inputs."""
    import onnxruntime as ort

    from converters.codegen.files import load_model_module

    spec = zoo.get(name, preset="small")
    target = "tf" if source == "torch" else "torch"
    twin = load_model_module(out / "model.py").build_model()
    inputs = spec.example_inputs(3, seed=1)
    if target == "tf":
        twin.load_weights(str(out / "model.weights.h5"))
        got = np.asarray(twin(list(spec.inputs_for("tf", inputs).values())))
    else:
        import torch
        from safetensors.torch import load_file

        twin.load_state_dict(load_file(str(out / "model.safetensors")))
        with torch.no_grad():
            got = twin.eval()(*(torch.from_numpy(a) for a in spec.inputs_for("torch", inputs).values())).numpy()
    session = ort.InferenceSession(str(out / "source.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(None, spec.inputs_for(source, inputs))[0]
    tol = spec.tolerance.absolute(float(np.abs(want).max()))  # the zoo model's own, reason in its spec
    np.testing.assert_allclose(got, want, atol=tol, rtol=spec.tolerance.rtol)


def _assert_passed(result, out: Path, target: str) -> None:  # type: ignore[no-untyped-def]
    assert result.passed and all(result.result.comparisons)
    labels = {c.a for c in result.result.comparisons}
    assert labels == {"torch", "tf", "ort-torch", "ort-tf"} - {result.result.source}
    for c in result.result.comparisons:
        assert c.max_abs <= c.atol, c  # the zoo model's own tolerance, with its reason in the spec
    weights = "model.weights.h5" if target == "tf" else "model.safetensors"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.py", weights, "source.onnx", "port_report.json", "parity.json"])


@pytest.mark.parametrize(("name", "source"), FAST, ids=[f"{n}-from-{s}" for n, s in FAST])
def test_generated_twin_passes_parity(name: str, source: str, tmp_path: Path) -> None:
    out = tmp_path / "twin"
    result = _convert(name, source, out, layers=name == "cnn", grads=name == "cnn")
    _assert_passed(result, out, "tf" if source == "torch" else "torch")
    _assert_reloads(name, source, out)
    if name == "cnn":  # every parametric layer matched by name and within tolerance
        layers = result.result.layers
        assert layers.passed and layers.first_divergence is None
        assert [r.layer for r in layers.rows] == ["conv1", "bn1", "conv2", "bn2", "fc"]
    if name == "cnn":
        assert result.result.gradients.passed
    if name == "gru":  # nn.GRU(batch_first=True) -> keras GRU with torch's gate semantics (reset_after)
        assert 'layers.GRU(24, return_sequences=True, name="gru")' in result.code


@pytest.mark.slow
@pytest.mark.parametrize(("name", "source"), SLOW, ids=[f"{n}-from-{s}" for n, s in SLOW])
def test_generated_twin_passes_parity_slow(name: str, source: str, tmp_path: Path) -> None:
    out = tmp_path / "twin"
    result = _convert(name, source, out, layers=True, grads=source == "torch")
    _assert_passed(result, out, "tf" if source == "torch" else "torch")
    assert result.result.layers.passed
    if source == "torch":
        assert result.result.gradients.passed
    assert "Permute" not in result.code and "permute" not in result.code


def _strings(data: object) -> list[str]:
    if isinstance(data, dict):
        return [s for v in data.values() for s in _strings(v)]
    if isinstance(data, list):
        return [s for v in data for s in _strings(v)]
    return [data] if isinstance(data, str) else []


def test_cli_convert_writes_the_folder_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from parity.cli import main

    out, report = tmp_path / "twin", tmp_path / "result.json"
    assert main(["convert", "mlp", "--from", "torch", "--to", "tf", "--out", str(out), "--json", str(report),
                 "--layers", "-q"]) == 0
    assert "PASSED" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["source"] == "torch" and data["target"] == "tf"
    assert json.loads((out / "parity.json").read_text()) == data
    # every stored path is final: no path into the deleted staging folder, each one a file in --out
    for saved in (data, json.loads((out / "port_report.json").read_text())):
        paths = [s for s in _strings(saved) if s.startswith(str(tmp_path))]
        assert paths and all(Path(p).is_file() and Path(p).parent == out.resolve() for p in paths), paths
    assert data["port"]["source"] == str(out.resolve() / "source.onnx")
    assert all(entry.get("file") in (None, str(out.resolve() / "source.onnx")) for entry in data["layers"]["ort"].values())
    assert main(["convert", "mlp", "--from", "torch", "--to", "torch", "--out", str(tmp_path / "x")]) == 2
    assert main(["convert", "mlp", "--out", str(out), "-q"]) == 2  # not empty, no --overwrite
    assert (out / "model.py").exists()


def test_cli_convert_from_an_onnx_file(onnx_files: dict, tmp_path: Path) -> None:
    """tf2onnx's NHWC file -> a channels-first torch twin, compared with ONNX Runtime on the file."""
    import json

    from parity.cli import main

    out = tmp_path / "twin"
    assert main(["convert", "--onnx", str(onnx_files["cnn", "tf"]), "--to", "torch", "--out", str(out), "-q"]) == 0
    data = json.loads((out / "parity.json").read_text())
    assert data["passed"] is True and [c["a"] for c in data["comparisons"]] == ["torch"]
    assert "def forward(self, x: torch.Tensor)" in (out / "model.py").read_text()
    assert (out / "model.safetensors").exists()
    assert main(["convert", "--onnx", str(onnx_files["cnn", "tf"]), "--out", str(tmp_path / "b"), "-q"]) == 2


def test_cli_convert_your_own_torch_model(tmp_path: Path) -> None:
    """The README's own pair, torch side: a Conv2d -> ReLU -> Flatten -> Linear module becomes Keras layers."""
    from parity.cli import main

    out = tmp_path / "twin"
    root = Path(__file__).resolve().parents[1]
    assert main(["convert", "--torch", str(root / "examples" / "own_models.py") + ":torch_model", "--input",
                 "x:3x8x8:float32:NCHW", "--to", "tf", "--out", str(out), "-q"]) == 0
    code = (out / "model.py").read_text()
    assert 'keras.Input(shape=(8, 8, 3), name="x")' in code  # channels-last, as the Keras twin takes it
    assert 'layers.Conv2D(8, 3, padding="same", name="conv")' in code and 'layers.Dense(10, name="fc")' in code


def test_a_failed_convert_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from parity.cli import main

    path = _odd_onnx(tmp_path)
    out = tmp_path / "twin"
    assert main(["convert", "--onnx", str(path), "--to", "torch", "--out", str(out), "-q"]) == 2
    assert "pick (Hardmax)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.onnx"]  # no twin/, no staging folder left


def _transposes(path: Path) -> int:
    import onnx

    return sum(n.op_type == "Transpose" for n in onnx.load(str(path)).graph.node)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "unet"])
def test_generated_cnn_twins_have_no_interior_transposes(name: str, tmp_path: Path) -> None:
    """The issue's measure: Transposes in the generated Keras twin's own tf2onnx export, against the
    hand-written twin's (those left are at the input and output: the graph's NCHW interface); and none
    in the generated torch twin from a Keras source."""
    from converters.codegen.files import load_model_module

    spec = zoo.get(name, preset="small")
    inputs = spec.inputs_for("tf", spec.example_inputs(2, 0))
    (tmp_path / "model.py").write_text(generate(_export(name, "torch", tmp_path / "src.onnx"), "tf", model=name).code)
    generated = load_model_module(tmp_path / "model.py").build_model()
    mine = _transposes(export_model(generated, "tf", list(inputs.values()), tmp_path / "generated.onnx",
                                    input_names=list(inputs), output_names=spec.output_names))
    theirs = _transposes(_export(name, "tf", tmp_path / "hand.onnx"))
    assert mine <= min(theirs, 2), (mine, theirs)
    torch_code = generate(tmp_path / "hand.onnx", "torch", model=name).code
    assert not any(word in torch_code for word in ("permute", "transpose", ".mT"))


def test_convert_onnx_names_the_users_file_and_reads_its_external_data(onnx_files: dict, tmp_path: Path) -> None:
    import onnx

    from converters.errors import ConversionError
    from parity.convert import convert_onnx

    with pytest.raises(ConversionError, match=f"ONNX file not found: {tmp_path / 'nope.onnx'}"):
        convert_onnx(tmp_path / "nope.onnx", "torch", tmp_path / "out")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ConversionError, match=f"{tmp_path / 'bad.onnx'} is not a readable ONNX model"):
        convert_onnx(tmp_path / "bad.onnx", "torch", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    folder = tmp_path / "split"
    folder.mkdir()
    onnx.save_model(onnx.load(str(onnx_files["cnn", "torch"])), str(folder / "cnn.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="cnn.data", size_threshold=0)
    result = convert_onnx(folder / "cnn.onnx", "torch", tmp_path / "out")
    assert result.passed  # the weights came along: the twin matches ONNX Runtime on the file
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("source")) == ["source.onnx"]
