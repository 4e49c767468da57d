"""Import published checkpoints into zoo twins: ``load_checkpoint(name, path) -> (spec, torch_model)``.

Two formats:

- **Hugging Face BERT** (``bert``): a folder with ``config.json`` and ``model.safetensors``
  (or ``pytorch_model.bin``, read with ``weights_only=True``). The config's sizes,
  ``layer_norm_eps``, ``hidden_act`` and vocabulary become the twin's config, so the
  twin *is* the checkpoint's architecture; its keys map by name (the twin uses Hugging
  Face's names), after stripping a ``bert.`` prefix (``BertFor...`` models).
- **torchvision state dicts** (``resnet18``, ``resnet50``, ``mobilenet_v2``): a
  ``.safetensors`` file, or a ``.pth``/``.pt`` file read with ``torch.load(weights_only=True)``
  (never unpickled). A state dict holds no config, so the twin is built at ``preset``
  (default ``standard``, torchvision's sizes) and every tensor must fit it.

Every checkpoint key is either consumed (copied into the twin parameter it maps to) or
reported as unused with a reason (``num_batches_tracked``, the ``position_ids`` buffer,
pre-training and task heads). A checkpoint of another architecture or size raises
:class:`~converters.errors.WeightMappingError` naming the first mismatching key (in the
twin's order) and both shapes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.errors import ConversionError, UnsupportedLayerError, WeightMappingError

HF_FORMAT = "huggingface-bert"
TORCHVISION_FORMAT = "torchvision"
FORMATS = {"bert": HF_FORMAT, "resnet18": TORCHVISION_FORMAT, "resnet50": TORCHVISION_FORMAT,
           "mobilenet_v2": TORCHVISION_FORMAT}

# Hugging Face config key -> BertConfig field (the sizes that shape the weights)
HF_BERT_FIELDS = {
    "vocab_size": "vocab",
    "hidden_size": "hidden",
    "num_hidden_layers": "layers",
    "num_attention_heads": "heads",
    "intermediate_size": "intermediate",
    "max_position_embeddings": "max_positions",
    "type_vocab_size": "type_vocab",
    "layer_norm_eps": "layer_norm_eps",
}
MAX_CONFIG_SIZE = 10_000_000  # any one size field (the largest vocabularies have ~250k entries)
MAX_PARAMETERS = 2_000_000_000  # BERT-large has 340M; beyond 2B (8 GiB float32) a config is corrupt or hostile
DEFAULT_SEQ_LEN = 128  # the twin's fixed sequence length when the caller gives none (capped by max positions)

# (pattern on the checkpoint key, reason) for keys that are deliberately not loaded
_UNUSED = (
    (re.compile(r"(^|\.)num_batches_tracked$"),
     "BatchNorm's training step counter: no effect in eval mode (the twin's momentum is fixed) "
     "and Keras has no counterpart"),
    (re.compile(r"^embeddings\.position_ids$"),
     "buffer holding 0..max_positions-1: the twin computes the positions from the input length"),
    (re.compile(r"^embeddings\.token_type_ids$"),
     "buffer of default (all-zero) token types: the twin takes token_type_ids as an input"),
    (re.compile(r"^cls\."),
     "pre-training head (masked-LM / next-sentence prediction): not part of the encoder the twin models"),
)
_BERT_ENCODER = re.compile(r"^(embeddings|encoder|pooler)\.")


@dataclass
class ImportedCheckpoint:
    """What an import did: the twin, and where every checkpoint key went."""

    name: str
    path: str
    format: str
    spec: Any = field(repr=False)
    model: Any = field(repr=False)
    consumed: dict[str, str] = field(default_factory=dict)  # checkpoint key -> twin parameter
    unused: dict[str, str] = field(default_factory=dict)  # checkpoint key -> reason
    missing: dict[str, str] = field(default_factory=dict)  # twin parameter -> why it is allowed to be absent
    notes: list[str] = field(default_factory=list)

    @property
    def renamed(self) -> dict[str, str]:
        return {k: v for k, v in self.consumed.items() if k != v}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "path": self.path, "format": self.format, "preset": self.spec.preset,
                "config": dataclasses.asdict(self.spec.config), "consumed": self.consumed,
                "unused": self.unused, "missing": self.missing, "notes": self.notes}

    def summary(self) -> list[str]:
        """Human-readable lines: counts, renamed keys, unused and missing keys with reasons."""
        lines = [f"imported {self.path} ({self.format}) into the {self.name} twin ({self.spec.preset}): "
                 f"{len(self.consumed)} tensors consumed ({len(self.renamed)} renamed), "
                 f"{len(self.unused)} unused, {len(self.missing)} missing"]
        lines += [f"  renamed  {k} -> {v}" for k, v in self.renamed.items()]
        by_reason: dict[str, list[str]] = {}
        for key, why in self.unused.items():
            by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            what = keys[0] if len(keys) == 1 else f"{len(keys)} keys ({keys[0]}, ...)"
            lines.append(f"  unused   {what}: {why}")
        lines += [f"  missing  {k}: {why}" for k, why in self.missing.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return lines


def load_checkpoint(name: str, path: str | Path, *, preset: str | None = None,
                    **overrides: Any) -> tuple[Any, Any]:
    """The zoo spec fitting the checkpoint at ``path`` and the torch twin holding its weights (eval mode).

    ``preset``/``overrides``: the twin's size for state-dict formats (default preset
    ``standard``); for a Hugging Face folder the config decides and ``overrides`` may set
    ``seq_len`` (the Keras twin's fixed sequence length). See :func:`import_checkpoint`
    for the record of which key went where.
    """
    imported = import_checkpoint(name, path, preset=preset, **overrides)
    return imported.spec, imported.model


def import_checkpoint(name: str, path: str | Path, *, preset: str | None = None,
                      **overrides: Any) -> ImportedCheckpoint:
    """Like :func:`load_checkpoint`, returning the full record (consumed, unused, missing keys)."""
    if name not in FORMATS:
        import zoo

        known = ", ".join(f"{k} ({v})" for k, v in FORMATS.items())
        hint = "" if name in zoo.names() else f"; {name!r} is not a zoo model either"
        raise ConversionError(f"no checkpoint format is known for model {name!r}; supported: {known}{hint}")
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"checkpoint {path}: no such file or folder")
    if FORMATS[name] == HF_FORMAT:
        return _import_hf_bert(path, preset, overrides)
    return _import_torchvision(name, path, preset, overrides)


# --- reading ----------------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a .safetensors file, or of a .pth/.pt/.bin file loaded without unpickling code."""
    import torch

    if path.is_dir():
        raise ConversionError(f"checkpoint {path} is a folder; this format needs a .safetensors or .pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        if path.suffix in (".pth", ".pt", ".bin"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickle code
        else:
            raise ConversionError(f"checkpoint {path}: expected a .safetensors, .pth, .pt or .bin file")
    except ConversionError:
        raise
    except Exception as exc:  # corrupt file, or a pickle that needs code: the user's input, not our bug
        raise ConversionError(f"checkpoint {path}: cannot read it as a state dict ({type(exc).__name__}: "
                              f"{exc}); only tensors are loaded (weights_only=True)") from exc
    for wrapper in ("state_dict", "model"):  # training scripts often nest the state dict
        if isinstance(state, Mapping) and set(state) == {wrapper}:
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"checkpoint {path}: expected a flat mapping of names to tensors (a state dict)")
    return dict(state)


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


# --- mapping ----------------------------------------------------------------------------------


def _fill(imported: ImportedCheckpoint, state: dict[str, Any], normalize: Any,
          optional: Mapping[str, str], unknown_reason: Any) -> None:
    """Map ``state`` onto the twin; record every key; raise at the first key that does not fit.

    ``normalize(key) -> twin key``; ``optional``: twin-parameter prefix -> reason it may be
    absent; ``unknown_reason(twin_key) -> reason or None``: keys the twin lacks that are
    harmless (heads) get a reason, the rest are an architecture mismatch.
    """
    import torch

    model = imported.model
    twin = model.state_dict()
    by_twin: dict[str, tuple[str, Any]] = {}
    leftovers: list[tuple[str, str]] = []
    for key, tensor in state.items():
        mapped = normalize(key)
        reason = next((why for pattern, why in _UNUSED if pattern.search(mapped)), None)
        if reason is not None:
            imported.unused[key] = reason
        elif mapped in twin:
            if mapped in by_twin:
                raise WeightMappingError(f"checkpoint {imported.path}: keys {by_twin[mapped][0]!r} and {key!r} "
                                         f"both map to the twin's {mapped!r}")
            by_twin[mapped] = (key, tensor)
        else:
            leftovers.append((key, mapped))

    where = f"checkpoint {imported.path} does not fit the {imported.name} twin ({_describe(imported.spec)})"
    new_state = {}
    for tkey, value in twin.items():
        if tkey.endswith("num_batches_tracked"):
            new_state[tkey] = value  # reported as unused when present; not a weight
            continue
        if tkey not in by_twin:
            why = next((r for prefix, r in optional.items() if tkey.startswith(prefix)), None)
            if why is None:
                raise WeightMappingError(
                    f"{where}: first mismatching key {tkey!r}: missing from the checkpoint (twin shape "
                    f"{_shape(value)}). Is it a {imported.name} checkpoint?")
            imported.missing[tkey] = why
            new_state[tkey] = value
            continue
        key, tensor = by_twin[tkey]
        if _shape(tensor) != _shape(value):
            raise WeightMappingError(
                f"{where}: first mismatching key {key!r}: checkpoint shape {_shape(tensor)} vs twin shape "
                f"{_shape(value)}{f' (twin key {tkey!r})' if tkey != key else ''}. "
                "A checkpoint of another size or architecture"
                + (", or pass the preset/config that fits it" if imported.format == TORCHVISION_FORMAT else ""))
        if tensor.dtype != value.dtype:
            note = f"tensors cast from {tensor.dtype} to the twin's {value.dtype}"
            if note not in imported.notes:
                imported.notes.append(note)
        new_state[tkey] = tensor.to(value.dtype)
        imported.consumed[key] = tkey
    for key, mapped in leftovers:
        reason = unknown_reason(mapped)
        if reason is None:
            raise WeightMappingError(
                f"{where}: first mismatching key {key!r} (shape {_shape(state[key])}) has no counterpart in the "
                "twin: a checkpoint of another architecture")
        imported.unused[key] = reason
    with torch.no_grad():
        model.load_state_dict(new_state, strict=True)
    model.eval()


def _describe(spec: Any) -> str:
    cfg = ", ".join(f"{f.name}={getattr(spec.config, f.name)}" for f in dataclasses.fields(spec.config))
    return f"preset {spec.preset!r}: {cfg}"


# --- Hugging Face BERT ------------------------------------------------------------------------


def bert_config_overrides(config: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The twin's BertConfig fields from a Hugging Face BERT ``config.json``; unsupported variants raise."""
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise WeightMappingError(f"{source}: model_type {model_type!r} is not 'bert' (the twin is BertModel; "
                                 "RoBERTa and others offset positions or differ otherwise)")
    missing = [k for k in HF_BERT_FIELDS if k not in config and k != "layer_norm_eps"]
    if missing:
        raise ConversionError(f"{source}: missing {missing}; a Hugging Face BERT config has {list(HF_BERT_FIELDS)}")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise UnsupportedLayerError(
            f"{source}: hidden_act {act!r} is not supported; the twin uses exact (erf) GELU, Hugging Face's 'gelu' "
            "('gelu_new'/'gelu_pytorch_tanh' are the tanh form, which differs by up to 5e-4 per layer)")
    pos = config.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise UnsupportedLayerError(f"{source}: position_embedding_type {pos!r} is not supported (the twin "
                                    "has absolute position embeddings)")
    out = {field_: _config_int(config, key, source) for key, field_ in HF_BERT_FIELDS.items()
           if key in config and key != "layer_norm_eps"}
    eps = config.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ConversionError(f"{source}: layer_norm_eps must be a number in (0, 1), got {eps!r}")
    out["layer_norm_eps"] = float(eps)
    if out["hidden"] % out["heads"]:
        raise ConversionError(f"{source}: hidden_size {out['hidden']} is not divisible by num_attention_heads "
                              f"{out['heads']}; the config is not a BERT model's")
    h = out["hidden"]
    params = (out["vocab"] + out["max_positions"] + out["type_vocab"]) * h \
        + out["layers"] * (4 * h * h + 2 * h * out["intermediate"])
    if params > MAX_PARAMETERS:
        raise ConversionError(f"{source}: these sizes mean about {params / 1e9:.1f} billion parameters "
                              f"({params * 4 / 2**30:.0f} GiB in float32), over the limit of {MAX_PARAMETERS / 1e9:g} "
                              "billion; the config is corrupt or not a BERT checkpoint this tool can hold")
    return out


def _config_int(config: Mapping[str, Any], key: str, source: str) -> int:
    """A positive integer size from the config, within a sane bound, or one clear error."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConversionError(f"{source}: {key} must be an integer, got {value!r} ({type(value).__name__})")
    if not 1 <= value <= MAX_CONFIG_SIZE:
        raise ConversionError(f"{source}: {key} must be in 1..{MAX_CONFIG_SIZE:,}, got {value:,}")
    return value


def _hf_weights_file(path: Path) -> tuple[Path, Path]:
    """(config.json, weights file) of a Hugging Face folder (or of the weights file inside one)."""
    folder = path if path.is_dir() else path.parent
    config = folder / "config.json"
    if not config.is_file():
        raise ConversionError(f"checkpoint {path}: no config.json in {folder}; a Hugging Face BERT folder has "
                              "config.json and model.safetensors")
    if path.is_file():
        return config, path
    for candidate in ("model.safetensors", "pytorch_model.bin"):
        if (folder / candidate).is_file():
            return config, folder / candidate
    raise ConversionError(f"checkpoint {path}: no model.safetensors (or pytorch_model.bin) in {folder}")


def _bert_key(key: str) -> str:
    for prefix in ("module.", "bert.", "model."):
        if key.startswith(prefix) and _BERT_ENCODER.match(key[len(prefix):]):
            key = key[len(prefix):]
    # checkpoints from the TensorFlow era name LayerNorm's parameters gamma/beta
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))


def _bert_head_reason(key: str) -> str | None:
    if _BERT_ENCODER.match(key):
        return None  # inside the encoder but not in the twin: another architecture
    return ("task head on top of the encoder (BertFor... model): not part of the twin, which is BertModel "
            "(last_hidden_state, pooler_output)")


def _import_hf_bert(path: Path, preset: str | None, overrides: dict[str, Any]) -> ImportedCheckpoint:
    import zoo

    config_path, weights = _hf_weights_file(path)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{config_path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ConversionError(f"{config_path}: expected a JSON object of BERT settings, got a JSON "
                              f"{type(config).__name__}")
    fields = bert_config_overrides(config, str(config_path))
    extra = dict(overrides)
    fields["seq_len"] = int(extra.pop("seq_len", min(DEFAULT_SEQ_LEN, fields["max_positions"])))
    if extra:
        raise ConversionError(f"a Hugging Face BERT checkpoint takes its config from config.json; only seq_len "
                              f"can be set, got {sorted(extra)}")
    try:
        spec = zoo.get("bert", preset="standard", **fields)
    except ValueError as exc:
        raise ConversionError(f"{config_path}: {exc}") from exc
    label = f"checkpoint:{config_path.parent.name}"
    spec = dataclasses.replace(spec, preset=label)
    imported = ImportedCheckpoint(name="bert", path=str(weights), format=HF_FORMAT, spec=spec,
                                  model=spec.build_torch(0))
    if preset is not None:
        imported.notes.append(f"preset {preset!r} ignored: the config comes from {config_path.name}")
    state = read_state_dict(weights)
    _fill(imported, state, _bert_key,
          optional={"pooler.": "the checkpoint has no pooler (a BertFor... model without one): the twin's "
                               "pooler keeps seeded random weights, so pooler_output is meaningless"},
          unknown_reason=_bert_head_reason)
    return imported


# --- torchvision ------------------------------------------------------------------------------


def _torchvision_key(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key  # DataParallel/DDP prefix


def _import_torchvision(name: str, path: Path, preset: str | None, overrides: dict[str, Any]) -> ImportedCheckpoint:
    import zoo

    preset = preset or "standard"
    try:
        spec = zoo.get(name, preset=preset, **overrides)
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc
    imported = ImportedCheckpoint(name=name, path=str(path), format=TORCHVISION_FORMAT, spec=spec,
                                  model=spec.build_torch(0))
    if name == "mobilenet_v2":
        imported.notes.append(
            "the mobilenet_v2 twin pads its stride-2 convs TF-'same' (asymmetric), torchvision's MobileNetV2 "
            "symmetrically: the weights map by name, but the twin's outputs differ from torchvision's at the "
            "borders of stride-2 layers")
    state = read_state_dict(path)
    _fill(imported, state, _torchvision_key, optional={}, unknown_reason=lambda key: None)
    return imported
