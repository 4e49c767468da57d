"""`parity bench MODEL --generated DIR`: a generated twin timed in turn with the hand-written twin.

The mlp (small) is converted both ways into temporary folders (`parity.convert.convert_zoo`), then
benched with a tiny budget; the tests assert which cells exist, that they were timed in turn, that
the generated cells ran the generated model, and that the ratio is the one their samples give.
No speed is asserted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zoo
from parity.bench.generated import SUFFIX, generated_twins, read_generated
from parity.bench.results import KEPT_SAMPLES, BenchConfig
from parity.bench.timing import measure_alternating
from parity.errors import UsageError
from parity.report.decision import generated_ratios

RUNTIMES = ("torch-eager", "tf-function")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The generated twins of mlp (small): 'tf' generated from torch, 'torch' generated from tf."""
    from parity.convert import convert_zoo

    root = tmp_path_factory.mktemp("generated")
    out = {}
    for source, target in (("torch", "tf"), ("tf", "torch")):
        result = convert_zoo("mlp", root / f"mlp_{target}", source=source)
        assert result.passed
        out[target] = result.out
    return out


def _config(**kw: Any) -> BenchConfig:
    base = {"batches": (1, 4), "device": "cpu", "threads": 1, "budget_s": 0.02, "min_runs": 5, "warmup": 1,
            "runtimes": RUNTIMES, "probe_peak": False}
    return BenchConfig(**{**base, **kw})


# ============================================================================ the clock loop


class FakeClock:
    def __init__(self) -> None:
        self.now, self.order = 0.0, []

    def __call__(self) -> float:
        return self.now

    def call(self, name: str, seconds: float) -> Any:
        def fn() -> None:
            self.order.append(name)
            self.now += seconds

        return fn


def test_measure_alternating_rotates_and_shares_the_budget() -> None:
    clock = FakeClock()
    a, b = measure_alternating([(clock.call("a", 1.0), None), (clock.call("b", 3.0), None)], budget_s=6.0,
                               min_runs=2, warmup=1, clock=clock)
    # first calls, one warm-up each, then rounds a b | b a | a b: 4 s each, 12 s = 2 x 6 s after 3 rounds
    assert clock.order == ["a", "b", "a", "b", "a", "b", "b", "a", "a", "b"]
    assert a.samples == (1.0, 1.0, 1.0) and b.samples == (3.0, 3.0, 3.0)
    assert (a.first_call_s, b.first_call_s, a.warmup_runs, a.loop_s) == (1.0, 3.0, 1, 12.0)


def test_measure_alternating_min_runs_wins_over_the_budget() -> None:
    clock = FakeClock()
    ms = measure_alternating([(clock.call("a", 1.0), None), (clock.call("b", 1.0), None)], budget_s=0.0,
                             min_runs=7, warmup=0, clock=clock)
    assert [m.stats.count for m in ms] == [7, 7]


# ============================================================================ the ratio


def _cell(runtime: str, samples: list[float], **extra: Any) -> dict[str, Any]:
    a = np.asarray(samples)
    stats = {"count": a.size, "median_s": float(np.median(a)), "p90_s": float(np.percentile(a, 90)),
             "min_s": float(a.min())}
    return {"runtime": runtime, "batch": 1, "status": "ok", "stats": stats, "samples_s": samples, **extra}


def test_ratio_is_the_generated_median_over_the_hand_written_median() -> None:
    rng = np.random.default_rng(0)
    hand = list(1e-3 + 1e-5 * rng.standard_normal(200))
    gen = list(1.2e-3 + 1e-5 * rng.standard_normal(200))
    (row,) = generated_ratios([_cell("tf-function", hand), _cell("tf-function" + SUFFIX, gen)])
    assert row["runtime"] == "tf-function" and row["interval_source"] == "bootstrap"
    assert row["ratio"] == pytest.approx(np.median(gen) / np.median(hand), rel=1e-12)
    low, high = row["interval"]
    # noise of 1% per call over 200 calls: the median's ratio is known to well under 1% (0.3% expected)
    assert low < row["ratio"] < high and 1.19 < low and high < 1.21
    no_samples = [{**c, "samples_s": []} for c in (_cell("tf-function", hand), _cell("tf-function" + SUFFIX, gen))]
    (wide,) = generated_ratios(no_samples)
    stats = [c["stats"] for c in no_samples]
    assert wide["interval"] == pytest.approx([stats[1]["min_s"] / stats[0]["p90_s"], stats[1]["p90_s"] / stats[0]["min_s"]])
    failed = {"runtime": "tf-function", "batch": 1, "status": "failed", "reason": "x"}
    (missing,) = generated_ratios([failed, _cell("tf-function" + SUFFIX, gen)])
    assert missing["ratio"] is None and missing["not_measured"] == "tf-function"


def test_cells_timed_in_turn_get_a_paired_interval() -> None:
    # a load shared by both calls of a round (x1 to x5) and a generated twin 1.2x the hand-written one
    rng = np.random.default_rng(1)
    load = 1e-3 * np.exp(rng.uniform(0, np.log(5), 300))
    hand, gen = list(load), list(1.2 * load * (1 + 1e-3 * rng.standard_normal(300)))
    cells = [_cell("torch-eager", hand, settings={"alternated_with": "torch-eager" + SUFFIX}),
             _cell("torch-eager" + SUFFIX, gen, settings={"alternated_with": "torch-eager"})]
    (paired,) = generated_ratios(cells)
    assert paired["interval_source"] == "paired bootstrap" and paired["alternated"]
    # the rounds' shared load cancels: only the 0.1% per-call noise is left in the ratio
    assert 1.19 < paired["interval"][0] < paired["ratio"] < paired["interval"][1] < 1.21
    (apart,) = generated_ratios([{**c, "settings": {}} for c in cells])  # the same samples, not known to be paired
    assert apart["interval_source"] == "bootstrap"
    assert np.diff(apart["interval"])[0] > 10 * np.diff(paired["interval"])[0]


