"""`parity sweep`: the matrix and its hashes, config files, and the Ray runner's faults, resume and bench slots.

The Ray tests share one local cluster (2 CPUs, one bench slot), started once for the module.
Only one cell runs a real check (mlp, small); the others run small planted bodies, passed to
``run_sweep(execute=...)`` and pickled by value into the workers.
"""

from __future__ import annotations

import functools
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
from parity.sweep.store import cell_path

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
    (tmp_path / "s.yaml").write_text("models: [mlp]\n")
    with pytest.raises(UsageError, match="give a .toml or .json file"):
        load_sweep_file(tmp_path / "s.yaml")
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

    log.unlink()
    report = run_sweep(cells, out, execute=body, progress=lambda _m: None)
    rerun = [json.loads(line)[0] for line in log.read_text().splitlines()]
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
