"""Your own models (issue 10, items 1-3): check_models, `parity check --torch/--keras`, assert_parity and the
pytest plugin, on pairs that are not zoo models. The README's three examples are run as written."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from parity import check_models
from parity.check import CheckResult, format_table
from parity.check.user import DEFAULT_TOLERANCE, user_pair
from parity.cli import main
from parity.cli.user_models import load_keras, load_npz_inputs, parse_input
from parity.errors import ParityError, UsageError
from parity.testing import assert_parity, failure_message
from zoo.spec import TensorSpec

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `examples.own_models`, as from the repository root

import own_models_example as ex  # noqa: E402

from examples.own_models import keras_model, torch_model  # noqa: E402

X = {"x": (3, 8, 8)}


def readme_blocks() -> dict[str, list[str]]:
    """The fenced code blocks of the README's "Check your own models" section, by language."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Check your own models", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        blocks.setdefault(lang, []).append(body)
    return blocks


def fingerprint(model: Any) -> str:
    """A hash of every parameter and buffer (torch) or variable (Keras), with names, and torch modes."""
    h = hashlib.sha256()
    if isinstance(model, torch.nn.Module):
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            h.update(name.encode())
            h.update(t.detach().cpu().numpy().tobytes())
        h.update(str([m.training for m in model.modules()]).encode())
    else:
        for v in model.variables:
            h.update(v.path.encode())
            h.update(np.asarray(v.numpy()).tobytes())
    return h.hexdigest()


def within_tolerance(result: CheckResult) -> bool:
    return result.passed and all(c.max_abs <= c.atol for c in result.comparisons) and len(result.comparisons) == 3


@pytest.fixture(scope="module")
def readme_result() -> CheckResult:
    """The README's Python example, executed as written."""
    (code,) = [b for b in readme_blocks()["python"] if "check_models(" in b]
    namespace: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "README.md", "exec"), namespace)
    assert "PASSED" in out.getvalue()
    return namespace["result"]


def test_readme_python_example_passes_within_the_default_tolerance(readme_result: CheckResult) -> None:
    assert within_tolerance(readme_result)
    assert {c.a for c in readme_result.comparisons} == {"tf", "ort-torch", "ort-tf"}
    assert readme_result.tolerance["reason"] == DEFAULT_TOLERANCE.reason
    assert readme_result.pair["inputs"]["x"]["layout"] == "NCHW"
    assert [layer.status for layer in readme_result.port.layers] == ["exact", "exact"]


def test_a_keras_source_ports_into_torch_with_layers(tmp_path: Path) -> None:
    keras_source, torch_target = keras_model(seed=4), torch_model(seed=5)
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 3)).astype(np.float32)  # the source's NHWC
    result = check_models(keras_source, torch_target, [x], layers=True)
    assert within_tolerance(result) and result.source == "tf"
    assert result.layers is not None and result.layers.passed and result.layers.first_divergence is None
    assert result.pair["inputs"]["x"]["how"] == "the only layout the torch model takes"
    with torch.inference_mode():  # the ported torch model on the same data, NCHW
        got = torch_target(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(got, np.asarray(keras_source(x)), atol=result.comparisons[0].atol, rtol=0)


@pytest.mark.parametrize("form", ["dict", "sequence", "array", "shape", "tensorspec"])
def test_input_forms(form: str) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    given = {"dict": {"x": x}, "sequence": [x], "array": x, "shape": {"x": (3, 8, 8)},
             "tensorspec": {"x": TensorSpec("x", (3, 8, 8))}}[form]
    pair = user_pair(torch_model(), keras_model(), given, seed=7)
    assert pair.spec.inputs[0].layout == "NCHW" and pair.inputs["x"].shape == (2, 3, 8, 8)
    if form in ("dict", "sequence", "array"):
        np.testing.assert_array_equal(pair.inputs["x"], x)
    else:  # seeded: the same draw for the same seed
        np.testing.assert_array_equal(pair.inputs["x"], user_pair(torch_model(), keras_model(), X, seed=7).inputs["x"])
    keras_first = user_pair(keras_model(), torch_model(), {"x": x.transpose(0, 2, 3, 1)})  # Keras source: NHWC in
    np.testing.assert_array_equal(keras_first.inputs["x"], x)  # torch layout inside


def _square_pair() -> tuple[Any, Any]:
    import keras

    inp = keras.Input((4, 4, 4), name="x")
    return torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1)), keras.Model(inp, keras.layers.Conv2D(2, 1)(inp))


