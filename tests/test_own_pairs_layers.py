"""The non-zoo pairs of tests/port_pairs.py through ``check_models`` with ``layers=True``, both directions:
every runtime within tolerance of the source and every layer within its depth tolerance."""

from __future__ import annotations

import pytest
from port_pairs import PAIRS

from parity import check_models

_TO_KERAS = {"NCHW": (1, 2, 0), "NCL": (1, 0)}  # per-sample shape, torch layout -> Keras layout


def _shapes(name: str, framework: str) -> dict[str, tuple[int, ...]]:
    pair = PAIRS[name]
    if framework == "torch":
        return {i.name: i.shape for i in pair.inputs}
    return {i.name: tuple(i.shape[k] for k in _TO_KERAS[i.layout]) if i.layout in _TO_KERAS else i.shape
            for i in pair.inputs}


@pytest.mark.parametrize("source", ["torch", "tf"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_own_pair_passes_with_layers(name: str, source: str) -> None:
    pair = PAIRS[name]
    torch_model, keras_model = pair.torch(0), pair.keras(1)
    models = (torch_model, keras_model) if source == "torch" else (keras_model, torch_model)
    result = check_models(*models, _shapes(name, source), layers=True,
                          input_layouts={i.name: i.layout for i in pair.inputs})
    assert result.passed, [c.explain() for c in result.failures]
    assert result.layers is not None and result.layers.rows, "no layer was compared"
    assert result.layers.first_divergence is None
    worst = max(c.max_abs / c.atol for c in result.comparisons)
    assert worst <= 1.0
