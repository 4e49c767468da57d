"""`parity port`, `parity bench` and `parity flops` on a user's own models (``--torch``/``--keras``
``pkg.module:factory`` with ``--input``) and on ONNX files (``--onnx``).

The pair lives in ``tests/user_cli_models.py``, outside the zoo; the command line imports it by
module path. Ports are checked with numbers (the target's outputs against the source's, relative
to the output scale), the source with a hash of every parameter and buffer (torch) or variable
(Keras) taken before and after, FLOPs against counts done by hand.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import user_cli_models as models

from parity.cli import main

HERE = Path(__file__).resolve().parent
PAIR = ["--torch", "user_cli_models:torch_net", "--keras", "user_cli_models:keras_net"]
# A correct port of this float32 pair differs by float32 rounding only; a wrong flatten order or a
# lost BatchNorm statistic moves the outputs by 1e-1 of their scale or more.
REL_TOL = 1e-5
CPU_RUNTIMES = ("torch-eager", "torch-compile", "tf-eager", "tf-function", "tf-xla", "ort-cpu")


@pytest.fixture(scope="module", autouse=True)
def importable() -> Iterator[None]:
    """The CLI imports ``user_cli_models`` by module path: make sure this folder is searched."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(HERE))
        yield


def run(argv: list[str]) -> tuple[int, str, str]:
    """``parity ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def torch_hash(model: Any) -> str:
    h = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def keras_hash(model: Any) -> str:
    h = hashlib.sha256()
    for v in model.variables:
        h.update(v.path.encode())
        h.update(np.asarray(v).tobytes())
    return h.hexdigest()


def images(seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)


def torch_out(model: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return copy.deepcopy(model).eval()(torch.from_numpy(x)).numpy()


def keras_out(model: Any, x_nchw: np.ndarray) -> np.ndarray:
    return np.asarray(model(np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)), training=False))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def torch_from(path: Path) -> Any:
    from safetensors.torch import load_file

    model = models.torch_net(seed=7)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


# ============================================================================ port


@pytest.fixture(scope="module")
def torch_to_keras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`parity port --from torch` of the shared torch model (trained-looking BN statistics, training mode)."""
    source = models.shared_torch()
    before = torch_hash(source)
    out = tmp_path_factory.mktemp("t2k")
    rc, stdout, stderr = run(["port", "--torch", "user_cli_models:shared_torch", "--keras", "user_cli_models:keras_net",
                              "--input", "x:3x8x8", "--from", "torch", "--out", str(out)])
    return {"rc": rc, "out": out, "stdout": stdout, "stderr": stderr, "before": before, "after": torch_hash(source),
            "source": source}


def test_port_torch_to_keras_writes_the_files(torch_to_keras: dict[str, Any]) -> None:
    assert torch_to_keras["rc"] == 0, torch_to_keras["stderr"]
    out = torch_to_keras["out"]
    assert sorted(p.name for p in out.iterdir()) == ["port_report.json", "source.onnx", "target.weights.h5"]
    report = json.loads((out / "port_report.json").read_text())
    assert [layer["target"] for layer in report["layers"]] == ["conv", "bn", "fc"]
    assert "ported 3 layers into the Keras model user_cli_models:keras_net" in torch_to_keras["stdout"]


def test_port_torch_to_keras_target_matches_the_source(torch_to_keras: dict[str, Any]) -> None:
    target = models.keras_net()
    target.load_weights(str(torch_to_keras["out"] / "target.weights.h5"))
    x = images()
    err = rel_err(keras_out(target, x), torch_out(torch_to_keras["source"], x))
    assert err <= REL_TOL, f"ported Keras outputs differ from the torch source by {err:.3g} of the output scale"


def test_port_leaves_the_torch_source_bit_identical(torch_to_keras: dict[str, Any]) -> None:
    assert torch_to_keras["after"] == torch_to_keras["before"], "parity port changed the source's parameters/buffers"


