"""The planted-bug catalogue (tests/planted_bugs.py): every bug seen at its level and localised to its layer,
no alarm on the correct pairs.

``make test`` runs each bug and each correct pair once (seed 0, batch 2); the whole matrix
(3 seeds x 2 batch sizes, with the summary table) is the slow test, also runnable as
``python tests/planted_bugs.py``.

The harness copies weights through the target table; a few pairs also go through the real
pipeline (``parity.api.check_models``: ONNX export and port) and must get the same verdicts.
"""

from __future__ import annotations

import pytest
from planted_bugs import BUGS, LEVELS, PAIRS, Bug, levels_for, localised, run, run_pipeline, summary


def test_the_catalogue_covers_every_area_on_both_sides() -> None:
    assert len(BUGS) >= 25 and len({b.name for b in BUGS}) == len(BUGS)
    areas = {b.area for b in BUGS}
    assert {"normalisation", "activations", "padding/pooling", "resampling", "attention", "recurrent", "embeddings",
            "masking", "optimiser", "frozen layers", "regularisation"} <= areas
    assert {b.side for b in BUGS} == {"torch", "tf"}
    assert {b.level for b in BUGS} == set(LEVELS)
    assert {b.pair for b in BUGS} == set(PAIRS)


@pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
def test_planted_bug_is_caught_at_its_level_and_localised(bug: Bug) -> None:
    got = run(bug.pair, bug.name, seed=0, batch=2, levels=levels_for(bug))
    assert got.seen[bug.level], f"{bug.name} ({bug.what}) not seen at {bug.level}: {got.seen}"
    assert localised(bug, got.where[bug.level]), f"{bug.name}: localised to {got.where[bug.level]!r}, not {bug.layer!r}"
    if bug.level != "outputs":  # a training-only bug must not be blamed on the forward pass
        assert not got.seen["outputs"] and not got.seen["layers"], got.where


@pytest.mark.parametrize("pair", list(PAIRS))
def test_correct_pair_raises_no_alarm(pair: str) -> None:
    got = run(pair, "", seed=0, batch=2)
    assert not got.false_alarm, got.where


BY_NAME = {b.name: b for b in BUGS}
# one correct pair, and a bug at each level on three pairs (about 25 s); the rest under slow
PIPELINE = [("mlp", ""), ("vision", "leaky_relu"), ("attn", "mask_tril"), ("mlp", "adam_l2_for_adamw")]
PIPELINE_SLOW = [("vision", ""), ("seq", ""), ("attn", ""), *[(b.pair, b.name) for b in BUGS if b.level != "grads"
                                                               and (b.pair, b.name) not in PIPELINE
                                                               and b.layer != "adam"],  # an epsilon, not a name
                 ("vision", "l2_head_keras"), ("seq", "l1_head_torch")]


def _same_verdict_through_onnx(pair: str, name: str) -> None:
    if not name:
        got = run_pipeline(pair, "", seed=0, batch=2, level="train" if pair == "mlp" else "outputs")
        assert not any(got.seen.values()), got.where
        return
    bug = BY_NAME[name]
    harness = run(pair, name, seed=0, batch=2, levels=levels_for(bug))
    got = run_pipeline(pair, name, seed=0, batch=2, level=bug.level)
    assert got.seen[bug.level] == harness.seen[bug.level] is True, (got.seen, harness.seen)
    assert localised(bug, got.where[bug.level]), f"{name}: through ONNX localised to {got.where[bug.level]!r}"
    if bug.level != "outputs":
        assert not got.seen["outputs"] and not got.seen["layers"], got.where


@pytest.mark.parametrize(("pair", "name"), PIPELINE, ids=[f"{p}-{n or 'correct'}" for p, n in PIPELINE])
def test_same_verdict_through_the_real_pipeline(pair: str, name: str) -> None:
    _same_verdict_through_onnx(pair, name)


@pytest.mark.slow
@pytest.mark.parametrize(("pair", "name"), PIPELINE_SLOW, ids=[f"{p}-{n or 'correct'}" for p, n in PIPELINE_SLOW])
def test_same_verdict_through_the_real_pipeline_slow(pair: str, name: str) -> None:
    _same_verdict_through_onnx(pair, name)


@pytest.mark.slow
def test_whole_catalogue_over_seeds_and_batch_sizes() -> None:
    table, counts = summary()
    print(table)
    assert counts["caught"] == counts["runs"], table
    assert counts["localised"] == counts["runs"], table
    assert counts["false_alarms"] == 0, table
