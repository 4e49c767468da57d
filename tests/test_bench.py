"""Timing engine, results, CLI and plot. Known durations through a fake clock; no speed is asserted."""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from parity.bench.results import (
    INFERENCE_RUNTIMES,
    TRAINING_RUNTIMES,
    BenchConfig,
    BenchResult,
    Cell,
    select_runtimes,
)
from parity.bench.timing import Stats, measure
from parity.cli import bench as bench_cli
from parity.errors import UsageError

# On a CPU run (--device cpu) only the GPU providers may go unmeasured, and only for these
# reasons: onnxruntime (not onnxruntime-gpu) lacks the provider, or the GPU build is asked
# for the CPU device. Every other runtime (torch eager/compile, TF eager/function/XLA, ORT
# CPU) is a hard dependency of the project and must produce a measurement.
GPU_ONLY = {"ort-cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}

# ============================================================================ statistics


def test_stats_known_answers() -> None:
    s = Stats.of([float(x) for x in range(1, 11)])
    assert s.count == 10 and s.min_s == 1.0 and s.max_s == 10.0
    # linear interpolation between order statistics (numpy's default): rank q*(n-1)
    assert s.median_s == pytest.approx(5.5)
    assert s.p90_s == pytest.approx(9.1)
    assert s.p99_s == pytest.approx(9.91)
    assert s.mean_s == pytest.approx(5.5)
    assert s.stdev_s == pytest.approx(math.sqrt(sum((x - 5.5) ** 2 for x in range(1, 11)) / 9))


def test_stats_single_sample_and_empty() -> None:
    s = Stats.of([0.25])
    assert (s.count, s.median_s, s.p99_s, s.stdev_s) == (1, 0.25, 0.25, 0.0)
    with pytest.raises(ValueError):
        Stats.of([])


class FakeClock:
    """A clock that only moves when a fake call says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls = 0
        self.syncs = 0

    def __call__(self) -> float:
        return self.now

    def work(self, durations: Iterable[float]) -> Callable[[], None]:
        it: Iterator[float] = iter(durations)

        def fn() -> None:
            self.calls += 1
            self.now += next(it)

        return fn

    def sync(self, cost: float = 0.0) -> Callable[[], None]:
        def fn() -> None:
            self.syncs += 1
            self.now += cost

        return fn


def _cycle(first: float, warm: list[float], steady: list[float], repeat: int = 100) -> list[float]:
    return [first, *warm, *(steady * repeat)]


def test_measure_first_call_apart_and_budget_stops_the_loop() -> None:
    clock = FakeClock()
    fn = clock.work(_cycle(5.0, [1.0, 1.0, 1.0], [2.0, 1.0, 3.0]))
    m = measure(fn, budget_s=10.0, min_runs=2, warmup=3, clock=clock)
    # timed: 2, 1, 3, 2, 1, 3 -> elapsed 2, 3, 6, 8, 9, 12: the sixth run crosses the budget
    assert m.first_call_s == 5.0 and m.warmup_runs == 3
    assert m.stats.count == 6 and m.stats.median_s == 2.0 and m.stats.min_s == 1.0
    assert m.loop_s == 12.0 and clock.calls == 1 + 3 + 6


def test_measure_min_runs_wins_over_an_exhausted_budget() -> None:
    clock = FakeClock()
    m = measure(clock.work(_cycle(1.0, [], [4.0])), budget_s=0.0, min_runs=7, warmup=0, clock=clock)
    assert m.stats.count == 7 and m.stats.median_s == 4.0


def test_measure_budget_wins_over_min_runs() -> None:
    clock = FakeClock()
    m = measure(clock.work(_cycle(1.0, [], [0.5])), budget_s=3.0, min_runs=1, warmup=0, clock=clock)
    assert m.stats.count == 6  # 6 * 0.5 s reaches the 3 s budget


def test_measure_max_runs_caps_but_never_below_min_runs() -> None:
    clock = FakeClock()
    m = measure(clock.work(_cycle(1.0, [], [1.0])), budget_s=1e9, min_runs=2, max_runs=5, warmup=0, clock=clock)
    assert m.stats.count == 5
    clock = FakeClock()
    m = measure(clock.work(_cycle(1.0, [], [1.0])), budget_s=1e9, min_runs=8, max_runs=5, warmup=0, clock=clock)
    assert m.stats.count == 8


def test_measure_syncs_after_every_call_inside_the_timed_region() -> None:
    clock = FakeClock()
    m = measure(clock.work(_cycle(1.0, [1.0], [1.0])), clock.sync(cost=0.25), budget_s=0.0, min_runs=4,
                warmup=1, clock=clock)
    assert clock.syncs == clock.calls == 1 + 1 + 4
    assert m.first_call_s == 1.25 and m.stats.median_s == 1.25  # the wait for the device is part of a call


def test_measure_warmup_time_budget() -> None:
    clock = FakeClock()
    m = measure(clock.work(_cycle(1.0, [], [1.0])), budget_s=0.0, min_runs=1, warmup=1, warmup_s=2.5, clock=clock)
    assert m.warmup_runs == 3  # 1 s each until 2.5 s of warm-up have passed


@pytest.mark.parametrize("kwargs", [{"budget_s": -1}, {"min_runs": 0}, {"warmup": -1}, {"max_runs": 0},
                                    {"warmup_s": -0.1}], ids=str)
def test_measure_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        measure(lambda: None, **kwargs)


def test_measure_real_clock_runs_in_milliseconds() -> None:
    m = measure(lambda: sum(range(10)), budget_s=0.001, min_runs=5, warmup=1)
    assert m.stats.count >= 5 and m.first_call_s >= 0 and m.stats.min_s <= m.stats.median_s <= m.stats.p99_s


# ============================================================================ configuration


def test_select_runtimes_families_and_order() -> None:
    assert select_runtimes(None, train=False) == INFERENCE_RUNTIMES
    assert select_runtimes(None, train=True) == TRAINING_RUNTIMES
    assert select_runtimes(["ort-cpu", "torch"], train=False) == ("torch-eager", "torch-compile", "ort-cpu")
    assert select_runtimes(["tf"], train=True) == ("tf-eager", "tf-function", "tf-xla")
    with pytest.raises(UsageError, match="unknown runtime 'jax'"):
        select_runtimes(["jax"], train=False)
    with pytest.raises(UsageError, match="training"):
        select_runtimes(["ort"], train=True)


@pytest.mark.parametrize("bad", [{"batches": (0,)}, {"batches": ()}, {"device": "tpu"}, {"precision": "fp8"},
                                 {"threads": 0}, {"budget_s": -1.0}, {"min_runs": 0}], ids=str)
def test_config_validation(bad: dict) -> None:
    with pytest.raises(UsageError):
        BenchConfig(**bad).validate()


# ============================================================================ results and output


def _cell(runtime: str, batch: int, median: float | None, reason: str = "") -> Cell:
    if median is None:
        return Cell(runtime, "inference", batch, "skipped", reason=reason, device="cpu")
    stats = Stats.of([median * 0.9, median, median * 1.1])
    return Cell(runtime, "inference", batch, "ok", device="cpu", stats=stats, first_call_s=median * 10,
                throughput=batch / median, peak_memory_bytes=2**20, memory_source="rss", flops=1000,
                achieved_gflops=1000 / median / 1e9, fraction_of_peak=0.01)


def _result() -> BenchResult:
    cells = (_cell("torch-eager", 1, 2e-3), _cell("ort-cpu", 1, 1e-3),
             _cell("ort-cuda", 1, None, reason="onnxruntime has no CUDAExecutionProvider"),
             _cell("torch-eager", 8, 3e-3), _cell("ort-cpu", 8, 4e-3))
    return BenchResult(model="mlp", preset="small", task="inference",
                       config={"device_resolved": "cpu", "threads": 2, "precision": "fp32", "budget_s": 0.1},
                       environment={"cpu": {"model": "test cpu"}}, cells=cells, flops={1: 1000, 8: 8000},
                       peak={"gflops": 100.0, "n": 64, "dtype": "float32", "device": "cpu"})


def test_fastest_and_json_round_trip() -> None:
    result = _result()
    assert result.fastest(1).runtime == "ort-cpu"
    assert result.fastest(8).runtime == "torch-eager"
    assert result.fastest(32) is None
    data = json.loads(json.dumps(result.to_dict()))
    assert data["flops"] == {"1": 1000, "8": 8000}
    assert data["cells"][2] == {**data["cells"][2], "status": "skipped", "stats": None}
    assert data["cells"][0]["stats"]["median_s"] == pytest.approx(2e-3)


def test_table_marks_the_fastest_per_batch_and_keeps_skips() -> None:
    table = bench_cli.format_table(_result().to_dict())
    lines = table.splitlines()
    starred = [line.split()[1] for line in lines if len(line.split()) > 1 and line.split()[1].startswith("*")]
    assert starred == ["*ort-cpu", "*torch-eager"]
    assert "device cpu (test cpu)" in lines[0]  # the device's name from the environment capture
    assert any("ort-cuda" in line and "skipped: onnxruntime has no CUDAExecutionProvider" in line for line in lines)


def test_write_json_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "b.json"
    target.write_text("old")
    bench_cli.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]  # no temp file left behind


def test_plot_writes_a_png(tmp_path: Path) -> None:
    from parity.bench.plot import measured_series, plot_bench

    data = _result().to_dict()
    assert set(measured_series(data)) == {"torch-eager", "ort-cpu"}
    path = plot_bench(data, tmp_path / "b.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png"]


# ============================================================================ CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="parity")
    bench_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_module_imports_no_framework() -> None:
    code = ("import sys, parity.cli.bench; "
            "bad = [m for m in ('torch', 'tensorflow', 'onnxruntime', 'keras') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parse_batches() -> None:
    assert bench_cli.parse_batches("1, 8,32,8") == (1, 8, 32)
    for bad in ("", "0", "a,b", "1,-2"):
        with pytest.raises(UsageError, match="--batch"):
            bench_cli.parse_batches(bad)


@pytest.mark.parametrize("argv, message", [
    (["bench", "mlp", "--batch", "x"], "--batch"),
    (["bench", "nonesuch"], "unknown model"),
    (["bench", "mlp", "--preset", "huge"], "preset"),
    (["bench", "mlp", "--runtimes", "torch,jax"], "unknown runtime"),
    (["bench", "mlp", "--threads", "0"], "threads"),
    (["bench", "mlp", "--json", "/nonexistent-dir/b.json"], "does not exist"),
    (["flops", "mlp", "--batch", "0"], "--batch"),
    (["flops", "missing.onnx"], "not found"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_cli_usage_errors(argv: list[str], message: str) -> None:
    args = _parse(argv)
    with pytest.raises(UsageError, match=message):
        args.handler(args)


def test_cli_flops_prints_the_count(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["flops", "mlp", "--batch", "1,4"])
    assert args.handler is bench_cli.run_flops and args.handler(args) == 0
    out = capsys.readouterr().out
    assert "batch 1: 13.57 kFLOP (13,568 FLOP" in out and "batch 4: 54.27 kFLOP" in out


# ============================================================================ smoke: the real engine on zoo mlp


@pytest.fixture(scope="module")
def mlp_inference(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, str]:
    """One CLI run over every inference runtime with a tiny budget, JSON and plot written."""
    out = tmp_path_factory.mktemp("bench")
    args = _parse(["bench", "mlp", "--batch", "1,4", "--device", "cpu", "--threads", "1", "--budget", "0.01",
                   "--min-runs", "3", "--warmup", "1", "--json", str(out / "b.json"), "--plot", str(out / "b.png")])
    assert args.handler is bench_cli.run_bench
    rc = args.handler(args)
    return rc, json.loads((out / "b.json").read_text()), str(out / "b.png")


def _check_cells(data: dict, runtimes: tuple[str, ...], batches: tuple[int, ...], min_runs: int) -> None:
    """Every cell present; every CPU-capable one measured; only the GPU providers skipped, for their reason."""
    by_key = {(c["runtime"], c["batch"]): c for c in data["cells"]}
    assert set(by_key) == {(r, b) for r in runtimes for b in batches}  # nothing dropped
    for (runtime, batch), c in by_key.items():
        if runtime in GPU_ONLY:
            provider = GPU_ONLY[runtime]
            assert c["status"] == "skipped", (runtime, batch, c["status"], c["reason"])
            assert re.search(rf"onnxruntime has no {provider}|{provider} needs --device cuda", c["reason"]), c["reason"]
            continue
        assert c["status"] == "ok", (runtime, batch, c["status"], c["reason"])
        s = c["stats"]
        assert s["count"] >= min_runs and c["first_call_s"] is not None, runtime
        assert 0 < s["min_s"] <= s["median_s"] <= s["p90_s"] <= s["p99_s"], runtime
        assert c["throughput"] == pytest.approx(batch / s["median_s"])


def test_smoke_every_cpu_inference_runtime_is_measured(mlp_inference: tuple[int, dict, str]) -> None:
    rc, data, plot = mlp_inference
    assert rc == 0
    _check_cells(data, INFERENCE_RUNTIMES, (1, 4), min_runs=3)
    assert Path(plot).read_bytes()[:4] == b"\x89PNG"


def test_smoke_records_environment_threads_precision_and_flops(mlp_inference: tuple[int, dict, str]) -> None:
    _, data, _ = mlp_inference
    env = data["environment"]  # parity.env.capture's shape, as `parity doctor` and check results have it
    assert env["versions"]["torch"] and env["cpu"]["usable_cores"] >= 1 and "gpu" in env
    assert env["torch"]["intra_op_threads"] == 1  # read back from torch after the bench set it
    assert env["torch"]["tf32"]["matmul"] is False  # fp32 means TF32 off
    assert env["tensorflow"]["tf32"] is False and env["onnxruntime"]["available"] is True
    assert data["config"]["device_resolved"] == "cpu" and data["config"]["threads"] == 1
    settings = data["config"]["settings"]
    assert settings["threads"]["requested"] == 1 and settings["threads"]["ort"]["intra_op_threads"] == 1
    assert settings["precision"]["torch"]["tf32"] is False
    assert set(data["load_average_1min"]) == {"start", "end"}
    assert data["flops"] == {"1": 13568, "4": 4 * 13568}
    ok = [c for c in data["cells"] if c["status"] == "ok"]
    assert all(c["flops"] and c["achieved_gflops"] is not None and c["peak_memory_bytes"] for c in ok)


def test_environment_describes_only_the_frameworks_a_bench_imports() -> None:
    import zoo
    from parity.bench.engine import Bench

    config = BenchConfig(batches=(1,), device="cpu", threads=1, runtimes=("torch-eager",), probe_peak=False)
    with Bench(zoo.get("mlp"), config) as bench:
        env = bench.environment()
    assert env["torch"]["available"] is True
    assert "tensorflow" not in env and "onnxruntime" not in env


def test_smoke_every_cpu_training_mode_is_measured() -> None:
    import zoo
    from parity.bench.engine import run_benchmark

    config = BenchConfig(batches=(4,), train=True, device="cpu", threads=1, budget_s=0.01, min_runs=3, warmup=1,
                         probe_peak=False)
    data = run_benchmark(zoo.get("mlp"), config).to_dict()
    _check_cells(data, TRAINING_RUNTIMES, (4,), min_runs=3)
    eager = next(c for c in data["cells"] if c["runtime"] == "torch-eager")
    assert eager["status"] == "ok" and eager["settings"]["optimizer"] == "SGD"
    assert eager["settings"]["loss"] == "cross_entropy"  # mlp ends in [batch, classes] logits
    assert eager["settings"]["learning_rate"] == 0.01 and eager["settings"]["momentum"] == 0.9
    assert eager["flops"] == 3 * 4 * 13568  # training step counted as 3x the forward


def test_table_warns_when_other_processes_loaded_the_cpu() -> None:
    data = _result().to_dict()
    data["environment"]["cpu"] = {"model": "test cpu", "logical_cores": 2, "usable_cores": 2}
    data["load_average_1min"] = {"start": 0.5, "end": 3.5}
    assert "WARNING: host load average reached 3.5 on 2 cores" in bench_cli.format_table(data)
    data["load_average_1min"] = {"start": 0.5, "end": 1.9}
    assert "WARNING" not in bench_cli.format_table(data)


# ============================================================================ make bench: its exit code


@pytest.fixture(scope="module")
def bench_script() -> ModuleType:
    """scripts/bench.py, loaded as a module (scripts/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_bench_fails_on_an_unmeasured_cpu_cell(bench_script: ModuleType) -> None:
    data = _result().to_dict()
    assert bench_script.cell_problems(data) == []  # ort-cuda skipped for want of a GPU provider is fine
    data["cells"].append(_cell("tf-xla", 1, None, reason="tensorflow is not installed").to_dict())
    data["cells"].append({**_cell("torch-compile", 1, None, reason="InductorError: boom").to_dict(),
                          "status": "failed"})
    problems = bench_script.cell_problems(data)
    assert len(problems) == 2
    assert "tf-xla batch=1: skipped: tensorflow is not installed" in problems[0]
    assert "torch-compile batch=1: failed: InductorError: boom" in problems[1]


def test_make_bench_fails_outside_the_fidelity_band(bench_script: ModuleType) -> None:
    band = bench_script.FIDELITY_TARGET
    row = {"model": "mlp", "runtime": "ort-cpu", "batch": 1, "round_ratios": [1.0]}
    inside = [{**row, "ratio": 1 + band * 0.9}, {**row, "ratio": 1 - band * 0.9}]
    assert bench_script.fidelity_problems(inside) == []
    outside = bench_script.fidelity_problems([{**row, "ratio": 1 + band * 1.5}])
    assert len(outside) == 1 and "outside 1 +- 5%" in outside[0]
