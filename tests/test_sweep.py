"""`parity sweep`: the matrix and its hashes, config files, and the Ray runner's faults, resume and bench slots.

The Ray tests share one local cluster (2 CPUs, one bench slot), started once for the module.
Only one cell runs a real check (mlp, small); the others run small planted bodies, passed to
``run_sweep(execute=...)`` and pickled by value into the workers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pytest

from parity.cli import sweep as sweep_cli
from parity.errors import UsageError
from parity.sweep import SweepCell, SweepSpec, format_summary, load_sweep_file, run_sweep
from parity.sweep.cells import execute_cell
from parity.sweep.store import cell_path, load_done, make_record, prepare, write_record

# ---------------------------------------------------------------- matrix, hashes, config files (no Ray)


def test_cell_hash_is_stable_and_follows_every_parameter() -> None:
    cell = SweepCell(kind="check", model="mlp", source="tf")
    # canonical JSON of the parameters: the same on every machine and run (a stored sweep depends on it)
    assert cell.hash == SweepCell(kind="check", model="mlp", source="tf").hash
    assert cell.hash == "7de3bb4f22" + cell.hash[10:]
    assert cell.id == "check-mlp-tf-small-b2-s0-7de3bb4f22"
    changed = [SweepCell(kind="check", model="mlp", source="tf", seed=1),
               SweepCell(kind="check", model="mlp", source="tf", exporter="legacy"),
               SweepCell(kind="check", model="mlp", source="tf", grads=True),
               SweepCell(kind="bench", model="mlp", source="tf")]
    assert len({cell.hash, *(c.hash for c in changed)}) == 5
    assert SweepCell.from_params(json.loads(json.dumps(cell.params))) == cell


def test_matrix_expands_every_axis_in_a_stable_order() -> None:
    spec = SweepSpec(models=("mlp", "cnn"), directions=("both",), seeds=(0, 1), batches=(1, 4))
    cells = spec.cells()
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({c.id for c in cells}) == 16
    assert [(c.model, c.source, c.batch, c.seed) for c in cells[:3]] == [
        ("mlp", "torch", 1, 0), ("mlp", "torch", 1, 1), ("mlp", "torch", 4, 0)]
    import zoo

    everything = SweepSpec(models=("all",), directions=("both",)).cells()
    assert [(c.model, c.source) for c in everything] == [(m, s) for m in zoo.names() for s in ("torch", "tf")]
    bench = SweepSpec(kind="bench", models=("mlp",), batches=(1, 32), precisions=("fp32", "bf16")).cells()
    assert len(bench) == 4 and all(c.kind == "bench" and c.source == "" for c in bench)


@pytest.mark.parametrize(("bad", "words"), [
    ({"models": ("nope",)}, ["'nope'", "known:", "mlp"]),
    ({"models": ("mlp",), "directions": ("keras",)}, ["direction 'keras'", "torch, tf"]),
    ({"models": ("mlp",), "presets": ("huge",)}, ["mlp at preset 'huge'"]),
    ({"models": ("mlp",), "batches": (0,)}, ["batch sizes", "[0]"]),
    ({"models": ("mlp",), "seeds": ()}, ["seeds axis is empty"]),
    ({"models": ("mlp",), "seeds": (-1,)}, ["0..2**32-1", "[-1]"]),
], ids=["model", "direction", "preset", "batch", "empty-axis", "seed"])
def test_bad_matrix_is_refused_before_anything_runs(bad: dict, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        SweepSpec(**bad).cells()
    for word in words:
        assert word in str(info.value)


def test_config_files_toml_and_json_and_refusals(tmp_path: Path) -> None:
    toml = tmp_path / "sweep.toml"
    toml.write_text('[sweep]\nmodels = ["mlp", "cnn"]\ndirections = "both"\nseeds = [0, 1]\nexporters = "legacy"\n')
    spec = load_sweep_file(toml)
    assert spec == SweepSpec(models=("mlp", "cnn"), directions=("both",), seeds=(0, 1), exporters=("legacy",))
    assert len(spec.cells()) == 8
    as_json = tmp_path / "sweep.json"
    as_json.write_text(json.dumps({"models": "mlp", "kind": "bench", "runtimes": ["ort"], "budget_s": 0.1}))
    assert load_sweep_file(as_json).cells()[0].runtimes == ("ort",)
    (tmp_path / "typo.toml").write_text('models = ["mlp"]\nseed = [1]\n')
    with pytest.raises(UsageError, match=r"unknown key\(s\) seed; known: kind, models"):
        load_sweep_file(tmp_path / "typo.toml")
    for name in ("s.yaml", "s.yml"):  # PyYAML is not a dependency: one error that says what to write instead
        (tmp_path / name).write_text("models: [mlp]\n")
        with pytest.raises(UsageError, match=r"YAML is not read .* as TOML \(a \[sweep\] table, \[\[pair\]\] tables\) "
                                             r"or as a JSON object: see docs/sweep.md"):
            load_sweep_file(tmp_path / name)
    (tmp_path / "s.ini").write_text("models = mlp\n")
    with pytest.raises(UsageError, match="give a .toml or .json file"):
        load_sweep_file(tmp_path / "s.ini")
    (tmp_path / "types.json").write_text('{"models": "mlp", "batches": ["8"]}')
    with pytest.raises(UsageError, match="take integers"):
        load_sweep_file(tmp_path / "types.json")


def test_command_line_options_override_the_config(tmp_path: Path) -> None:
    config = tmp_path / "sweep.toml"
    config.write_text('models = ["cnn"]\nseeds = [0, 1]\n')
    parser = sweep_cli_parser()
    args = parser.parse_args(["sweep", "--config", str(config), "--models", "mlp", "--batch", "1,8", "--grads"])
    spec = sweep_cli.spec_from_args(args)
    assert (spec.models, spec.seeds, spec.batches, spec.grads) == (("mlp",), (0, 1), (1, 8), True)
    with pytest.raises(UsageError, match="give the models to sweep"):
        sweep_cli.spec_from_args(parser.parse_args(["sweep"]))


# ---------------------------------------------------------------- the user's own pairs (no Ray)

TINY = ('torch = "examples.own_models:torch_model"\nkeras = "examples.own_models:keras_model"\n'
        'inputs = ["x:3x8x8:float32:NCHW"]\n')


def write_pair_module(folder: Path, body: str = "return examples.own_models.torch_model()") -> Path:
    path = folder / "my_pair.py"
    path.write_text(f"import examples.own_models\n\n\ndef make():\n    {body}\n")
    return path


def test_user_pairs_in_a_config_become_hashed_cells_beside_the_zoo(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # examples.own_models resolves from here
    module = write_pair_module(tmp_path)
    config = tmp_path / "sweep.toml"
    config.write_text(f'[sweep]\nmodels = ["mlp"]\ndirections = "both"\nseeds = [0, 1]\n\n[[pair]]\nname = "tiny"\n'
                      f'{TINY}\n[[pair]]\nname = "mine"\ntorch = "{module}:make"\n'
                      f'keras = "examples.own_models:keras_model"\ninputs = "x:3x8x8:NCHW"\ntolerance = 1e-4\n')
    spec = load_sweep_file(config)
    cells = spec.cells()
    assert len(cells) == 3 * 2 * 2  # (mlp + 2 pairs) x 2 directions x 2 seeds
    assert [(c.model, c.source, c.seed) for c in cells[4:7]] == [("tiny", "torch", 0), ("tiny", "torch", 1),
                                                                 ("tiny", "tf", 0)]
    zoo_tf = next(c for c in cells if c.model == "mlp" and c.source == "tf" and c.seed == 0)
    assert zoo_tf.id == "check-mlp-tf-small-b2-s0-7de3bb4f22"  # a zoo cell's hash is not moved by pairs
    tiny, mine = cells[4], cells[8]
    assert tiny.id.startswith("check-tiny-torch-user-b2-s0-") and tiny.preset == "user"
    assert (tiny.torch, tiny.inputs, tiny.tolerance) == ("examples.own_models:torch_model",
                                                         ("x:3x8x8:float32:NCHW",), None)
    assert (mine.inputs, mine.tolerance) == (("x:3x8x8:NCHW",), 1e-4)
    assert tiny.params["fingerprint"] == hashlib.sha256(
        b"examples.own_models:torch_model\0" + (Path("examples") / "own_models.py").read_bytes()
        + b"examples.own_models:keras_model\0" + (Path("examples") / "own_models.py").read_bytes()).hexdigest()
    assert SweepCell.from_params(json.loads(json.dumps(mine.params))) == mine
    # the same config hashes the same; an edit of the pair's file (its fingerprint) makes its cells stale
    assert [c.hash for c in load_sweep_file(config).cells()] == [c.hash for c in cells]
    out = tmp_path / "out"
    prepare(out)
    for cell in cells:
        write_record(out, cell, make_record(cell, "passed", [], {"worst": 0.1}))
    module.write_text(module.read_text().replace("torch_model()", "torch_model(seed=1)"))
    edited = load_sweep_file(config).cells()
    assert [c.model for c in edited if load_done(out, c) is None] == ["mine"] * 4
    assert [c.id for c in edited if c.model != "mine"] == [c.id for c in cells if c.model != "mine"]
    # JSON of the same shape gives the same cells; a config of pairs only has no zoo cells
    as_json = tmp_path / "sweep.json"
    as_json.write_text(json.dumps({"directions": ["tf"], "pair": [{"name": "tiny", "torch": tiny.torch, "keras": tiny.keras,
                                                                    "inputs": list(tiny.inputs)}]}))
    only = load_sweep_file(as_json).cells()
    assert [c.id for c in only] == [c.id for c in cells if c.model == "tiny" and c.source == "tf" and c.seed == 0]


@pytest.mark.parametrize(("pair", "extra", "words"), [
    ('name = "tiny"\ntorch = "examples.own_models:torch_model"\nkeras = "k.keras"\n', "",
     ["pair 'tiny'", "give inputs = [\"NAME:SHAPE"]),
    (f'name = "tiny"\n{TINY.replace("3x8x8", "3xq")}', "", ["'3xq' is not dimensions joined by 'x'"]),
    (f'name = "mlp"\n{TINY}', "", ["'mlp' are zoo model names"]),
    (f'name = "my pair"\n{TINY}', "", ["pair name 'my pair'", "letters, digits"]),
    (f'name = "tiny"\n{TINY}weights = "w.pt"\n', "", ["unknown key(s) weights; known: name, torch"]),
    (f'name = "tiny"\n{TINY}', f'\n[[pair]]\nname = "tiny"\n{TINY}', ["'tiny' given twice"]),
    (f'name = "tiny"\n{TINY}', 'kind = "bench"\n', ["run as check cells", "parity bench --torch"]),
    (f'name = "tiny"\n{TINY}'.replace("examples.own_models:torch_model", "examples.own_models"), "",
     ["torch 'examples.own_models' must be pkg.module:factory"]),
], ids=["no-inputs", "bad-input", "zoo-name", "bad-name", "unknown-key", "twice", "bench", "no-factory"])
def test_bad_user_pairs_are_refused_before_anything_runs(tmp_path: Path, pair: str, extra: str,
                                                         words: list[str]) -> None:
    config = tmp_path / "sweep.toml"
    top, more = (extra, "") if extra.startswith("kind") else ("", extra)
    config.write_text(f"{top}[[pair]]\n{pair}{more}")
    with pytest.raises(UsageError) as info:
        load_sweep_file(config).cells()
    for word in words:
        assert word in str(info.value)


def test_the_command_line_names_a_pair_beside_zoo_models(tmp_path: Path) -> None:
    parser = sweep_cli_parser()
    own = ["--torch", "examples.own_models:torch_model", "--keras", "examples.own_models:keras_model",
           "--input", "x:3x8x8:float32:NCHW"]
    spec = sweep_cli.spec_from_args(parser.parse_args(["sweep", "--models", "mlp", *own, "--name", "tiny",
                                                       "--tolerance", "1e-4"]))
    assert spec.models == ("mlp",) and [(p.name, p.tolerance) for p in spec.pairs] == [("tiny", 1e-4)]
    assert [c.model for c in spec.cells()] == ["mlp", "tiny"]
    config = tmp_path / "sweep.toml"
    config.write_text(f'[[pair]]\nname = "first"\n{TINY}')
    both = sweep_cli.spec_from_args(parser.parse_args(["sweep", "--config", str(config), *own]))
    assert both.models == () and [p.name for p in both.pairs] == ["first", "user"]
    for argv, words in ((own[:4], "--input missing"), (["--models", "mlp", "--name", "x"], "--name and --tolerance"),
                        ([*own[:4], "--input", "x:3x8x8", "--input", "x:8"], "an input is named twice")):
        with pytest.raises(UsageError, match=words):
            sweep_cli.spec_from_args(parser.parse_args(["sweep", *argv]))


def sweep_cli_parser():  # type: ignore[no-untyped-def]
    from parity.cli import build_parser

    return build_parser()


# ---------------------------------------------------------------- on a local Ray cluster


@pytest.fixture(scope="module")
def ray_cluster():  # type: ignore[no-untyped-def]
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the planted cell bodies travel by value
    ray.init(num_cpus=2, resources={"bench_slot": 1}, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", _system_config={"worker_niceness": 0})  # as run_sweep's local cluster
    yield ray
    ray.shutdown()


def crash_tf_cells(cell: SweepCell) -> dict:
    """A planted fault: a check from tf kills its worker process outright; the others run for real."""
    if cell.source == "tf":
        os._exit(3)
    return execute_cell(cell)


def quick_cell(cell: SweepCell, log: str, seconds: float = 0.3) -> dict:
    """A cheap cell body that appends (id, start, end) to ``log`` when it completes."""
    start = time.time()
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(json.dumps([cell.id, start, time.time()]) + "\n")
    return {"status": "passed", "worst": 0.0}


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_killed_cell_is_retried_then_recorded_and_the_sweep_exits_1(ray_cluster, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cells = SweepSpec(models=("mlp",), directions=("both",)).cells()
    said: list[str] = []
    report = run_sweep(cells, tmp_path, execute=crash_tf_cells, progress=said.append)
    ok, bad = report.records
    assert [r["status"] for r in report.records] == ["passed", "error"]
    # the retry: the first attempt's crash was announced, then the cell failed again in a fresh worker
    assert any(m.startswith(f"{bad['id']}: attempt 1 failed (WorkerCrashedError") for m in said)
    assert bad["attempts"] == 2 and len(bad["failed_attempts"]) == 2
    assert all(r.startswith("WorkerCrashedError") for r in bad["failed_attempts"])
    assert bad["reason"] == bad["failed_attempts"][-1] and "result" not in bad
    # the other cell completed: a real check with its numbers
    assert ok["attempts"] == 1 and ok["result"]["model"] == "mlp" and ok["result"]["passed"] is True
    assert len(ok["result"]["comparisons"]) == 3 and 0 < ok["worst"] < 1
    # one JSON per cell, the index and the HTML page of the results; nothing partial beside them
    assert files_under(tmp_path) == sorted([f"cells/{c.id}.json" for c in cells] + ["report.html", "sweep.json"])
    assert report.html == tmp_path / "report.html" and ok["id"] in report.html.read_text()
    assert json.loads(cell_path(tmp_path, cells[1]).read_text())["status"] == "error"
    assert sweep_cli.finish(report, tmp_path) == 1
    table = capsys.readouterr().out
    assert "2 cells: 1 passed, 0 failed, 1 errors" in table and "WorkerCrashedError" in table


def test_an_interrupted_sweep_reruns_only_the_missing_cells(ray_cluster, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out, log = tmp_path / "out", tmp_path / "ran.jsonl"
    cells = SweepSpec(models=("mlp",), directions=("both",), seeds=(0, 1, 2)).cells()
    body = functools.partial(quick_cell, log=str(log))

    def ctrl_c_after_two(message: str) -> None:
        if message.startswith("[2/"):
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver while it waits for cells

    with pytest.raises(KeyboardInterrupt):
        run_sweep(cells, out, execute=body, progress=ctrl_c_after_two)
    saved = [c.id for c in cells if cell_path(out, c).exists()]
    assert len(saved) == 2
    assert files_under(out) == sorted(f"cells/{i}.json" for i in saved)  # no index yet, nothing partial
    first = {json.loads(line)[0] for line in log.read_text().splitlines()}
    assert set(saved) <= first

    # the rerun logs to a new file: a cancelled worker of the first run may still be finishing its
    # sleep (ray.cancel does not wait) and append to the old log, though the driver saves nothing of it
    relog = tmp_path / "reran.jsonl"
    report = run_sweep(cells, out, execute=functools.partial(quick_cell, log=str(relog)), progress=lambda _m: None)
    rerun = [json.loads(line)[0] for line in relog.read_text().splitlines()]
    missing = [c.id for c in cells if c.id not in saved]
    assert sorted(rerun) == sorted(missing) and sorted(report.ran) == sorted(missing)
    assert sorted(report.resumed) == sorted(saved)
    assert report.passed and len(report.records) == 6
    assert "6 cells: 6 passed, 0 failed, 0 errors (2 resumed from earlier runs)" in format_summary(report.records)

    # a stored result whose parameters no longer match (hash) is not trusted: that cell runs again
    stale = cell_path(out, cells[0])
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "hash": "0" * 64}))
    log.unlink()
    again = run_sweep(cells, out, execute=body, progress=lambda _m: None)
    assert again.ran == [cells[0].id]
    assert [json.loads(line)[0] for line in log.read_text().splitlines()] == [cells[0].id]

    # the command line over the same folder: everything resumed (no cell runs), exit 0; a stored
    # parity failure is a verdict, kept on rerun, and makes the sweep exit 1
    from parity.cli import main

    argv = ["sweep", "--models", "mlp", "--directions", "both", "--seeds", "0,1,2", "--out", str(out)]
    assert main(argv) == 0
    assert "6 cells: 6 passed, 0 failed, 0 errors (6 resumed from earlier runs)" in capsys.readouterr().out
    failed = cell_path(out, cells[3])
    failed.write_text(json.dumps({**json.loads(failed.read_text()), "status": "failed", "failures": ["tf vs torch"]}))
    assert main(argv) == 1
    table = capsys.readouterr().out
    assert [line.split()[:2] for line in table.splitlines() if line.startswith(cells[3].id)] == [
        [cells[3].id, "failed"]]
    assert "6 cells: 5 passed, 1 failed, 0 errors" in table and "tf vs torch" in table


def test_a_bench_cell_never_shares_the_node_with_another_running_cell(ray_cluster, tmp_path: Path) -> None:
    log = tmp_path / "ran.jsonl"
    checks = SweepSpec(models=("mlp",), directions=("both",), seeds=(0, 1)).cells()
    bench = SweepSpec(kind="bench", models=("mlp",)).cells()
    body = functools.partial(quick_cell, log=str(log), seconds=1.0)
    report = run_sweep([*checks, *bench], tmp_path, execute=body, progress=lambda _m: None)
    assert report.passed and len(report.ran) == 5
    spans = {cid: (start, end) for cid, start, end in map(json.loads, log.read_text().splitlines())}
    b_start, b_end = spans.pop(bench[0].id)
    # two CPUs let checks run two at a time (when their workers start together), but none runs while
    # the bench cell holds the node's bench slot; each logged span lies inside its task's reservation
    for start, end in spans.values():
        assert end <= b_start or start >= b_end, (start, end, b_start, b_end)


def test_the_command_line_checks_user_pairs_on_ray_and_exits_1_for_a_killed_cell(
        ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # the sweep runs from another folder than the cluster's: `boom` resolves only where the driver runs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "boom.py").write_text("import os\n\n\ndef make():\n    os._exit(3)  # the worker dies loading it\n")
    example = Path(__file__).resolve().parents[1] / "examples" / "own_models.py"
    tiny = TINY.replace("examples.own_models:", f"{example}:")
    config = tmp_path / "sweep.toml"
    config.write_text(f'[sweep]\ndirections = "both"\n\n[[pair]]\nname = "tiny"\n{tiny}\n'
                      f'[[pair]]\nname = "boom"\ntorch = "boom:make"\nkeras = "{example}:keras_model"\n'
                      'inputs = ["x:3x8x8:float32:NCHW"]\n')
    out = tmp_path / "out"
    from parity.cli import main

    assert main(["sweep", "--config", str(config), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    records = {(r["cell"]["model"], r["cell"]["source"]): r for r in json.loads((out / "sweep.json").read_text())["cells"]}
    assert sorted(records) == [("boom", "tf"), ("boom", "torch"), ("tiny", "tf"), ("tiny", "torch")]
    for source in ("torch", "tf"):  # the pair, checked for real from each side in its own worker
        ok = json.loads((out / "cells" / f"{records['tiny', source]['id']}.json").read_text())
        summary = {k: ok.get(k) for k in ("status", "attempts", "reason", "failed_attempts", "failures")}
        assert ok["status"] == "passed" and ok["attempts"] == 1 and ok["result"]["source"] == source, summary
        against = [c["b"] for c in ok["result"]["comparisons"]]  # tf, ort-torch, ort-tf ... against the source
        assert len(against) >= 3 and set(against) == {source}
        assert 0 < ok["worst"] < 1  # every runtime within the user-pair default of 1e-5 of the output scale
        bad = records["boom", source]
        assert bad["status"] == "error" and bad["attempts"] == 2, bad
        assert [r.split(":")[0] for r in bad["failed_attempts"]] == ["WorkerCrashedError"] * 2, bad
    assert "4 cells: 2 passed, 0 failed, 2 errors" in captured.out
    assert "retrying in a fresh worker" in captured.err
    assert files_under(out) == sorted([f"cells/{r['id']}.json" for r in records.values()]
                                      + ["report.html", "sweep.json"])
