"""`parity check` on every zoo model, both directions (the `parity check --all` matrix)."""

from __future__ import annotations

from pathlib import Path

import pytest
from diagnostics_cache import HEAVY, full_check

import zoo
from parity.check import CheckOptions, run_check

CASES = [pytest.param(name, source, id=f"{name}-from-{source}") for name in zoo.names() for source in ("torch", "tf")]


def _quiet(msg: str) -> None:
    pass


def _source_elements(spec: zoo.ModelSpec) -> int:
    """Parameters plus BatchNorm running statistics of the torch twin (what a lossless export carries)."""
    model = spec.build_torch(0)
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    return int(params + stats)


@pytest.mark.parametrize(("name", "source"), CASES)
def test_check_passes_and_consumes_every_parameter(name: str, source: str, tmp_path: Path) -> None:
    # from torch: the shared full check (the same check, with the diagnostics too); from tf: a plain one
    result = (full_check(name) if source == "torch" and name not in HEAVY
              else run_check(CheckOptions(model=name, source=source, out=tmp_path), progress=_quiet))
    assert result.passed, [c.explain() for c in result.failures]
    port = result.port
    unused = port.unused_initializers
    assert all(reason.startswith("structural constant") for reason in unused.values()), unused
    assert port.consumed_initializers, "nothing consumed"
    assert not port.unfolded, port.unfolded  # every constant subgraph folded
    assert not result.lint, result.lint  # the twins agree on epsilons, momenta, GELU form, biases
    if source == "torch":  # a lossless torch export carries every parameter and statistic: count elements
        import onnx
        from onnx import numpy_helper

        sizes = {i.name: numpy_helper.to_array(i).size
                 for i in onnx.load(result.files["torch_onnx"]).graph.initializer}
        assert sum(sizes[n] for n in port.consumed_initializers) == _source_elements(zoo.get(name))


@pytest.mark.parametrize("name", ["cnn", "lstm", "gru", "bert"])
@pytest.mark.parametrize("batch", [1, 5])
def test_batch_sizes(name: str, batch: int) -> None:
    result = run_check(CheckOptions(model=name, batch=batch), progress=_quiet)
    assert result.passed, [c.explain() for c in result.failures]
    assert all(c.shape_b[0] == batch for c in result.comparisons)


@pytest.mark.slow
def test_resnet50_standard_preset_end_to_end() -> None:
    """The real ResNet-50 (25.6 M parameters, 224x224): about a minute on 2 cores (`make test-slow`)."""
    result = run_check(CheckOptions(model="resnet50", preset="standard", batch=1), progress=_quiet)
    assert result.passed, [c.explain() for c in result.failures]
    assert len(result.port.layers) == 107 and result.port.exact
