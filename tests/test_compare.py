"""Known-answer tests for the comparator."""

from __future__ import annotations

import json

import numpy as np

from parity.compare import compare


def test_identical_arrays_pass_with_zero_error() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    c = compare(x, x.copy(), atol=0.0, rtol=0.0)
    assert c and c.passed
    assert c.max_abs == 0.0 and c.max_rel == 0.0 and c.mean_abs == 0.0
    assert c.cosine == 1.0 and c.over_tolerance == 0


def test_known_worst_difference_and_index() -> None:
    expected = np.zeros((2, 3), np.float32)
    actual = expected.copy()
    actual[1, 2] = 0.5
    actual[0, 1] = 0.1
    c = compare(actual, expected, atol=0.2, rtol=0.0, a="tf", b="torch", output="logits")
    assert not c
    assert c.max_abs == 0.5
    assert c.worst_index == (1, 2)
    assert c.over_tolerance == 1 and c.size == 6
    assert np.isclose(c.over_fraction, 1 / 6)
    assert np.isclose(c.mean_abs, 0.6 / 6)
    msg = c.explain()
    assert "tf vs torch [logits]" in msg and "1 of 6" in msg and "(1, 2)" in msg


def test_atol_and_rtol_combine_like_allclose() -> None:
    expected = np.array([100.0, 1.0])
    actual = np.array([100.05, 1.0])
    # |d| = 0.05 <= 0.001 + 1e-3 * 100 = 0.101: passes only with both terms
    assert compare(actual, expected, atol=1e-3, rtol=1e-3)
    assert not compare(actual, expected, atol=1e-3, rtol=0.0)
    assert not compare(actual, expected, atol=0.0, rtol=1e-4)
    c = compare(actual, expected, atol=0.0, rtol=0.0)
    assert np.isclose(c.max_rel, 0.05 / 100.0)


def test_nan_in_one_side_fails_and_is_reported() -> None:
    expected = np.array([1.0, 2.0, 3.0])
    actual = np.array([1.0, np.nan, 3.0])
    c = compare(actual, expected, atol=1e-3, rtol=1e-3)
    assert not c
    assert c.nonfinite_mismatch == 1
    assert c.worst_index == (1,)
    assert any("non-finite" in n for n in c.notes)
    assert "NaN/Inf positions differ at 1" in c.explain()


def test_matching_nan_and_inf_masks_pass() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 1.0])
    c = compare(x.copy(), x, atol=0.0, rtol=0.0)
    assert c and c.nonfinite_mismatch == 0
    assert not compare(np.array([np.inf]), np.array([-np.inf]), atol=1.0, rtol=1.0)


def test_shape_mismatch_is_a_clear_failure() -> None:
    c = compare(np.zeros((2, 3)), np.zeros((3, 2)), atol=1.0, rtol=1.0, a="ort-tf", b="torch")
    assert not c
    assert "shape mismatch (2, 3) vs (3, 2)" in c.explain()


def test_cosine_similarity_known_value() -> None:
    c = compare(np.array([1.0, 0.0]), np.array([1.0, 1.0]), atol=10.0, rtol=0.0)
    assert np.isclose(c.cosine, 1 / np.sqrt(2))


def test_to_dict_is_json_serialisable_with_contract_keys() -> None:
    c = compare(np.array([np.nan]), np.array([1.0]), atol=0.0, rtol=0.0, a="tf", b="torch", output="y")
    d = json.loads(json.dumps(c.to_dict()))
    for key in ("a", "b", "output", "max_abs", "max_rel", "mean_abs", "atol", "rtol", "passed"):
        assert key in d
    assert d["passed"] is False
