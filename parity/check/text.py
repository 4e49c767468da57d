"""Real text inputs for BERT checkpoints: the checkpoint's own tokenizer, and the pooling it declares.

``encode(folder, texts)`` tokenises with the folder's ``tokenizer.json`` (the
``tokenizers`` package), pads to the batch's longest text and truncates to what the
checkpoint allows (``max_position_embeddings``, or sentence-transformers'
``max_seq_length`` when it declares a smaller one). ``read_pooling(folder)`` reads the
sentence-transformers modules (``modules.json``, ``1_Pooling/config.json``, a
``Normalize`` module) and ``pool`` applies them to ``last_hidden_state``, so that every
runtime's hidden states become the sentence embeddings the checkpoint's users see.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.compare import Comparison, compare
from parity.errors import UsageError
from zoo.spec import Tolerance

# ST's order when several modes are on (their outputs are concatenated)
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")

EMBEDDING_TOLERANCE = Tolerance(
    atol=1e-5,
    rtol=0.0,
    scale_relative=False,
    reason=(
        "sentence embeddings, absolute (unit-normalised ones have components <= ~0.3): pooling averages float32 "
        "hidden states whose runtime-to-runtime gaps come from summation order (matmuls with K <= intermediate, "
        "softmax, LayerNorm); all-MiniLM-L6-v2 on 24 real sentences measured <= 3.0e-7 between torch, Keras, "
        "ONNX Runtime and sentence-transformers on CPU, so 1e-5 leaves >30x, while a Keras-default LayerNorm "
        "epsilon (1e-3) moves them by 8e-3"
    ),
)
MIN_COSINE = 0.99999  # per sentence; embeddings are compared by cosine similarity downstream


@dataclass(frozen=True)
class Pooling:
    """How token states become a sentence embedding, as the checkpoint declares it."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    declared_in: str = "default (no sentence-transformers modules.json): mean over valid tokens"

    def describe(self) -> str:
        return f"{'+'.join(self.modes)} pooling{', L2-normalised' if self.normalize else ''} ({self.declared_in})"


@dataclass
class TextBatch:
    """Tokenised texts in one padded batch: the BERT twin's three inputs (int64, torch layout)."""

    texts: list[str]
    inputs: dict[str, np.ndarray]
    max_length: int
    truncated: list[int] = field(default_factory=list)  # indices of texts cut to max_length

    @property
    def seq_len(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    @property
    def attention_mask(self) -> np.ndarray:
        return self.inputs["attention_mask"]


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it as JSON ({exc})") from exc


def max_length(folder: str | Path) -> int:
    """Longest token sequence the checkpoint takes: max positions, or ST's smaller max_seq_length."""
    folder = _folder(folder)
    limit = None
    if (folder / "config.json").is_file():
        limit = _json(folder / "config.json").get("max_position_embeddings")
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        declared = _json(st).get("max_seq_length")
        if declared:
            limit = min(limit, declared) if limit else declared
    return int(limit or 512)


def load_tokenizer(folder: str | Path, limit: int | None = None) -> Any:
    """The folder's tokenizer.json, padding to the batch's longest and truncating to ``limit``."""
    from tokenizers import Tokenizer

    folder = _folder(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"{folder}: no tokenizer.json; real text needs the checkpoint's own (fast) tokenizer")
    tokenizer = Tokenizer.from_file(str(path))
    pad = tokenizer.padding or {}  # the file may pad to a fixed length: keep its pad token, pad to the longest
    pad_token = pad.get("pad_token", "[PAD]")
    pad_id = pad.get("pad_id", tokenizer.token_to_id(pad_token))
    if pad_id is None:
        raise UsageError(f"{path}: no padding token ({pad_token!r} is not in the vocabulary)")
    tokenizer.no_padding()
    tokenizer.enable_padding(pad_id=pad_id, pad_type_id=pad.get("pad_type_id", 0), pad_token=pad_token,
                             direction="right")
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=limit or max_length(folder))
    return tokenizer


def encode(folder: str | Path, texts: list[str] | tuple[str, ...]) -> TextBatch:
    """Tokenise ``texts`` into one padded batch with the checkpoint's tokenizer."""
    texts = list(texts)
    if not texts:
        raise UsageError("no texts to tokenise: give --text (repeatable) or --text-file")
    limit = max_length(folder)
    encodings = load_tokenizer(folder, limit).encode_batch(texts)
    inputs = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
    truncated = [i for i, e in enumerate(encodings) if e.overflowing]
    return TextBatch(texts=texts, inputs=inputs, max_length=limit, truncated=truncated)


