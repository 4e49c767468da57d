"""A sweep's matrix: the axes a user gives, expanded into cells with a stable parameter hash.

Plain data, no framework and no Ray import: the command line validates a matrix (and a
config file) before anything starts. A cell's hash is SHA-256 of its parameters as
canonical JSON (sorted keys, no whitespace), so the same cell hashes the same on every
machine and in every run; that is what makes a sweep resumable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.errors import UsageError
from parity.sweep.pairs import UserPair, check_pairs, pairs_from_config

KINDS = ("check", "bench")
DIRECTIONS = ("torch", "tf")
DEVICES = ("auto", "cpu", "cuda")
EXPORTERS = ("dynamo", "legacy")
USER_FIELDS = ("torch", "keras", "inputs", "tolerance", "fingerprint")  # a user pair's cell only
HASH_VERSION = 1  # bump when a cell's meaning changes without its fields changing: stored results go stale


@dataclass(frozen=True)
class SweepCell:
    """One unit of work: a `parity check` of one model in one direction, or a bench of one model.

    Check cells use ``source``, ``exporter``, ``layers``, ``grads`` and ``train_steps``;
    bench cells use ``runtimes``, ``train``, ``budget_s`` and ``min_runs`` (``source`` is
    empty). ``device='cuda'`` makes the cell ask Ray for a GPU. A check of a user's own pair
    (``parity.sweep.pairs``) has ``preset='user'`` and sets ``torch``, ``keras``, ``inputs``,
    ``tolerance`` and ``fingerprint``; a zoo cell leaves them None (and out of its hash).
    """

    kind: str
    model: str
    source: str = "torch"
    preset: str = "small"
    batch: int = 2
    seed: int = 0
    exporter: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    layers: bool = False
    grads: bool = False
    train_steps: int = 0
    runtimes: tuple[str, ...] | None = None
    train: bool = False
    budget_s: float = 1.0
    min_runs: int = 10
    torch: str | None = None
    keras: str | None = None
    inputs: tuple[str, ...] | None = None
    tolerance: float | None = None
    fingerprint: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The parameters as plain JSON types (what is hashed and stored); a zoo cell omits the pair's."""
        data = dataclasses.asdict(self)
        data["runtimes"] = list(self.runtimes) if self.runtimes is not None else None
        if self.torch is None:
            for key in USER_FIELDS:
                del data[key]
        else:
            data["inputs"] = list(self.inputs or ())
        return data

    @property
    def is_user(self) -> bool:
        return self.torch is not None

    @property
    def hash(self) -> str:
        text = json.dumps({"v": HASH_VERSION, **self.params}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def id(self) -> str:
        """A readable, unique file stem: the main axes, then the first 10 hex digits of the hash."""
        if self.kind == "check":
            head = f"check-{self.model}-{self.source}-{self.preset}-b{self.batch}-s{self.seed}"
        else:
            head = f"bench-{self.model}-{self.preset}-b{self.batch}-{self.precision}-{self.device}"
        return f"{head}-{self.hash[:10]}"

    @property
    def label(self) -> str:
        """Short text for tables: the model and direction (check) or precision and device (bench)."""
        if self.kind == "check":
            return f"{self.model} --from {self.source}"
        return f"{self.model} bench {self.precision}/{self.device}"

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> SweepCell:
        """The inverse of ``params`` (a stored result's cell)."""
        values = dict(data)
        for key in ("runtimes", "inputs"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class SweepSpec:
    """The axes of a sweep; ``cells()`` is their product, in a stable order."""

    kind: str = "check"
    models: tuple[str, ...] = ("all",)
    directions: tuple[str, ...] = ("torch",)
    presets: tuple[str, ...] = ("small",)
    batches: tuple[int, ...] = (2,)
    seeds: tuple[int, ...] = (0,)
    exporters: tuple[str | None, ...] = (None,)
    devices: tuple[str, ...] = ("auto",)
    precisions: tuple[str, ...] = ("fp32",)
    layers: bool = False
    grads: bool = False
    train_steps: int = 0
    runtimes: tuple[str, ...] | None = None
    train: bool = False
    budget_s: float = 1.0
    min_runs: int = 10
    pairs: tuple[UserPair, ...] = ()  # the user's own pairs, beside the zoo models (models=() for pairs only)

    def model_names(self) -> list[str]:
        import zoo

        known = zoo.names()
        if not self.models and self.pairs:
            return []
        chosen = known if "all" in self.models else list(dict.fromkeys(self.models))
        unknown = [m for m in chosen if m not in known]
        if unknown:
            raise UsageError(f"unknown model(s) {', '.join(map(repr, unknown))} in the sweep; known: "
                             f"{', '.join(known)} (or 'all')")
        return chosen

    def validate(self) -> None:
        """Raise ``UsageError`` naming the first value out of range, before any cell runs."""
        import zoo

        _one_of("kind", [self.kind], KINDS)
        directions = _expand_directions(self.directions)
        _one_of("direction", directions, DIRECTIONS)
        _one_of("device", self.devices, DEVICES)
        _one_of("exporter", [e for e in self.exporters if e is not None], EXPORTERS)
        precisions = ("fp32", "tf32") if self.kind == "check" else ("fp32", "tf32", "fp16", "bf16")
        _one_of("precision", self.precisions, precisions)
        if not self.models and not self.pairs:
            raise UsageError("the sweep has no models: give zoo models (models = [\"mlp\"] or \"all\") "
                             "or your own pairs ([[pair]] tables, or --torch/--keras/--input)")
        for axis in ("directions", "presets", "batches", "seeds", "exporters", "devices", "precisions"):
            if not getattr(self, axis):
                raise UsageError(f"the sweep's {axis} axis is empty; give at least one value")
        if any(b < 1 for b in self.batches):
            raise UsageError(f"batch sizes must be positive integers, got {list(self.batches)}")
        if any(not 0 <= s < 2**32 for s in self.seeds):
            raise UsageError(f"seeds must lie in 0..2**32-1 (numpy and TensorFlow take 32-bit seeds), got "
                             f"{list(self.seeds)}")
        if self.train_steps < 0 or self.min_runs < 1 or self.budget_s < 0:
            raise UsageError(f"need train_steps >= 0, min_runs >= 1, budget_s >= 0; got {self.train_steps}, "
                             f"{self.min_runs}, {self.budget_s}")
        if self.pairs:
            check_pairs(self.pairs, zoo.names())
            if self.kind == "bench":
                raise UsageError(f"your own pairs ({', '.join(p.name for p in self.pairs)}) run as check cells; "
                                 "bench them with `parity bench --torch ... --keras ... --input ...`")
        if self.kind == "bench":
            from parity.bench.results import select_runtimes

            select_runtimes(self.runtimes, self.train)
        for model in self.model_names():
            for preset in self.presets:
                try:
                    zoo.get(model, preset=preset)
                except ValueError as exc:
                    raise UsageError(f"{model} at preset {preset!r}: {exc}") from exc

    def cells(self) -> list[SweepCell]:
        """Every cell of the matrix (validated first); model-major, so one model's cells sit together."""
        self.validate()
        if self.kind == "bench":
            product = itertools.product(self.model_names(), self.presets, self.batches, self.seeds,
                                        self.devices, self.precisions)
            return [SweepCell(kind="bench", model=m, source="", preset=p, batch=b, seed=s, device=d, precision=pr,
                              runtimes=self.runtimes, train=self.train, budget_s=self.budget_s,
                              min_runs=self.min_runs)
                    for m, p, b, s, d, pr in product]
        product = itertools.product(self.model_names(), _expand_directions(self.directions), self.presets,
                                    self.batches, self.seeds, self.exporters, self.devices, self.precisions)
        zoo_cells = [SweepCell(kind="check", model=m, source=src, preset=p, batch=b, seed=s, exporter=e, device=d,
                               precision=pr, layers=self.layers, grads=self.grads, train_steps=self.train_steps)
                     for m, src, p, b, s, e, d, pr in product]
        return zoo_cells + self.pair_cells()

    def pair_cells(self) -> list[SweepCell]:
        """The user pairs' check cells: every axis but ``presets`` (a pair has none); files fingerprinted once."""
        prints = {p.name: p.fingerprint() for p in self.pairs}
        product = itertools.product(self.pairs, _expand_directions(self.directions), self.batches, self.seeds,
                                    self.exporters, self.devices, self.precisions)
        return [SweepCell(kind="check", model=pair.name, source=src, preset="user", batch=b, seed=s, exporter=e,
                          device=d, precision=pr, layers=self.layers, grads=self.grads,
                          train_steps=self.train_steps, torch=pair.torch, keras=pair.keras, inputs=pair.inputs,
                          tolerance=pair.tolerance, fingerprint=prints[pair.name])
                for pair, src, b, s, e, d, pr in product]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], origin: str = "the sweep") -> SweepSpec:
        """A spec from a config file's table: axes take a value or a list; unknown keys are refused."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "pairs"}
        data = dict(data)
        pairs = pairs_from_config(data.pop("pair"), origin) if "pair" in data else ()
        if pairs and "models" not in data:
            data["models"] = []  # only the user's pairs, not the default 'all'
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UsageError(f"{origin}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}, "
                             "and [[pair]] tables")
        values: dict[str, Any] = {}
        for key, value in data.items():
            default = fields[key].default
            if isinstance(default, tuple) or key == "runtimes":
                items = value if isinstance(value, list) else [value]
                values[key] = tuple(None if key == "exporters" and v in ("default", "") else v for v in items)
            else:
                values[key] = value
        try:
            spec = cls(**values, pairs=pairs)
            _check_types(spec, origin)
        except TypeError as exc:
            raise UsageError(f"{origin}: {exc}") from exc
        return spec


def load_sweep_file(path: Path) -> SweepSpec:
    """A matrix from a TOML file (a ``[sweep]`` table, or top-level keys; ``[[pair]]`` tables for the
    user's own pairs) or a JSON object of the same shape."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--config {path}: not valid JSON ({exc})") from exc
    elif path.suffix == ".toml":
        data = _load_toml(text, path)
    elif path.suffix in (".yaml", ".yml"):
        raise UsageError(f"--config {path}: YAML is not read (PyYAML is not a dependency of parity); write the "
                         "same keys as TOML (a [sweep] table, [[pair]] tables) or as a JSON object: see docs/sweep.md")
    else:
        raise UsageError(f"--config {path}: give a .toml or .json file (YAML is not read), got {path.suffix!r}")
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a table of sweep axes, got {type(data).__name__}")
    table = data.get("sweep", data)
    if not isinstance(table, dict):
        raise UsageError(f"--config {path}: [sweep] must be a table of sweep axes, got {type(table).__name__}")
    if "sweep" in data:
        extra = sorted(set(data) - {"sweep", "pair"})
        if extra:
            raise UsageError(f"--config {path}: unknown top-level key(s) {', '.join(extra)} beside [sweep]; "
                             "put the axes in [sweep] and your own pairs in [[pair]] tables")
        if "pair" in data:
            if "pair" in table:
                raise UsageError(f"--config {path}: give the pairs once, as top-level [[pair]] tables")
            table = {**table, "pair": data["pair"]}
    return SweepSpec.from_mapping(table, origin=f"--config {path}")


def _load_toml(text: bytes, path: Path) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise UsageError(f"--config {path}: reading TOML on Python 3.10 needs `pip install tomli`; "
                             "or give the same table as a .json file") from None
    try:
        return tomllib.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: not valid TOML ({exc})") from exc


def _expand_directions(directions: Iterable[str]) -> list[str]:
    out: list[str] = []
    for d in directions:
        out.extend(DIRECTIONS if d == "both" else [d])
    return list(dict.fromkeys(out))


def _one_of(axis: str, values: Sequence[Any], known: Sequence[str]) -> None:
    for value in values:
        if value not in known:
            raise UsageError(f"unknown {axis} {value!r} in the sweep; expected one of {', '.join(known)}")


def _check_types(spec: SweepSpec, origin: str) -> None:
    ints = [*spec.batches, *spec.seeds, spec.train_steps, spec.min_runs]
    if any(not isinstance(v, int) or isinstance(v, bool) for v in ints):
        raise UsageError(f"{origin}: batches, seeds, train_steps and min_runs take integers, got "
                         f"{list(spec.batches)}, {list(spec.seeds)}, {spec.train_steps!r}, {spec.min_runs!r}")
    texts = [*spec.models, *spec.directions, *spec.presets, *spec.devices, *spec.precisions, spec.kind]
    if any(not isinstance(v, str) for v in texts):
        raise UsageError(f"{origin}: models, directions, presets, devices, precisions and kind take names")
