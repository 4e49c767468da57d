"""Attention models from Keras sources: the generated PyTorch twin of a tf2onnx graph (bert, vit) has
nn.LayerNorm, nn.Linear q/k/v/output layers around scaled dot-product attention, F.gelu and the
class token / position table as nn.Parameters, and computes what the source computes."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo
from converters.codegen import generate
from converters.errors import UnsupportedLayerError
from converters.export import export_model
from zoo.weights import randomize

L, E, HEADS = 6, 8, 2
FLOAT32_MIN = float(np.finfo(np.float32).min)


def _export(name: str, path: Path, fresh: bool = False) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The Keras twin's ONNX file (randomized weights, or Keras's fresh ones: zero biases) and its hints."""
    from converters.codegen import keras_hints

    spec = zoo.get(name, preset="small")
    model = spec.build("tf", 0)
    if not fresh:
        randomize(model, "tf", 0)
    inputs = spec.inputs_for("tf", spec.example_inputs(2, 0))
    return export_model(model, "tf", list(inputs.values()), path, input_names=list(inputs),
                        output_names=spec.output_names, lossless=True), keras_hints(model)


@pytest.fixture(scope="module")
def keras_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The small bert's and vit's Keras twins, exported by tf2onnx; ``bert-fresh``: with zero biases,
    which tf2onnx drops (the Tensordot reshapes then merge into the heads' split)."""
    base = tmp_path_factory.mktemp("codegen-attention-tf")
    found = {name: _export(name, base / f"{name}_tf.onnx") for name in ("bert", "vit")}
    found["bert-fresh"] = _export("bert", base / "bert_fresh_tf.onnx", fresh=True)
    HINTS.update({path: hints for path, hints in found.values()})
    return {name: path for name, (path, _) in found.items()}


HINTS: dict[Path, dict[str, dict[str, Any]]] = {}  # what the Keras source says, per exported file


def _twin(path: Path, tmp_path: Path) -> Any:
    """The generated torch twin of ``path`` with the ONNX file's weights ported into it."""
    from converters.codegen.files import load_model_module
    from converters.port import port_onnx

    code = generate(path, "torch", hints=HINTS.get(path)).code
    (tmp_path / "model.py").write_text(code)
    twin = load_model_module(tmp_path / "model.py").build_model().eval()
    report = port_onnx(path, twin)
    assert report.exact, report
    return twin


def _compare(twin: Any, path: Path, feeds: dict[str, np.ndarray],
             twin_feeds: dict[str, np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(twin's, ONNX Runtime's) outputs; ``twin_feeds``: the inputs in the twin's layout if not the file's."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)
    with torch.no_grad():
        got = twin(*(torch.from_numpy(a) for a in (twin_feeds or feeds).values()))
    got = got if isinstance(got, tuple) else (got,)
    return [(g.numpy(), w) for g, w in zip(got, want, strict=True)]


# -- the zoo's Keras bert and vit, through tf2onnx ----------------------------------------------
@pytest.mark.parametrize("name", ["bert", "vit"])
def test_keras_transformer_becomes_idiomatic_torch(keras_exports: dict, name: str, tmp_path: Path) -> None:
    path = keras_exports[name]
    code = generate(path, "torch", model=name).code
    assert generate(path, "torch", model=name).code == code  # regeneration is byte-identical
    eps = {"bert": "1e-12", "vit": "1e-06"}[name]
    assert code.count(f"nn.LayerNorm(32, eps={eps})") == {"bert": 5, "vit": 5}[name]
    assert code.count("= attention(") == 2 and code.count("F.gelu(") == 2
    assert "torch.erf" not in code and "torch.softmax" not in code  # no transcribed GELU or attention core
    prefix = "encoder_layer_0_attention_self" if name == "bert" else "encoder_layers_encoder_layer_0_self_attention"
    for part in ("query", "key", "value"):
        assert f"self.{prefix}_{part} = nn.Linear(32, 32)" in code
    if name == "bert":  # the padding mask as the source computes it, added to the scores
        assert "attention_mask * -3.4028235e38" in code
        assert "attention(x3, x4, x5, attention_mask, heads=4)" in code
        assert "x2 = torch.ones_like(input_ids)\n        x2 = torch.cumsum(x2, dim=1)" in code  # position ids from the input
    else:
        assert "self.class_token = nn.Parameter(torch.zeros(1, 1, 32))" in code
        assert "self.encoder_pos_embedding = nn.Parameter(torch.zeros(1, 17, 32))" in code
        assert "self.class_token.expand(x.shape[0], -1, -1)" in code
        assert "+ self.encoder_pos_embedding" in code


@pytest.mark.parametrize("name", ["bert", "vit", "bert-fresh"])
def test_ported_twin_computes_what_the_keras_source_exported(keras_exports: dict, name: str, tmp_path: Path) -> None:
    """With the ported weights the generated twin matches ONNX Runtime on the source's file, on
    new inputs (bert: padded sequences, so the mask matters)."""
    if name == "bert-fresh":
        assert "bias=False" not in generate(keras_exports[name], "torch", hints=HINTS[keras_exports[name]]).code
    spec = zoo.get(name.removesuffix("-fresh"), preset="small")
    inputs = spec.example_inputs(3, seed=1)
    feeds = spec.inputs_for("tf", inputs)
    if name == "bert":
        assert (feeds["attention_mask"] == 0).any()
    twin_feeds = spec.inputs_for("torch", inputs)  # vit's image channels-first, as the twin takes it
    for got, want in _compare(_twin(keras_exports[name], tmp_path), keras_exports[name], feeds, twin_feeds):
        tol = spec.tolerance.absolute(float(np.abs(want).max()))  # the zoo model's own, reason in its spec
        np.testing.assert_allclose(got, want, atol=tol, rtol=spec.tolerance.rtol)


def test_generated_code_is_ruff_clean(keras_exports: dict, tmp_path: Path) -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    config = Path(__file__).resolve().parents[1] / "pyproject.toml"
    for name, path in keras_exports.items():
        out = tmp_path / f"{name}.py"
        out.write_text(generate(path, "torch", model=name).code)
        fmt = subprocess.run([ruff, "format", "--check", "--diff", "--config", str(config), str(out)],
                             capture_output=True, text=True)
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr
        lint = subprocess.run([ruff, "check", "--config", str(config), str(out)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr


# -- hand-built graphs in tf2onnx's style: what is recognised, and what is refused -------------
def _dense(name: str, x: str, rng: np.random.Generator, inits: list[Any]) -> tuple[list[Any], str]:
    from onnx import helper, numpy_helper

    inits += [numpy_helper.from_array(rng.normal(0, 0.5, (E, E)).astype(np.float32), f"{name}/kernel:0"),
              numpy_helper.from_array(rng.normal(0, 0.5, E).astype(np.float32), f"{name}/bias:0")]
    return [helper.make_node("MatMul", [x, f"{name}/kernel:0"], [f"model_1/{name}_1/MatMul:0"],
                             name=f"model_1/{name}_1/MatMul"),
            helper.make_node("Add", [f"model_1/{name}_1/MatMul:0", f"{name}/bias:0"], [f"model_1/{name}_1/BiasAdd:0"],
                             name=f"model_1/{name}_1/BiasAdd")], f"model_1/{name}_1/BiasAdd:0"


def _attention_onnx(tmp_path: Path, variant: str = "", scale: float = 0.0) -> Path:
    """Self-attention as tf2onnx writes the zoo's Keras ``self_attention``: Dense q/k/v, heads split by
    Reshape + Transpose, scores scaled, an additive padding mask, Softmax, context, heads merged,
    output Dense. ``variant``: 'mask_first' adds the mask before the scaling; 'unmerged' reshapes the
    context without moving the heads back (both something else than attention's definition)."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    inits: list[Any] = []
    d = E // HEADS
    c = {"split": np.array([-1, L, HEADS, d], np.int64), "merge": np.array([-1, L, E], np.int64),
         "scale": np.array(scale or 1 / math.sqrt(d), np.float32), "one": np.array(1.0, np.float32),
         "min": np.array(FLOAT32_MIN, np.float32), "axes": np.array([1, 2], np.int64)}
    inits += [numpy_helper.from_array(v, k) for k, v in c.items()]
    nodes: list[Any] = []
    outs = {}
    for part in ("query", "key", "value"):
        made, outs[part] = _dense(f"attn.{part}", "x", rng, inits)
        nodes += made

    def node(op: str, ins: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    q = node("Transpose", [node("Reshape", [outs["query"], "split"], "q4")], "qh", perm=[0, 2, 1, 3])
    k = node("Transpose", [node("Reshape", [outs["key"], "split"], "k4")], "kt", perm=[0, 2, 3, 1])
    v = node("Transpose", [node("Reshape", [outs["value"], "split"], "v4")], "vh", perm=[0, 2, 1, 3])
    additive = node("Mul", [node("Unsqueeze", [node("Sub", ["one", "mask"], "keep"), "axes"], "m4"), "min"], "madd")
    scores = node("MatMul", [q, k], "scores")
    if variant == "mask_first":
        logits = node("Mul", [node("Add", [scores, additive], "masked"), "scale"], "scaled")
    else:
        logits = node("Add", [node("Mul", [scores, "scale"], "scaled"), additive], "masked")
    context = node("MatMul", [node("Softmax", [logits], "probs", axis=-1), v], "context")
    merged = context if variant == "unmerged" else node("Transpose", [context], "ctx_t", perm=[0, 2, 1, 3])
    made, y = _dense("attn.out", node("Reshape", [merged, "merge"], "ctx"), rng, inits)
    nodes += made
    nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, L, E]),
                                                   helper.make_tensor_value_info("mask", TensorProto.FLOAT, [None, L])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, L, E])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tf2onnx")
    path = tmp_path / f"attention{variant}.onnx"
    save(model, str(path))
    return path


def _attention_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    mask = np.ones((3, L), np.float32)
    mask[1, 4:] = mask[2, 2:] = 0  # padded sequences
    return {"x": rng.normal(0, 1, (3, L, E)).astype(np.float32), "mask": mask}


@pytest.mark.parametrize("scale", [0.0, 0.25], ids=["default-scale", "scale-0.25"])
def test_attention_subgraph_becomes_scaled_dot_product_attention(tmp_path: Path, scale: float) -> None:
    path = _attention_onnx(tmp_path, scale=scale)
    code = generate(path, "torch").code
    given = "" if not scale else ", scale=0.25"  # 1/sqrt(head size) is scaled_dot_product_attention's own
    assert f"x1 = attention(x1, x2, x, mask, heads={HEADS}{given})" in code
    assert "self.attn_out = nn.Linear(8, 8)" in code and "softmax" not in code
    for got, want in _compare(_twin(path, tmp_path), path, _attention_feeds()):
        # float32 matmuls over 8 features and a softmax: a few ulps of the output scale (~1e-6)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("variant", "why"), [("mask_first", "do not compute softmax"),
                                              ("unmerged", "do not compute softmax")])
def test_what_is_not_attention_is_refused(tmp_path: Path, variant: str, why: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=why):
        generate(_attention_onnx(tmp_path, variant), "torch")


def _gelu_onnx(tmp_path: Path, form: str, half: float = 0.5) -> Path:
    """A Dense then GELU in tf2onnx's spelling: 'erf' is Keras's exact gelu,
    ``0.5 x * erfc(-x / sqrt 2)``; 'tanh' the approximation; ``half`` replaces its 0.5."""
    from onnx import TensorProto, helper, numpy_helper, save

    inits: list[Any] = []
    nodes, x = _dense("fc", "x", np.random.default_rng(0), inits)
    consts = {"half": half, "rsqrt2": 1 / math.sqrt(2), "one": 1.0, "c": math.sqrt(2 / math.pi), "k": 0.044715,
              "three": 3.0}
    inits += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]

    def node(op: str, ins: list[str], out: str) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=f"model_1/Gelu/{out}"))
        return out

    if form == "erf":
        erfc = node("Sub", ["one", node("Erf", [node("Mul", [node("Neg", [x], "neg"), "rsqrt2"], "m1")], "erf")], "erfc")
        y = node("Mul", [node("Mul", ["half", x], "m0"), erfc], "y")
    else:
        cube = node("Mul", ["k", node("Pow", [x, "three"], "pow")], "cube")
        inner = node("Mul", ["c", node("Add", [x, cube], "sum")], "inner")
        y = node("Mul", [node("Mul", [x, "half"], "m0"), node("Add", ["one", node("Tanh", [inner], "tanh")], "t1")],
                 "y")
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, E])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [None, E])], inits)
    path = tmp_path / f"gelu_{form}_{half}.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tf2onnx"), str(path))
    return path


@pytest.mark.parametrize(("form", "half", "call"), [("erf", 0.5, "F.gelu(x)"),
                                                   ("tanh", 0.5, 'F.gelu(x, approximate="tanh")'),
                                                   ("erf", 0.6, "torch.erf(")])
def test_gelu_is_recognised_by_its_values(tmp_path: Path, form: str, half: float, call: str) -> None:
    """Exact and tanh GELU become F.gelu; the same ops with another constant are not GELU and are
    written as they are. Each twin matches ONNX Runtime."""
    path = _gelu_onnx(tmp_path, form, half)
    code = generate(path, "torch").code
    assert call in code
    assert ("F.gelu" in code) == (half == 0.5)
    x = np.random.default_rng(2).normal(0, 2, (4, E)).astype(np.float32)
    for got, want in _compare(_twin(path, tmp_path), path, {"x": x}):
        # the twin's GELU against ONNX Runtime's erf/tanh ops: float32 rounding of values of size ~5
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


# -- a Keras MultiHeadAttention (tf2onnx: its einsums as MatMuls between 5-D reshapes) ---------
def _mha_block() -> Any:
    """Keras MultiHeadAttention with a boolean padding mask, then a Dense with GELU on the sequence;
    fresh weights, so tf2onnx drops every all-zero bias."""
    import keras

    x = keras.Input((L, E), name="x")
    mask = keras.Input((L,), name="mask", dtype="int64")
    y = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=E // HEADS, name="mha")(
        x, x, attention_mask=keras.ops.cast(mask[:, None, :], "bool"))
    y = keras.layers.LayerNormalization(name="ln")(y + x)
    return keras.Model([x, mask], keras.layers.Dense(E, activation="gelu", name="ffn")(y), name="mha_block")


def test_keras_multi_head_attention_becomes_linears_around_attention(tmp_path: Path) -> None:
    from converters.codegen import keras_hints
    from converters.codegen.files import load_model_module
    from converters.port import port_onnx

    model = _mha_block()
    rng = np.random.default_rng(0)
    for w in model.weights:  # non-zero biases, different projections
        w.assign(rng.normal(0, 0.5, w.shape).astype(np.float32))
    feeds = _attention_feeds()
    feeds = {"x": feeds["x"], "mask": feeds["mask"].astype(np.int64)}
    path = export_model(model, "tf", list(feeds.values()), tmp_path / "mha.onnx", input_names=list(feeds),
                        output_names=["y"], lossless=True)
    code = generate(path, "torch", model="mha_block", hints=keras_hints(model)).code
    for part in ("query", "key", "value"):
        assert f"self.mha_{part} = nn.Linear(8, 8)" in code
    assert "self.mha = nn.Linear(8, 8)" in code  # the output projection: its output is the Keras layer's
    assert f"x1 = attention(x1, x2, x3, mask, heads={HEADS})" in code and "mask = mask.to(torch.bool)" in code
    assert "self.ffn = nn.Linear(8, 8)" in code and "x1 = F.gelu(x1)" in code
    (tmp_path / "model.py").write_text(code)
    twin = load_model_module(tmp_path / "model.py").build_model().eval()
    assert port_onnx(path, twin).exact
    want = np.asarray(model(list(feeds.values())))
    for got, ort_out in _compare(twin, path, feeds):
        # float32 matmuls over 8 features, a softmax and a LayerNorm: a few ulps of outputs of size ~3
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(ort_out, want, atol=1e-5, rtol=1e-5)
    assert generate(path, "torch", model="mha_block", hints=keras_hints(model)).code == code  # byte-identical
    fresh = _mha_block()  # zero biases, which tf2onnx drops: the Keras layers say they have them
    path = export_model(fresh, "tf", list(feeds.values()), tmp_path / "fresh.onnx", input_names=list(feeds),
                        output_names=["y"], lossless=True)
    assert "bias=False" in generate(path, "torch").code
    assert "bias=False" not in generate(path, "torch", hints=keras_hints(fresh)).code


# -- end to end (slow: builds, exports, ports and checks on four runtimes) ---------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "vit"])
def test_generated_twin_from_keras_passes_parity(name: str, tmp_path: Path) -> None:
    from parity.convert import convert_zoo

    out = tmp_path / "twin"
    result = convert_zoo(name, out, source="tf", layers=True, grads=True, train_steps=3)
    assert result.passed
    labels = {c.a for c in result.result.comparisons}
    assert labels == {"torch", "ort-torch", "ort-tf"}
    for c in result.result.comparisons:
        assert c.max_abs <= c.atol, c  # the zoo model's own tolerance, with its reason in the spec
    r = result.result
    assert r.layers.passed and r.layers.first_divergence is None
    assert r.gradients.passed and r.training.passed
    again = convert_zoo(name, tmp_path / "again", source="tf")
    assert again.code == result.code  # regenerating an unchanged model: a byte-identical model.py


@pytest.mark.slow
def test_keras_multi_head_attention_converts_with_fresh_weights(tmp_path: Path) -> None:
    """Fresh Keras weights (zero biases, which tf2onnx drops): the twin still has the biases, so gradients
    and training pair every parameter."""
    from parity.convert import convert_models

    feeds = _attention_feeds()
    inputs = {"x": feeds["x"], "mask": feeds["mask"].astype(np.int64)}
    result = convert_models(_mha_block(), inputs, tmp_path / "twin", layers=True, grads=True, train_steps=3)
    assert result.passed
    r = result.result
    assert r.layers.passed and r.gradients.passed and r.training.passed
    assert "bias=False" not in result.code
