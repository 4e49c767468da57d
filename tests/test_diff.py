"""`parity diff`: a planted 20% slowdown and a planted error growth exit 1 naming the cell; the
same result twice (and, in the slow suite, two real runs of one bench command) exit 0."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

from parity.bench.results import BenchResult, Cell, keep_samples
from parity.bench.timing import Stats
from parity.cli import main
from parity.errors import UsageError
from parity.report.diff import diff


def _cell(runtime: str, batch: int, median_ms: float, seed: int) -> Cell:
    samples = median_ms * 1e-3 * (1 + 0.05 * np.random.default_rng(seed).uniform(-1, 1, 300))
    return Cell(runtime, "inference", batch, "ok", device="cpu", stats=Stats.of(samples), first_call_s=0.01,
                throughput=batch / float(np.median(samples)), samples_s=keep_samples(samples))


def _bench(slow: float = 1.0, seed: int = 0) -> dict:
    cells = (_cell("torch-eager", 1, 1.0, seed), _cell("torch-eager", 8, 2.0 * slow, seed + 1),
             _cell("ort-cpu", 1, 0.5, seed + 2), _cell("ort-cpu", 8, 1.5, seed + 3))
    return BenchResult(model="mlp", preset="small", task="inference", config={"device_resolved": "cpu"},
                       environment={}, cells=cells).to_dict()


def _check() -> dict:
    return {"model": "cnn", "preset": "small", "source": "torch", "target": "tf", "passed": True, "comparisons": [
        {"a": "tf", "b": "torch", "output": "logits", "max_abs": 2e-7, "atol": 8e-6, "passed": True}],
        "layers": {"passed": True, "rows": [
            {"layer": "conv1", "max_abs": 1e-7, "atol": 4e-6, "passed": True},
            {"layer": "fc", "max_abs": 4e-7, "atol": 8e-6, "passed": True}]},
        "training": {"passed": True, "runs": {"sgd": {"passed": True, "losses": [
            {"step": 0, "torch": 1.0, "tf": 1.0, "abs_diff": 1e-7, "atol": 2e-5, "passed": True}]}}}}


def _write(tmp_path: Path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_a_planted_slowdown_exits_1_naming_the_cell(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before, after = _bench(), _bench(slow=1.2)  # the same samples, one cell 20% slower
    changes = diff(before, after)
    bad = [c for c in changes if c.regression]
    assert [c.cell for c in bad] == ["cpu inference torch-eager batch 8"]
    assert bad[0].ratio == pytest.approx(1.2, rel=1e-6)
    assert main(["diff", _write(tmp_path, "a.json", before), _write(tmp_path, "b.json", after)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION  cpu inference torch-eager batch 8" in out and "1 regression in 4 compared cells" in out


def test_the_same_result_and_a_small_change_exit_0(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.json", _bench())
    assert main(["diff", a, a]) == 0
    assert main(["diff", a, _write(tmp_path, "b.json", _bench(slow=1.05))]) == 0  # within --max-slowdown 1.10
    assert main(["diff", a, _write(tmp_path, "c.json", _bench(slow=1.2)), "--max-slowdown", "1.3"]) == 0


def test_noise_alone_is_not_a_regression() -> None:
    # two runs with different noise (+-5%) and no real change: no cell may be flagged
    assert not any(c.regression for c in diff(_bench(seed=0), _bench(seed=10)))


def test_error_growth_and_a_new_failure_are_regressions(tmp_path: Path) -> None:
    before = _check()
    grown = copy.deepcopy(before)
    grown["layers"]["rows"][1]["max_abs"] = 4e-5 * 1.01  # 100x the earlier error
    assert [c.cell for c in diff(before, grown) if c.regression] == ["cnn --from torch layer fc"]
    failed = copy.deepcopy(before)
    failed["training"]["runs"]["sgd"]["losses"][0].update(abs_diff=1.5e-7, passed=False)
    assert [c.cell for c in diff(before, failed) if c.regression] == ["cnn --from torch training sgd loss gap"]
    tiny = copy.deepcopy(before)  # 1e-10 -> 1e-9 is round-off far under atol: measured from 1e-3 x atol
    tiny["comparisons"][0]["max_abs"], before["comparisons"][0]["max_abs"] = 1e-9, 1e-10
    assert not any(c.regression for c in diff(before, tiny))
    a, b = _write(tmp_path, "a.json", before), _write(tmp_path, "b.json", grown)
    assert main(["diff", a, b]) == 1
    assert main(["diff", a, b, "--max-error-growth", "200"]) == 0


def test_mismatched_or_foreign_files_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot compare a bench result with a check result"):
        diff(_bench(), _check())
    with pytest.raises(UsageError, match="not a parity result"):
        diff({"hello": 1}, {"hello": 1})
    assert main(["diff", _write(tmp_path, "a.json", _bench()), str(tmp_path / "missing.json")]) == 2


@pytest.mark.slow
def test_two_runs_of_the_same_bench_command_exit_0(tmp_path: Path) -> None:
    if os.getloadavg()[0] > (os.cpu_count() or 1) / 2:
        pytest.skip(f"host load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other processes would move "
                    "the timings between the two runs, which is what diff is for; rerun on a quiet machine")
    argv = ["bench", "mlp", "--batch", "1,8", "--runtimes", "torch-eager", "ort-cpu", "--budget", "0.3", "--no-peak",
            "--threads", "1", "--quiet"]
    assert main([*argv, "--json", str(tmp_path / "a.json")]) == 0
    assert main([*argv, "--json", str(tmp_path / "b.json")]) == 0
    assert main(["diff", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    if os.getloadavg()[0] > (os.cpu_count() or 1) / 2:
        pytest.skip("the host got busy during the runs; the diff's verdict is not meaningful")