def test_port_keras_to_torch_matches_and_leaves_the_source_identical(tmp_path: Path) -> None:
    source = models.shared_keras()
    before = keras_hash(source)
    rc, stdout, stderr = run(["port", "--torch", "user_cli_models:torch_net", "--keras", "user_cli_models:shared_keras",
                              "--input", "x:8x8x3", "--from", "tf", "--out", str(tmp_path)])
    assert rc == 0, stderr
    assert keras_hash(source) == before, "parity port changed the Keras source's variables"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["port_report.json", "source.onnx", "target.safetensors"]
    x = images()
    err = rel_err(torch_out(torch_from(tmp_path / "target.safetensors"), x), keras_out(source, x))
    assert err <= REL_TOL, f"ported torch outputs differ from the Keras source by {err:.3g} of the output scale"
    # the tf2onnx file takes NHWC: porting it into the torch model finds that torch takes it channels-first
    rc, _, stderr = run(["port", "--onnx", str(tmp_path / "source.onnx"), "--to", "torch", "--torch",
                         "user_cli_models:torch_net", "--out", str(tmp_path / "again")])
    assert rc == 0, stderr
    err = rel_err(torch_out(torch_from(tmp_path / "again" / "target.safetensors"), x), keras_out(source, x))
    assert err <= REL_TOL, f"torch model ported from the NHWC ONNX file differs by {err:.3g} of the output scale"


def test_port_weights_option_loads_the_source_weights_first(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    trained = models.torch_net(seed=11)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "w.safetensors"))
    rc, _, stderr = run(["port", *PAIR, "--input", "x:3x8x8", "--from", "torch", "--weights",
                         str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "o")])
    assert rc == 0, stderr
    target = models.keras_net()
    target.load_weights(str(tmp_path / "o" / "target.weights.h5"))
    x = images()
    err = rel_err(keras_out(target, x), torch_out(trained, x))
    assert err <= REL_TOL, f"the port did not use --weights: outputs differ by {err:.3g} of the output scale"


def test_port_from_an_onnx_file_into_a_user_model(torch_to_keras: dict[str, Any], tmp_path: Path) -> None:
    rc, stdout, stderr = run(["port", "--onnx", str(torch_to_keras["out"] / "source.onnx"), "--to", "torch",
                              "--torch", "user_cli_models:torch_net", "--out", str(tmp_path)])
    assert rc == 0, stderr
    assert "into the torch model user_cli_models:torch_net" in stdout
    x = images()
    err = rel_err(torch_out(torch_from(tmp_path / "target.safetensors"), x), torch_out(torch_to_keras["source"], x))
    assert err <= REL_TOL, f"torch model ported from the ONNX file differs by {err:.3g} of the output scale"


def test_mismatched_pair_exits_2_naming_the_first_mismatching_layer(tmp_path: Path) -> None:
    rc, _, stderr = run(["port", "--torch", "user_cli_models:torch_net", "--keras", "user_cli_models:keras_wrong",
                         "--input", "x:3x8x8", "--from", "torch", "--out", str(tmp_path)])
    assert rc == 2
    errors = [line for line in stderr.splitlines() if line.startswith("parity port: error:")]
    assert len(errors) == 1 and "first mismatching layer" in errors[0] and "'fc'" in errors[0], stderr
    assert "(144, 6)" in errors[0] and "(144, 5)" in errors[0]
    assert not (tmp_path / "target.weights.h5").exists()


@pytest.mark.parametrize("argv, message", [
    (["port", *PAIR, "--from", "torch", "--out", "{tmp}"], "describe the models' inputs"),
    (["port", "mlp", *PAIR, "--from", "torch", "--out", "{tmp}"], "give one of them"),
    (["port", "--torch", "user_cli_models:torch_net", "--input", "x:3x8x8", "--from", "torch", "--out", "{tmp}"],
     "add --keras"),
    (["port", "--onnx", "{tmp}/none.onnx", "--to", "torch", "--torch", "user_cli_models:torch_net", "--out", "{tmp}"],
     "no such file"),
    (["port", "mlp", "--from", "torch", "--input", "x:32", "--out", "{tmp}"], "describe your own models"),
    (["bench", "--torch", "user_cli_models:torch_net"], "--input NAME:SHAPE"),
    (["bench", "mlp", "--onnx", "{tmp}/m.onnx"], "give one of them"),
    (["flops"], "give a zoo model name"),
], ids=["port-no-input", "port-zoo-and-own", "port-one-model", "port-missing-onnx", "port-zoo-input",
        "bench-no-input", "bench-zoo-and-onnx", "flops-nothing"])
