"""The decision summary on synthetic timing samples with known answers: a clear winner, a tie,
a skipped runtime, break-even calls, parity from a check, and the range fallback without samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from parity.bench.results import BenchResult, Cell, keep_samples
from parity.bench.timing import Stats
from parity.report.decision import decide, parity_between
from parity.report.decision_text import format_decision

MS = 1e-3


def _cell(runtime: str, batch: int, median_ms: float | None, *, first_ms: float = 1.0, spread: float = 0.02,
          seed: int = 0, reason: str = "", comparable: bool = False, mem: int | None = None) -> Cell:
    if median_ms is None:
        return Cell(runtime, "inference", batch, "skipped", reason=reason, device="cpu")
    # 400 calls around the median, +-spread (uniform): the median's interval is far narrower than the spread
    rng = np.random.default_rng(seed)
    samples = median_ms * MS * (1 + spread * rng.uniform(-1, 1, 400))
    return Cell(runtime, "inference", batch, "ok", device="cpu", stats=Stats.of(samples), first_call_s=first_ms * MS,
                throughput=batch / float(np.median(samples)), peak_memory_bytes=mem, memory_source="test",
                memory_comparable=comparable, samples_s=keep_samples(samples))


def _bench(*cells: Cell, device: str = "cpu") -> dict:
    result = BenchResult(model="mlp", preset="small", task="inference",
                         config={"device_resolved": device, "threads": 2, "precision": "fp32"},
                         environment={}, cells=cells)
    return result.to_dict()


def test_a_clear_winner_with_interval_and_break_even() -> None:
    # ort-cpu: 1 ms per call but a 46 ms first call; torch-eager: 2 ms, 1 ms first call.
    data = _bench(_cell("torch-eager", 1, 2.0, first_ms=1.0, seed=1), _cell("ort-cpu", 1, 1.0, first_ms=46.0, seed=2),
                  _cell("tf-eager", 1, 8.0, seed=3))
    group = data["decision"]["groups"][0]
    assert group["fastest"] == group["winner"] == "ort-cpu" and group["tied_with"] == []
    runner = group["others"][0]
    assert runner["runtime"] == "torch-eager" and not runner["tied"]
    assert runner["speedup"] == pytest.approx(2.0, rel=0.01)
    low, high = runner["speedup_interval"]
    # +-2% uniform noise on 400 samples: the median ratio is known to within about 0.5%
    assert 1.97 < low < runner["speedup"] < high < 2.03
    assert runner["first_call_extra_s"] == pytest.approx(45 * MS)
    # 45 ms extra repaid at ~1 ms saved per call: 45 calls (46 with the sample noise on the saving)
    assert runner["break_even_calls"] in (45, 46)
    assert group["others"][1]["speedup"] == pytest.approx(8.0, rel=0.02)
    text = format_decision(data["decision"])
    assert "batch 1: ort-cpu is fastest, 2x (95% interval" in text
    assert f"repaid after {runner['break_even_calls']} calls" in text
    assert "Which to use for mlp inference on cpu: ort-cpu" in text


def test_overlapping_measurements_are_tied_and_nothing_is_recommended() -> None:
    data = _bench(_cell("torch-eager", 8, 1.000, seed=4), _cell("ort-cpu", 8, 1.002, seed=5),
                  _cell("tf-xla", 8, 3.0, seed=6))
    group = data["decision"]["groups"][0]
    assert group["winner"] is None
    assert group["tied_with"] == [o["runtime"] for o in group["others"] if o["tied"]]
    assert len(group["tied_with"]) == 1
    tied = group["others"][0]
    assert tied["speedup_interval"][0] < 1.01 and tied["tied"]
    assert not group["others"][1]["tied"]  # 3x slower is not a tie
    sentences = data["decision"]["sentences"]
    assert any("are tied" in s and "no recommendation between them" in s for s in sentences)
    assert any("it depends on the batch size (batch 8: tied)" in s for s in sentences)


def test_a_skipped_runtime_is_stated_not_guessed() -> None:
    reason = "onnxruntime has no CUDAExecutionProvider"
    data = _bench(_cell("torch-eager", 1, 2.0), _cell("ort-cpu", 1, 1.0, seed=7),
                  _cell("ort-cuda", 1, None, reason=reason))
    decision = data["decision"]
    assert decision["not_measured"] == [{"runtime": "ort-cuda", "status": "skipped", "reason": reason}]
    assert f"Not measured: ort-cuda (skipped: {reason})." in decision["sentences"]
    assert any(s.startswith("GPU was not measured") for s in decision["sentences"])
    assert any(s.startswith("TensorFlow was not benchmarked") for s in decision["sentences"])
    assert any(s.startswith("Memory was not compared") for s in decision["sentences"])  # CPU RSS only
    assert any("was not verified by this run" in s for s in decision["sentences"])


def test_only_comparable_memory_is_compared() -> None:
    data = _bench(_cell("torch-eager", 4, 2.0, comparable=True, mem=300 * 2**20, seed=8),
                  _cell("tf-xla", 4, 1.0, comparable=True, mem=100 * 2**20, seed=9), device="cuda")
    memory = data["decision"]["groups"][0]["memory"]
    assert memory["smallest"] == "tf-xla"
    assert "Peak memory at batch 4 (each framework's own allocator): tf-xla 100.0 MB, torch-eager 300.0 MB." in \
        data["decision"]["sentences"]


def test_without_samples_the_range_decides() -> None:
    data = _bench(_cell("torch-eager", 1, 2.0, seed=10), _cell("ort-cpu", 1, 1.0, seed=11))
    for cell in data["cells"]:
        cell["samples_s"] = []
    versus = decide(data)["groups"][0]["others"][0]
    assert versus["interval_source"] == "min-p90 range"
    low, high = versus["speedup_interval"]
    assert low < 2.0 < high and not versus["tied"]  # [1.96, 2.04] ms vs [0.98, 1.02] ms: apart


def test_parity_comes_from_a_check_of_the_same_model() -> None:
    check = {"model": "mlp", "preset": "small", "source": "torch", "target": "tf", "comparisons": [
        {"a": "tf", "b": "torch", "output": "y", "max_abs": 2e-7, "passed": True},
        {"a": "ort-torch", "b": "torch", "output": "y", "max_abs": 3e-7, "passed": True}]}
    direct = parity_between("ort-cpu", "torch-eager", check)
    assert direct["verified"] and direct["max_abs"] == pytest.approx(3e-7)
    bound = parity_between("ort-cpu", "tf-xla", check)
    assert bound["verified"] and bound["max_abs"] == pytest.approx(5e-7) and "tf-xla not run" in bound["how"]
    assert not parity_between("torch-eager", "torch-compile", check)["verified"]
    data = _bench(_cell("torch-eager", 1, 2.0, seed=12), _cell("ort-cpu", 1, 1.0, seed=13))
    summary = decide(data, check)
    assert "max |a-b| 3.00e-07" in " ".join(summary["sentences"])
    other = decide(data, {**check, "model": "cnn"})  # another model's check is not used
    assert other["parity_source"] is None


def test_decision_is_deterministic() -> None:
    cells = (_cell("torch-eager", 1, 2.0, seed=14), _cell("ort-cpu", 1, 1.9, seed=15, spread=0.3))
    assert _bench(*cells)["decision"] == _bench(*cells)["decision"]
    assert not math.isnan(_bench(*cells)["decision"]["groups"][0]["others"][0]["speedup_interval"][0])


def test_cpu_memory_in_a_fresh_process_is_comparable() -> None:
    """The child imports torch, builds the cnn twin and runs it: memory above the imports, per batch."""
    import dataclasses

    import zoo
    from parity.bench.memory_probe import SOURCE, with_subprocess_memory
    from parity.bench.results import BenchConfig

    config = BenchConfig(batches=(1, 64), threads=1, device="cpu", probe_peak=False, budget_s=0,
                         memory="subprocess")
    cells = [dataclasses.replace(_cell("torch-eager", b, 1.0), device="cpu") for b in (1, 64)]
    cells.append(_cell("ort-cuda", 1, None, reason="no CUDA"))
    out = with_subprocess_memory(zoo.get("cnn"), config, cells)
    small, large = out[0], out[1]
    assert small.memory_comparable and small.memory_source == SOURCE
    # the cnn (small) twin's weights are a few kB; torch's eager run at batch 1 adds at least 64 kB of
    # activations and allocator pools, and batch 64's activations are more than batch 1's
    assert 64 * 2**10 < small.peak_memory_bytes < 500 * 2**20
    assert large.peak_memory_bytes > small.peak_memory_bytes
    assert out[2] == cells[2]  # a skipped cell is left as it was
    twin = dataclasses.replace(large, runtime="ort-cpu", peak_memory_bytes=large.peak_memory_bytes // 2)
    sentences = _bench(small, large, twin)["decision"]["sentences"]
    assert any(s.startswith("Peak memory at batch 64 (each runtime alone in a fresh process, above its imports)")
               for s in sentences)


def test_a_busy_host_is_said_first() -> None:
    data = _bench(_cell("torch-eager", 1, 2.0, seed=16), _cell("ort-cpu", 1, 1.0, seed=17))
    data.update(load_average_1min={"start": 1.0, "end": 9.5}, environment={"cpu": {"usable_cores": 2}})
    summary = decide(data)
    assert summary["host_load"] == {"busiest": 9.5, "cores": 2}
    assert summary["sentences"][0].startswith("Caution: the host's load average reached 9.5 on 2 cores")
    data["load_average_1min"] = {"start": 0.5, "end": 1.5}
    assert not any(s.startswith("Caution") for s in decide(data)["sentences"])