def test_an_ambiguous_layout_is_an_error_that_says_what_to_state() -> None:
    torch_sq, keras_sq = _square_pair()
    with pytest.raises(UsageError, match=r"torch shape \(4, 4, 4\) fits the Keras input \(4, 4, 4\) both as is and "
                                         r"channels-last, so its layout is ambiguous; state it: "
                                         r"input_layouts=\{'input': 'NCHW'\}"):
        user_pair(torch_sq, keras_sq, {"input": (4, 4, 4)})
    assert user_pair(torch_sq, keras_sq, {"input": (4, 4, 4)}, input_layouts={"x": "NCHW"}).spec.inputs[0].layout \
        == "NCHW"  # stated by either side's name
    import keras  # a Keras source: a torch model that takes both layouts (flatten first) is ambiguous too

    inp = keras.Input((3, 3, 3), name="x")
    flat = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)))
    with pytest.raises(UsageError, match="both as is and channels-first"):
        user_pair(flat, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(27, 2)), {"x": (3, 3, 3)})
    with pytest.raises(UsageError, match="neither as is nor channels-last"):
        user_pair(torch_model(), keras_model(), {"x": (3, 8, 9)})


@pytest.mark.parametrize("source", ["torch", "tf"])
def test_the_source_is_bit_identical_after_a_check(source: str) -> None:
    t, k = ex.bn_torch(seed=1), ex.bn_keras()  # torch in training mode, with non-trivial running statistics
    src, dst = (t, k) if source == "torch" else (k, t)
    before, target_before = fingerprint(src), fingerprint(dst)
    result = check_models(src, dst, {"x": (3, 6, 6) if source == "torch" else (6, 6, 3)})
    assert within_tolerance(result)
    assert fingerprint(src) == before  # weights, buffers and (torch) modes
    assert fingerprint(dst) != target_before  # the port replaced the target's weights, as documented
    assert t.training and t.bn.training  # the torch model's modes are given back


@pytest.fixture(scope="module")
def ported() -> tuple[Any, Any]:
    """The README pair after a port: the Keras model holds the torch model's weights."""
    t, k = torch_model(), keras_model()
    assert check_models(t, k, X).passed
    return t, k


def test_compare_only_checks_two_models_as_they_are(ported: tuple[Any, Any]) -> None:
    hashes = fingerprint(ported[0]), fingerprint(ported[1])
    result = assert_parity(*ported, X, port=False)  # passes: returns the result
    assert within_tolerance(result) and not result.ported and result.port.layers == []
    assert (fingerprint(ported[0]), fingerprint(ported[1])) == hashes  # compare-only touches neither model
    assert "compared as given (not ported)" in format_table(result)


@pytest.fixture(scope="module")
def planted(ported: tuple[Any, Any]) -> tuple[Any, Any]:
    """A copy of the ported Keras model with its conv kernel's spatial axes swapped."""
    k = keras_model()
    k.set_weights(ported[1].get_weights())
    ex.plant_transposed_kernel(k)
    return ported[0], k


def test_a_planted_bug_fails_and_names_the_layer(planted: tuple[Any, Any]) -> None:
    result = check_models(*planted, X, port=False)
    assert not result.passed and {c.a for c in result.failures} == {"tf", "ort-tf"}  # ort-torch is the source's
    assert result.layers is not None and result.layers.first_divergence == "conv"  # localised by itself
    assert "first diverging layer: conv" in failure_message(result)


def test_assert_parity_raises_with_the_table_and_the_layer(planted: tuple[Any, Any]) -> None:
    with pytest.raises(AssertionError, match=r"(?s)FAILED.*FIRST LAYER OVER TOLERANCE: conv.*first diverging "
                                             r"layer: conv"):
        assert_parity(*planted, X, port=False)


def test_a_saved_result_reloads(readme_result: CheckResult, planted: tuple[Any, Any]) -> None:
    failed = check_models(*planted, X, port=False)
    for result in (readme_result, failed):
        saved = json.loads(json.dumps(result.to_dict()))
        again = CheckResult.from_dict(saved)
        assert again.to_dict() == saved
        assert format_table(again) == format_table(result)
        assert again.passed == result.passed and again.comparisons[0].worst_index == result.comparisons[0].worst_index
    assert CheckResult.from_dict(json.loads(json.dumps(failed.to_dict()))).layers.first_divergence == "conv"
    with pytest.raises(UsageError, match="not a saved check result"):
        CheckResult.from_dict({"model": "x"})


def test_inputs_pair_by_name_and_onnx_runtime_is_fed_by_name() -> None:
    """Keras declares (b, a), torch takes (a, b): fed by position anywhere, a - 2b would become b - 2a."""
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((2, 5)).astype(np.float32) for _ in range(2))
    result = check_models(ex.two_input_torch(), ex.two_input_keras(), {"b": b, "a": a}, port=False)
    assert within_tolerance(result)
    np.testing.assert_allclose(result.outputs["ort-tf"]["output"], a - 2 * b, rtol=1e-6)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_readme_command_line_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    (command,) = readme_blocks()["bash"][:1]
    argv = shlex.split(command)
    assert argv[0] == "parity"
    code, out, _ = run_cli(argv[1:])
    assert code == 0
    shown = [b for b in readme_blocks()["text"] if "parity check TinyNet" in b][0]
    assert out.splitlines()[0] == shown.splitlines()[0] and out.rstrip().endswith("PASSED")


