"""Where a check's source model comes from other than a seeded zoo twin: a published checkpoint.

The checkpoint's weights go into the torch twin (``converters.checkpoints``); a BERT
checkpoint brings its tokenizer (real texts) and its sentence-embedding pooling, and the
pooled embeddings of every runtime are compared too (``parity.check.text``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity.check import text
from parity.check.results import CheckOptions
from parity.check.text import EMBEDDING_TOLERANCE, MIN_COSINE, compare_embeddings, pool
from parity.compare import Comparison
from parity.errors import UsageError


@dataclass
class CheckpointSource:
    """The imported torch twin, its inputs, and what to say about them."""

    spec: Any
    model: Any
    inputs: dict[str, np.ndarray]
    imported: Any
    pooling: Any = None  # parity.check.text.Pooling for bert: sentence embeddings are compared too
    texts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        d = {"import": self.imported.to_dict(), "texts": self.texts}
        if self.pooling is not None:
            d["pooling"] = self.pooling.describe()
        return d


def checkpoint_source(options: CheckOptions, spec: Any, progress: Callable[[str], None]) -> CheckpointSource:
    """The imported torch twin and its inputs; a given ``spec`` lends its builders (tests plant bugs so)."""
    from converters.checkpoints import FORMATS, HF_FORMAT, import_checkpoint

    path = Path(options.checkpoint)  # type: ignore[arg-type]
    hf = FORMATS.get(options.model) == HF_FORMAT
    if options.texts and not hf:
        raise UsageError(f"--text/--text-file are for bert checkpoints, not {options.model!r}")
    progress(f"importing the checkpoint {path} into the {options.model} twin")
    batch = text.encode(path, options.texts) if options.texts else None
    if batch is not None and hf:
        check_token_ids(batch.inputs, path)
    if hf:
        imported = import_checkpoint(options.model, path, **({"seq_len": batch.seq_len} if batch else {}))
    else:
        imported = import_checkpoint(options.model, path, preset=options.preset)
    for line in imported.summary():
        progress(line.strip())
    ckpt_spec = imported.spec
    if spec is not None:
        ckpt_spec = dataclasses.replace(ckpt_spec, torch_builder=spec.torch_builder,
                                        keras_builder=spec.keras_builder)
    notes = [f"weights imported from {imported.path} ({imported.format}); not randomized", *imported.notes]
    if batch is not None:
        notes.append(f"{len(batch.texts)} texts tokenised with the checkpoint's tokenizer.json, padded to "
                     f"{batch.seq_len} tokens (truncation at {batch.max_length})")
        if batch.truncated:
            notes.append(f"texts {batch.truncated} were truncated to {batch.max_length} tokens")
        inputs = batch.inputs
    else:
        inputs = ckpt_spec.example_inputs(options.batch, options.seed)
    pooling = text.read_pooling(path) if hf else None
    if pooling is not None:
        notes.append(f"sentence embeddings: {pooling.describe()}")
    return CheckpointSource(spec=ckpt_spec, model=imported.model, inputs=inputs, imported=imported, pooling=pooling,
                       texts=batch.texts if batch else [], notes=notes)


def compare_checkpoint_embeddings(ckpt: CheckpointSource, outputs: dict[str, dict[str, np.ndarray]], src: str,
                        info: dict[str, Any]) -> list[Comparison]:
    """Pool every runtime's last_hidden_state as the checkpoint declares and compare the embeddings."""
    mask = ckpt.inputs["attention_mask"]
    for label in outputs:
        outputs[label]["embedding"] = pool(outputs[label]["last_hidden_state"], mask, ckpt.pooling)
    info["embedding"] = {"atol": EMBEDDING_TOLERANCE.atol, "min_cosine_per_sentence": MIN_COSINE,
                         "reason": EMBEDDING_TOLERANCE.reason, "pooling": ckpt.pooling.describe()}
    return [compare_embeddings(outputs[label]["embedding"], outputs[src]["embedding"], a=label, b=src)
            for label in ("torch", "tf", "ort-torch", "ort-tf") if label != src]


def check_token_ids(inputs: dict[str, np.ndarray], path: Path) -> None:
    """Token ids beyond config.json's vocabulary would index past the embedding table: refuse them first."""
    import json

    from converters.checkpoints import bert_config_overrides

    config_path = (path if path.is_dir() else path.parent) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        return  # the import names what is wrong with the file
    if not isinstance(config, dict):
        return
    sizes = bert_config_overrides(config, str(config_path))
    for name, limit in (("input_ids", sizes["vocab"]), ("token_type_ids", sizes["type_vocab"])):
        ids = inputs.get(name)
        if ids is None or ids.size == 0:
            continue
        top, low = int(ids.max()), int(ids.min())
        if top >= limit or low < 0:
            raise UsageError(f"checkpoint {path}: the tokenizer produced {name} up to {top} (lowest {low}), but "
                             f"config.json allows 0..{limit - 1}; tokenizer.json and config.json come from "
                             "different models")
