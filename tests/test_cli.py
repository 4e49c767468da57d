"""The command line: exit codes, clear errors, fast help, doctor and list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from parity.cli import main


def test_help_does_not_import_frameworks() -> None:
    code = ("import sys; from parity.cli import build_parser; build_parser().format_help(); "
            "heavy = [m for m in ('torch', 'tensorflow', 'onnxruntime', 'keras') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_python_dash_m_parity_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "parity", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "check" in proc.stdout and "exit codes" in proc.stdout


def test_unknown_model_exits_2_and_lists_known_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "nosuchmodel"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nosuchmodel'" in err and "cnn" in err and "mlp" in err


def test_bad_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", "mlp", "--batch", "0"])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_unwritable_out_dir_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An existing folder that takes no files, for root too (permission bits would not stop
    root): procfs creates no regular files, so the write probe in /proc fails for anyone."""
    proc = Path("/proc")
    assert proc.is_dir(), "this case needs Linux's /proc"
    assert main(["check", "mlp", "--out", str(proc)]) == 2
    err = capsys.readouterr().err
    assert "--out /proc" in err and "cannot write" in err


def test_out_path_that_is_a_file_exits_2_and_writes_nothing(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["check", "mlp", "--out", str(blocker / "sub"), "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "cannot write" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_doctor_json_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    for pkg in ("python", "torch", "tensorflow", "keras", "onnx", "onnxruntime", "tf2onnx"):
        assert env["versions"][pkg]
    assert "devices" in env["torch"] and "devices" in env["tensorflow"]
    assert "CPUExecutionProvider" in env["onnxruntime"]["providers"]
    assert isinstance(env["torch"]["tf32"]["matmul"], bool) and isinstance(env["tensorflow"]["tf32"], bool)
    assert isinstance(env["tensorflow"]["onednn"], bool)
    assert env["torch"]["intra_op_threads"] >= 1


def test_doctor_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime: providers" in out and "TF32" in out and "oneDNN" in out


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["cnn"]["family"] == "cnn" and "small" in rows["cnn"]["presets"]
    assert rows["mlp"]["parameters"]["torch"] == rows["mlp"]["parameters"]["tf"] == 32 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10


@pytest.mark.parametrize("command", ["check", "port", "import", "bench", "flops", "doctor", "list"])
def test_every_command_is_registered(command: str) -> None:
    from parity.cli import build_parser

    usage = build_parser().format_help()
    assert f"    {command} " in usage


@pytest.mark.parametrize("module", ["parity.cli.bench", "parity.cli.port", "parity.cli.check"])
def test_a_broken_command_module_is_an_error_not_a_missing_command(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug that breaks a command's import must surface, not make the command vanish from the CLI."""
    import parity.cli

    monkeypatch.delattr(parity.cli, module.rsplit(".", 1)[1], raising=False)
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    with pytest.raises(ImportError):
        parity.cli.build_parser()