def test_usage_errors_exit_2_with_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    rc, _, stderr = run([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert rc == 2
    lines = [line for line in stderr.splitlines() if " error: " in line]
    assert len(lines) == 1 and message in lines[0], stderr


@pytest.mark.parametrize("bad", ["x", "x:3xa", "x:0x8", "x:3:float99", ":3", "x:3:int64:NCHW:more"])
@pytest.mark.parametrize("command", ["port", "bench", "flops"])
def test_bad_input_strings_exit_2_with_one_line(command: str, bad: str, tmp_path: Path) -> None:
    extra = ["--from", "torch", "--out", str(tmp_path)] if command == "port" else []
    rc, _, stderr = run([command, *PAIR, "--input", bad, *extra])
    assert rc == 2
    lines = [line for line in stderr.splitlines() if " error: " in line]
    assert len(lines) == 1 and lines[0].startswith(f"parity {command}: error: argument --input: --input {bad!r}: "), \
        stderr


# ============================================================================ flops


def test_flops_of_a_user_torch_model_is_counted_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, stderr = run(["flops", "--torch", "user_cli_models:torch_net", "--input", "x:3x8x8", "--batch", "1,2"])
    assert rc == 0, stderr
    assert f"batch 1: 9.216 kFLOP ({models.CONV_PAIR_FLOPS:,} FLOP; 2 nodes" in stdout
    assert f"batch 2: 18.43 kFLOP ({2 * models.CONV_PAIR_FLOPS:,} FLOP" in stdout
    rc, stdout, _ = run(["flops", "--torch", "user_cli_models:linear_net", "--input", "x:10"])
    assert rc == 0 and f"batch 1: {models.LINEAR_FLOPS} FLOP ({models.LINEAR_FLOPS} FLOP; 1 nodes: Gemm" in stdout


@pytest.mark.parametrize("argv", [["--keras", "user_cli_models:keras_net", "--input", "x:8x8x3"],
                                  [*PAIR, "--input", "x:3x8x8"]], ids=["keras-only", "pair"])
def test_flops_of_a_keras_model_and_of_a_pair(argv: list[str]) -> None:
    rc, stdout, stderr = run(["flops", *argv])
    assert rc == 0, stderr
    assert f"batch 1: 9.216 kFLOP ({models.CONV_PAIR_FLOPS:,} FLOP; 2 nodes" in stdout


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x [batch, seq, 10] @ W [10, 5]: 2 * batch * seq * 10 * 5 FLOPs, seq left dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((10, 5), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 5])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path_factory.mktemp("onnx") / "seq.onnx"
    onnx.save(model, str(path))
    return path


def test_flops_of_an_onnx_file_with_dynamic_dims_fixed_by_input(dynamic_onnx: Path) -> None:
    rc, stdout, stderr = run(["flops", "--onnx", str(dynamic_onnx), "--input", "x:7x10", "--batch", "1,3"])
    assert rc == 0, stderr
    assert f"batch 1: 700 FLOP ({2 * 1 * 7 * 10 * 5} FLOP; 1 nodes: MatMul" in stdout
    assert f"batch 3: 2.1 kFLOP ({2 * 3 * 7 * 10 * 5:,} FLOP" in stdout
    rc, _, stderr = run(["flops", "--onnx", str(dynamic_onnx)])
    assert rc == 2 and "dynamic dimensions" in stderr and "--input x:Nx10" in stderr


# ============================================================================ bench


@pytest.fixture(scope="module")
def pair_bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny-budget bench of the shared pair over every inference runtime (one batch size)."""
    torch_model, keras_model = models.shared_torch(), models.shared_keras()
    before = (torch_hash(torch_model), keras_hash(keras_model))
    out = tmp_path_factory.mktemp("bench") / "b.json"
    rc, stdout, stderr = run(["bench", "--torch", "user_cli_models:shared_torch", "--keras",
                              "user_cli_models:shared_keras", "--input", "x:3x8x8", "--batch", "2", "--device", "cpu",
                              "--threads", "1", "--budget", "0.01", "--min-runs", "3", "--warmup", "1", "--no-peak",
                              "--json", str(out)])
    return {"rc": rc, "stdout": stdout, "stderr": stderr, "data": json.loads(out.read_text()) if out.exists() else {},
            "before": before, "after": (torch_hash(torch_model), keras_hash(keras_model))}


def test_bench_of_a_user_pair_measures_every_cpu_runtime(pair_bench: dict[str, Any]) -> None:
    assert pair_bench["rc"] == 0, pair_bench["stderr"]
    cells = {c["runtime"]: c for c in pair_bench["data"]["cells"]}
    for runtime in CPU_RUNTIMES:
        assert cells[runtime]["status"] == "ok", (runtime, cells[runtime]["reason"])
        assert cells[runtime]["stats"]["count"] >= 3
    for runtime in ("ort-cuda", "ort-tensorrt"):
        assert cells[runtime]["status"] == "skipped" and cells[runtime]["reason"], runtime
    assert pair_bench["data"]["flops"] == {"2": 2 * models.CONV_PAIR_FLOPS}
    assert pair_bench["data"]["model"] == "user_cli_models:shared_torch + user_cli_models:shared_keras"


def test_bench_leaves_the_given_models_identical(pair_bench: dict[str, Any]) -> None:
    assert pair_bench["after"] == pair_bench["before"], "parity bench changed a given model's weights"


def test_bench_of_an_onnx_file_says_why_torch_and_tf_were_not_measured(dynamic_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    rc, stdout, stderr = run(["bench", "--onnx", str(dynamic_onnx), "--input", "x:7x10", "--batch", "1",
                              "--runtimes", "torch-eager,tf-eager,ort-cpu", "--device", "cpu", "--threads", "1",
                              "--budget", "0.01", "--min-runs", "3", "--warmup", "1", "--no-peak", "--json", str(out)])
    assert rc == 0, stderr
    cells = {c["runtime"]: c for c in json.loads(out.read_text())["cells"]}
    assert cells["ort-cpu"]["status"] == "ok" and cells["ort-cpu"]["flops"] == 2 * 7 * 10 * 5
    assert cells["torch-eager"]["status"] == "skipped" and "no torch model given (--torch" in cells["torch-eager"]["reason"]
    assert cells["tf-eager"]["status"] == "skipped" and "no Keras model given (--keras" in cells["tf-eager"]["reason"]
    assert "skipped: no torch model given" in stdout


def test_bench_train_steps_a_copy_never_the_given_models(tmp_path: Path) -> None:
    torch_model, keras_model = models.shared_torch(), models.shared_keras()
    before = (torch_hash(torch_model), keras_hash(keras_model))
    out = tmp_path / "b.json"
    rc, _, stderr = run(["bench", "--torch", "user_cli_models:shared_torch", "--keras", "user_cli_models:shared_keras",
                         "--input", "x:3x8x8", "--train", "--runtimes", "torch-eager,tf-eager", "--batch", "2",
                         "--device", "cpu", "--threads", "1", "--budget", "0.01", "--min-runs", "3", "--warmup", "1",
                         "--no-peak", "--json", str(out)])
    assert rc == 0, stderr
    cells = {c["runtime"]: c for c in json.loads(out.read_text())["cells"]}
    assert all(cells[r]["status"] == "ok" for r in ("torch-eager", "tf-eager")), cells
    assert cells["torch-eager"]["settings"]["loss"] == "cross_entropy"  # the first output is [batch, 5] logits
    assert (torch_hash(torch_model), keras_hash(keras_model)) == before, "a training step changed a given model"