# ============================================================================ refusals


def test_refuses_a_failed_a_foreign_and_a_doubled_folder(folders: dict[str, Path], tmp_path: Path) -> None:
    mlp, cnn = zoo.get("mlp"), zoo.get("cnn")
    with pytest.raises(UsageError, match=r"generated twin of mlp \(small\), not of cnn \(small\)"):
        read_generated(folders["tf"], cnn)
    failed = tmp_path / "failed"
    shutil.copytree(folders["tf"], failed)
    data = json.loads((failed / "parity.json").read_text())
    (failed / "parity.json").write_text(json.dumps({**data, "passed": False}))
    with pytest.raises(UsageError, match="FAILED the parity check"):
        read_generated(failed, mlp)
    with pytest.raises(UsageError, match="not a folder written by `parity convert`"):
        read_generated(tmp_path, mlp)
    with pytest.raises(UsageError, match="no such folder"):
        read_generated(tmp_path / "nowhere", mlp)
    with pytest.raises(UsageError, match="give at most one per framework"):
        generated_twins([folders["tf"]] * 2, mlp, _config())
    with pytest.raises(UsageError, match="inference only"):
        generated_twins([folders["tf"]], mlp, _config(train=True, runtimes=None))
    with pytest.raises(UsageError, match="no tf runtime is selected"):
        generated_twins([folders["tf"]], mlp, _config(runtimes=("torch-eager",)))


def test_weights_that_do_not_fit_are_a_clear_error(folders: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(folders["torch"], broken)
    weights = load_file(str(broken / "model.safetensors"))
    save_file({k + "_renamed": v for k, v in weights.items()}, str(broken / "model.safetensors"))
    twin = read_generated(broken, zoo.get("mlp"))
    with pytest.raises(UsageError, match="model.safetensors does not load into model.py's model"):
        twin.build()


# ============================================================================ the bench


def _weights(model: Any) -> list[np.ndarray]:
    if hasattr(model, "state_dict"):
        return [t.detach().numpy() for t in model.state_dict().values()]
    return list(model.get_weights())


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_generated_cells_are_timed_in_turn_and_run_the_generated_model(folders: dict[str, Path]) -> None:
    from parity.bench.engine import Bench

    spec = zoo.get("mlp")
    config = _config()
    twins = generated_twins([folders["tf"], folders["torch"]], spec, config)
    with Bench(spec, config, twins) as bench:
        result = bench.run()
        timed = {k: h.models[k] for k, h in bench.generated_hosts.items()}
        hand = dict(bench.models)
    # the generated cells ran the model of each folder's model.py with its weights; the others the zoo's twin
    assert set(timed) == set(hand) == {"torch", "tf"}
    assert type(timed["torch"]).__module__.startswith("parity_twin_")
    for twin in twins:
        fresh = _weights(twin.build())
        assert _same(_weights(timed[twin.framework]), fresh)
        assert not _same(_weights(hand[twin.framework]), fresh)
    cells = {(c.runtime, c.batch): c for c in result.cells}
    assert set(cells) == {(r + s, b) for r in RUNTIMES for s in ("", SUFFIX) for b in (1, 4)}
    for (runtime, batch), cell in cells.items():
        assert cell.measured and cell.stats.count >= 5, cell.reason
        assert len(cell.samples_s) == min(cell.stats.count, KEPT_SAMPLES)
        if not runtime.endswith(SUFFIX):  # timed in turn: one call of each per round
            partner = cells[(runtime + SUFFIX, batch)]
            assert partner.stats.count == cell.stats.count
            assert cell.settings["alternated_with"] == partner.runtime
            assert partner.settings["generated"] == str(folders[runtime.split("-")[0]])
    assert [t["framework"] for t in result.config["generated"]] == ["tf", "torch"]


def test_cli_prints_and_writes_the_ratio(folders: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from parity.cli import bench as bench_cli
    from parity.report.html import render
    from parity.report.schema import validate

    out = tmp_path / "bench.json"
    argv = ["bench", "mlp", "--generated", str(folders["torch"]), "--batch", "2", "--runtimes", "torch-eager",
            "--device", "cpu", "--threads", "1", "--budget", "0", "--min-runs", "20", "--warmup", "1", "--no-peak",
            "-q", "--json", str(out)]
    assert bench_cli.main(argv) == 0
    data = json.loads(out.read_text())
    validate(data, "bench")
    (row,) = data["decision"]["generated"]
    by_name = {c["runtime"]: c for c in data["cells"]}
    gen, hand = by_name["torch-eager" + SUFFIX], by_name["torch-eager"]
    assert len(gen["samples_s"]) == len(hand["samples_s"]) == 20  # 20 rounds of one call each, every sample kept
    assert row["ratio"] == pytest.approx(np.median(gen["samples_s"]) / np.median(hand["samples_s"]), rel=1e-6)
    printed = capsys.readouterr().out
    assert (f"batch 2, torch-eager: generated / hand-written latency: {row['ratio']:.2f} (95% interval "
            f"{row['interval'][0]:.2f}-{row['interval'][1]:.2f})") in printed
    assert "generated / hand-written latency" in render([("bench.json", data)])
    assert bench_cli.main([*argv[:2], "--generated", str(folders["torch"]), "--preset", "standard", "-q"]) == 2