def test_cli_real_inputs_saved_outputs_json_and_an_untouched_source(tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    x = np.random.default_rng(3).standard_normal((4, 3, 6, 6)).astype(np.float32)
    np.savez(data, x=x)
    source = ex.shared_torch()  # the very instance the command line loads
    before = fingerprint(source)
    outputs, report = tmp_path / "out.npz", tmp_path / "r.json"
    code, out, err = run_cli(["check", "--torch", "own_models_example:shared_torch", "--keras",
                              "own_models_example:shared_keras", "--inputs", str(data), "--save-outputs",
                              str(outputs), "--json", str(report)])
    assert code == 0, out + err
    assert fingerprint(source) == before
    with np.load(outputs, allow_pickle=False) as saved:
        assert sorted(saved.files) == ["ort-tf/output", "ort-torch/output", "tf/output", "torch/output"]
        with torch.inference_mode():  # the real data went in: the torch output is the source's own on x
            expected = copy.deepcopy(source).eval()(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(saved["torch/output"], expected)
    loaded = CheckResult.from_dict(json.loads(report.read_text()))
    assert loaded.passed and loaded.pair["inputs"]["x"]["given"] == "array" and loaded.files["outputs"] == str(outputs)


def test_cli_parity_failure_exits_1_and_names_the_layer() -> None:
    code, out, _ = run_cli(["check", "--torch", "examples.own_models:torch_model", "--keras",
                            "examples.own_models:keras_model", "--input", "x:3x8x8:float32:NCHW", "--compare-only"])
    assert code == 1  # two independently initialised models: compared as they are, they differ
    assert "FIRST LAYER OVER TOLERANCE: conv" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--keras", "own_models_example:keras_too_wide", "--input", "x:3x8x8"],
     "first mismatching layer: target tf layer 'fc'"),
    (["--keras", "own_models_example:keras_too_wide", "--input", "x:3x8x8", "--compare-only"],
     "the torch model returns shape (10,), the Keras model (12,)"),
    (["--keras", "examples.own_models:keras_model", "--input", "x:3xq"], "is not dimensions joined by 'x'"),
    (["--keras", "no_such_module:model", "--input", "x:3x8x8"], "no module named 'no_such_module'"),
    (["--keras", "examples.own_models:keras_model"], "give the inputs: --input"),
    (["--keras", "examples.own_models:keras_model", "--input", "x:3x8x8", "--preset", "small"], "for zoo models"),
], ids=["mismatched-pair", "mismatched-outputs", "bad-shape", "no-module", "no-inputs", "zoo-option"])
def test_cli_usage_errors_exit_2(argv: list[str], message: str) -> None:
    code, out, err = run_cli(["check", "--torch", "examples.own_models:torch_model", *argv])
    assert code == 2 and message in err, out + err


def test_user_model_loading(tmp_path: Path) -> None:
    assert parse_input("x:3x32x32:float32:NCHW") == ("x", (3, 32, 32), "float32", "NCHW")
    assert parse_input("ids:7:int64") == ("ids", (7,), "int64", None)
    model = keras_model()
    model.save(tmp_path / "m.keras")
    loaded = load_keras(str(tmp_path / "m.keras"))  # safe mode
    assert [w.shape for w in loaded.get_weights()] == [w.shape for w in model.get_weights()]
    with pytest.raises(UsageError, match="only Keras 3 .keras files"):
        load_keras(str(tmp_path / "m.h5"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "obj.npz").write_bytes((tmp_path / "obj.npy").read_bytes())
    with pytest.raises(ParityError, match="cannot read it"):
        load_npz_inputs(tmp_path / "obj.npz")  # never unpickled


README_TEST_FILE = """
{readme_test}

def test_planted_bug(parity_check):
    parity_check(torch_model(), keras_model(), {{"x": (3, 8, 8)}}, port=False)  # independent weights: differ
"""


def test_the_pytest_plugin_fixture(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    (readme_test,) = [b for b in readme_blocks()["python"] if "parity_check" in b]
    pytester.makepyfile(test_user=README_TEST_FILE.format(readme_test=readme_test))
    monkeypatch.syspath_prepend(str(ROOT))
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, failed=1)  # the README's test, and the planted one
    result.stdout.fnmatch_lines(["*first diverging layer: conv*"])


def test_the_plugin_is_registered_and_imports_no_framework() -> None:
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="pytest11") if e.name == "parity"] == ["parity.pytest_plugin"]
    code = ("import sys, parity, parity.pytest_plugin, parity.testing; from parity import check_models; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