def read_texts(path: str | Path) -> list[str]:
    """One text per non-empty line of a UTF-8 file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--text-file {path}: cannot read it ({exc})") from exc
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise UsageError(f"--text-file {path}: no non-empty lines")
    return texts


def read_pooling(folder: str | Path) -> Pooling:
    """The pooling a sentence-transformers folder declares (modules.json); mean pooling otherwise."""
    folder = _folder(folder)
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return Pooling()
    modules = _json(modules_path)
    pooling = next((m for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    unknown = [m.get("type") for m in modules
               if not str(m.get("type", "")).endswith((".Transformer", ".Pooling", ".Normalize"))]
    if unknown:
        raise UsageError(f"{modules_path}: modules {unknown} after the transformer are not supported "
                         "(only Pooling and Normalize)")
    if pooling is None:
        return Pooling(modes=("mean",), normalize=normalize, declared_in=f"{modules_path.name} has no Pooling: mean")
    config_path = folder / pooling.get("path", "") / "config.json"
    config = _json(config_path)
    if isinstance(config.get("pooling_mode"), str):  # newer sentence-transformers write one string
        modes = [config["pooling_mode"].replace("_tokens", "")]
    else:
        modes = [key[len("pooling_mode_"):].replace("_tokens", "")
                 for key, on in config.items() if key.startswith("pooling_mode_") and on]
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if unsupported or not modes:
        raise UsageError(f"{config_path}: pooling {unsupported or 'none'} is not supported; supported: "
                         f"{', '.join(POOLING_MODES)}")
    ordered = tuple(m for m in POOLING_MODES if m in modes)
    where = str(config_path.relative_to(folder)) + (" + Normalize" if normalize else "")
    return Pooling(modes=ordered, normalize=normalize, declared_in=where)


def pool(hidden: np.ndarray, attention_mask: np.ndarray, pooling: Pooling) -> np.ndarray:
    """(B, L, H) token states -> (B, H * modes) sentence embeddings over valid tokens (float32)."""
    h = np.asarray(hidden, dtype=np.float64)
    mask = np.asarray(attention_mask, dtype=np.float64)[:, :, None]
    count = np.maximum(mask.sum(axis=1), 1e-9)  # as sentence-transformers clamps it
    parts = []
    for mode in pooling.modes:
        if mode == "cls":
            parts.append(h[:, 0])
        elif mode == "max":
            parts.append(np.where(mask > 0, h, -1e9).max(axis=1))
        elif mode == "mean":
            parts.append((h * mask).sum(axis=1) / count)
        else:  # mean_sqrt_len
            parts.append((h * mask).sum(axis=1) / np.sqrt(count))
    out = np.concatenate(parts, axis=1)
    if pooling.normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # F.normalize's eps
    return out.astype(np.float32)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (float64)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return (x * y).sum(axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)


def compare_embeddings(actual: np.ndarray, expected: np.ndarray, *, a: str, b: str,
                       tolerance: Tolerance = EMBEDDING_TOLERANCE, min_cosine: float = MIN_COSINE,
                       output: str = "embedding") -> Comparison:
    """Element-wise comparison at ``tolerance`` plus a per-sentence cosine floor; both must hold.

    The result's ``cosine`` is the *lowest per-sentence* cosine similarity (not the cosine of
    the flattened batch), so a table shows the number the floor is checked against.
    """
    scale = float(np.abs(expected).max()) if np.size(expected) else 0.0
    c = compare(actual, expected, atol=tolerance.absolute(scale), rtol=tolerance.rtol, a=a, b=b, output=output)
    if c.problem:
        return c
    cos = row_cosines(actual, expected)
    worst = int(np.argmin(cos))
    note = f"per-sentence cosine: min {cos[worst]:.8f} (sentence {worst}), floor {min_cosine}"
    if cos[worst] >= min_cosine:
        return dataclasses.replace(c, cosine=float(cos[worst]), notes=[*c.notes, note])
    problem = (f"{a} vs {b} [{output}]: sentence {worst} has cosine similarity {cos[worst]:.8f} < {min_cosine} "
               f"({int((cos < min_cosine).sum())} of {len(cos)} sentences below the floor)")
    return dataclasses.replace(c, passed=False, cosine=float(cos[worst]), notes=[*c.notes, note],
                               problem=problem if c.passed else None)
