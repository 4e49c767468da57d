"""The environment and the report of `make gpu-check`, all in one folder.

    python scripts/gpu_report.py env --out DIR      # DIR/environment.json: card, driver, CUDA, libraries
    python scripts/gpu_report.py report --out DIR   # DIR/report.md (+ bench_*.png, report.html where possible)

The report reads what the other steps wrote there (parity.json, bench_*.json, fidelity_*.json):
latency and throughput per runtime at each batch, speed-ups over torch eager, the parity errors on
the device, the engine/bare-loop ratios, and what was not measured, TensorFlow included.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "jax")

TF_NOTE = "TensorFlow: not measured on this GPU (not installable there)"


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def environment() -> dict[str, Any]:
    """Card, driver, CUDA and library versions, as this machine reports them."""
    import torch  # first, always

    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, check=False)
        env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    for name in ("jax", "keras", "onnx", "onnxscript", "onnxruntime", "numpy"):
        if has(name):
            module = __import__(name)
            env[name] = getattr(module, "__version__", "?")
    if has("jax"):
        import jax

        env["jax_devices"] = [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]
    if has("onnxruntime"):
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
        env["onnxruntime_gpu"] = "CUDAExecutionProvider" in env["onnxruntime_providers"]
    env["tensorflow"] = TF_NOTE if not has("tensorflow") else "installed (not used by this script)"
    return env


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def bench_tables(folder: Path) -> list[str]:
    lines: list[str] = []
    eager: dict[tuple[Any, ...], float] = {}  # torch eager's median per model, task, device and batch, over all files
    for path in sorted(folder.glob("bench_*.json")):
        data = _load(path)
        for c in data["cells"]:
            if c["runtime"] == "torch-eager" and c.get("stats"):
                eager[_key(data) + (c["batch"],)] = c["stats"]["median_s"]
    for path in sorted(folder.glob("bench_*.json")):
        data = _load(path)
        cells = data["cells"]
        base = {b: m for (*k, b), m in eager.items() if tuple(k) == _key(data)}
        lines += ["", f"### {data['model']} ({data['preset']}) {data['task']} on {data['config']['device_resolved']} "
                      f"({path.name})", "",
                  "| batch | runtime | median ms | p90 ms | samples/s | first call ms | speed-up vs torch-eager |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for c in sorted(cells, key=lambda c: (c["batch"], c["runtime"])):
            if c["status"] != "ok":
                lines.append(f"| {c['batch']} | {c['runtime']} | {c['status']}: {c['reason'][:90]} | | | | |")
                continue
            s = c["stats"]
            up = f"{base[c['batch']] / s['median_s']:.2f}x" if c["batch"] in base else "-"
            lines.append(f"| {c['batch']} | {c['runtime']} | {s['median_s'] * 1e3:.4g} | {s['p90_s'] * 1e3:.4g} | "
                         f"{c['throughput']:,.0f} | {(c['first_call_s'] or 0) * 1e3:.4g} | {up} |")
        _plot(data, folder / path.with_suffix(".png").name)
    return lines


def _key(data: dict[str, Any]) -> tuple[Any, ...]:
    return data["model"], data["preset"], data["task"], data["config"]["device_resolved"]


def _plot(data: dict[str, Any], path: Path) -> None:
    if not has("matplotlib"):
        return
    from parity.bench.plot import plot_bench

    plot_bench(data, path)


def parity_table(folder: Path) -> list[str]:
    path = folder / "parity.json"
    if not path.exists():
        return ["", "Parity: not run (no parity.json)."]
    data = _load(path)
    lines = ["", f"## Parity on the device against {data['reference']} (rule: {data['rule']})", "",
             "| model | precision | runtime | device | output | max abs | of scale | atol | verdict |",
             "|---|---|---|---|---|---:|---:|---:|---|"]
    for r in data["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['precision']} | {r['runtime']} | - | - | - | - | - | "
                         f"skipped: {r['reason'][:80]} |")
            continue
        lines.append(f"| {r['model']} | {r['precision']} | {r['runtime']} | {r['device']} | {r['output']} | "
                     f"{r['max_abs']:.2e} | {r['max_rel_of_scale']:.1e} | {r['atol']:.2e} | "
                     f"{'ok' if r['passed'] else 'FAIL'} |")
    return lines


def fidelity_table(folder: Path) -> list[str]:
    lines = ["", "## The harness against a bare loop (engine median / bare-loop median; band 0.95-1.05)", "",
             "| file | runtime | batch | ratio | in band | bare loop clock |", "|---|---|---:|---:|---|---|"]
    for path in sorted(folder.glob("fidelity_*.json")):
        for r in _load(path)["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {path.name} | {r['runtime']} | {r['batch']} | {r['status']}: {r['reason'][:80]} | | |")
            else:
                lines.append(f"| {path.name} | {r['runtime']} | {r['batch']} | {r['ratio']:.3f} | "
                             f"{'yes' if r['within_band'] else 'NO'} | {r['bare_clock']} |")
    return lines


def report(folder: Path) -> Path:
    env = _load(folder / "environment.json") if (folder / "environment.json").exists() else environment()
    lines = ["# GPU evidence (`make gpu-check`)", "",
             f"Card: {env.get('gpu') or 'none (a CPU dry run)'}; nvidia-smi: {env.get('nvidia_smi', 'n/a')}; "
             f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}); "
             f"jax {env.get('jax')} ({', '.join(env.get('jax_devices', []))}); keras {env.get('keras')}; "
             f"onnx {env.get('onnx')}; onnxruntime {env.get('onnxruntime')} ({', '.join(env.get('onnxruntime_providers', []))}); "
             f"python {env.get('python')}.", "", f"**{TF_NOTE}**" if "not measured" in str(env.get("tensorflow"))
             else f"TensorFlow: {env.get('tensorflow')}."]
    lines += parity_table(folder)
    lines += ["", "## Speed"] + bench_tables(folder)
    lines += fidelity_table(folder)
    out = folder / "report.md"
    out.write_text("\n".join(lines) + "\n")
    _html(folder)
    return out


def _html(folder: Path) -> None:
    """`parity report` over the bench results, where that command and Jinja2 are available."""
    benches = sorted(folder.glob("bench_*.json"))
    if not benches or not has("jinja2") or not has("parity.report"):
        return
    try:
        from parity.report.html import write_report

        write_report(benches, folder / "report.html")
    except Exception as exc:  # the Markdown report stands on its own
        print(f"[gpu-report] report.html not written: {type(exc).__name__}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from converters.files import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("env", "report"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "env":
        env = environment()
        write_json_atomic(args.out / "environment.json", env)
        print(json.dumps(env, indent=1))
    else:
        print(f"wrote {report(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
