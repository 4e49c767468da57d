"""GPU parity for `make gpu-check`, without TensorFlow: every GPU runtime against the CPU reference.

For each model (default resnet50, bert, vit at the standard preset): the torch twin (seeded,
randomised as `parity check` does) runs on the CPU in float32: the reference. Its weights are
ported through ONNX into the Keras twin (Keras on its JAX backend: TensorFlow is not installed on
the GPU machine), saved as .keras, and then torch, keras-jax (XLA) and ONNX Runtime (on the torch
export; CUDA when onnxruntime-gpu is installed) run the same seeded inputs on the device, in
strict fp32 (TF32 off everywhere) and with TF32 on, each compared with the reference by the rule
of `parity check`: |a - b| <= atol + rtol * |b|, atol scaled to the output.

    python scripts/gpu_parity.py --device cuda --out DIR [--models resnet50,bert,vit] [--preset standard]

Writes DIR/parity.json; exit 1 when a strict-fp32 comparison fails (TF32 rows are reported,
with their widened tolerance, and fail only beyond it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "jax")  # the GPU machine has no TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402, F401  (torch before anything that might load TensorFlow)

import zoo  # noqa: E402
from converters.files import write_json_atomic  # noqa: E402
from parity.compare import compare  # noqa: E402

# TF32 keeps 10 mantissa bits (unit roundoff 4.9e-4): the widening `parity check --precision tf32`
# applies (parity/check/pipeline.py), so the rows here read the same as the check's.
TF32_ATOL_SCALE, TF32_RTOL = 1e-3, 1e-3
TF32_REASON = "TF32: atol >= 1e-3 x output scale, rtol >= 1e-3 (TF32 unit roundoff 4.9e-4)"


def say(msg: str) -> None:
    print(f"[gpu-parity] {msg}", file=sys.stderr, flush=True)


def ported_twin(spec: Any, inputs: dict[str, np.ndarray], work: Path, seed: int) -> tuple[Any, Path, Path]:
    """The randomised torch twin, its ONNX export, and the Keras twin ported from it, saved as .keras."""
    from converters.port import port_model
    from parity.runners.keras_backend import save_twin
    from zoo.weights import randomize

    source = spec.build_torch(seed)
    randomize(source, "torch", seed)
    target = spec.build_keras(seed + 1)
    per_fw = {fw: spec.inputs_for(fw, inputs) for fw in ("torch", "tf")}
    onnx_path = work / "torch.onnx"
    port_model(source, target, list(per_fw["torch"].values()), list(per_fw["tf"].values()), onnx_path=onnx_path,
               exporter=spec.torch_exporter, lossless=True, input_names=list(per_fw["torch"]),
               output_names=spec.output_names, progress=say)
    return source, onnx_path, save_twin(target, work)


def run(kind: str, model: Any, device: str, precision: str, spec: Any, inputs: dict[str, np.ndarray]) -> tuple[
        dict[str, np.ndarray], dict[str, Any]]:
    """Outputs (torch layout) and where it ran, for one runtime."""
    from parity.runners import make_runner

    layout = "tf" if kind == "keras-jax" else "torch"
    names = spec.input_names if kind != "ort" else None
    runner = make_runner(kind, device=device, precision=precision).prepare(model, names, spec.output_names)
    out = runner.run(spec.inputs_for(layout, inputs))
    return spec.outputs_from(layout, out), runner.describe()


def keras_jax_runs(twin: Path, device: str, spec: Any, inputs: dict[str, np.ndarray], work: Path) -> Any:
    """The ported Keras twin on JAX in strict fp32 and with TF32, from one worker: {precision: (outputs, info)},
    or the exception that kept it from running."""
    from parity.runners.keras_backend import call_worker, layer_modules
    from parity.runners.keras_worker import load_arrays, save_arrays

    arrays = [spec.inputs_for("tf", inputs)[n] for n in spec.input_names]
    save_arrays(work / "inputs.npz", arrays)
    runs = [{"precision": p, "inputs": str(work / "inputs.npz"), "outputs": str(work / f"out-{p}.npz")}
            for p in ("fp32", "tf32")]
    try:
        answer = call_worker({"backend": "jax", "model": str(twin), "modules": layer_modules(twin), "device": device,
                              "threads": None, "precision": "fp32", "runs": runs}, None)
    except Exception as exc:  # reported as a skipped row, with the reason
        return exc
    result = {}
    for job in answer["runs"]:
        outs = dict(zip(spec.output_names, load_arrays(job["outputs"]), strict=True))
        info = {**answer["settings"], **{k: v for k, v in job.items() if k not in ("outputs", "count")},
                "device_type": device, "tensorflow_imported_in_worker": answer["tensorflow_imported"]}
        result[job["precision"]] = (spec.outputs_from("tf", outs), info)
    return result


def check_model(name: str, preset: str, device: str, batch: int, seed: int) -> list[dict[str, Any]]:
    spec = zoo.get(name, preset=preset)
    inputs = spec.example_inputs(batch, seed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-parity-") as tmp:
        t0 = time.perf_counter()
        say(f"{name} ({preset}): building, exporting and porting the twin")
        source, onnx_path, twin = ported_twin(spec, inputs, Path(tmp), seed)
        reference, ref_info = run("torch", source, "cpu", "fp32", spec, inputs)
        say(f"{name}: reference on the CPU done ({time.perf_counter() - t0:.1f} s)")
        import onnxruntime as ort

        ort_device = "cuda" if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers() \
            else "cpu"
        t1 = time.perf_counter()
        keras_jax = keras_jax_runs(twin, device, spec, inputs, Path(tmp))  # both precisions, one worker
        say(f"{name} keras-jax (fp32 and tf32, one worker): {time.perf_counter() - t1:.1f} s")
        for precision in ("fp32", "tf32"):
            plan = [("torch", "torch", source, device), ("keras-jax", "keras-jax", str(twin), device),
                    ("ort-torch", "ort", str(onnx_path), ort_device)]
            for label, kind, model, dev in plan:
                t1 = time.perf_counter()
                try:
                    if isinstance(keras_jax, Exception) and kind == "keras-jax":
                        raise keras_jax
                    outputs, info = (keras_jax[precision] if kind == "keras-jax"
                                     else run(kind, model, dev, precision, spec, inputs))
                except Exception as exc:  # a runtime that cannot run here is a row with its reason
                    rows.append({"model": name, "preset": preset, "precision": precision, "runtime": label,
                                 "status": "skipped", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"})
                    say(f"{name} {precision} {label}: skipped: {exc}")
                    continue
                rows += compare_rows(name, preset, precision, label, info, outputs, reference, spec)
                say(f"{name} {precision} {label} on {info.get('device')}: {time.perf_counter() - t1:.1f} s")
    return rows


def compare_rows(name: str, preset: str, precision: str, label: str, info: dict[str, Any],
                 outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], spec: Any) -> list[dict[str, Any]]:
    rows = []
    for out_name, ref in reference.items():
        scale = float(np.abs(ref).max())
        atol, rtol, reason = spec.tolerance.absolute(scale), spec.tolerance.rtol, spec.tolerance.reason
        if precision == "tf32":
            atol, rtol, reason = max(atol, TF32_ATOL_SCALE * scale), max(rtol, TF32_RTOL), TF32_REASON
        c = compare(outputs[out_name], ref, atol=atol, rtol=rtol, a=label, b="torch-cpu", output=out_name)
        rows.append({"model": name, "preset": preset, "precision": precision, "runtime": label, "status": "ok",
                     "device": info.get("device"), "device_type": info.get("device_type"), "output": out_name,
                     "max_abs": c.max_abs, "max_rel_of_scale": c.max_abs / scale if scale else None,
                     "atol": atol, "rtol": rtol, "output_scale": scale, "passed": bool(c),
                     "tolerance_reason": reason, "runner": info})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="resnet50,bert,vit")
    p.add_argument("--preset", default="standard")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in [m for m in args.models.split(",") if m]:  # written after each model: a time limit keeps the rest
        rows += check_model(name, args.preset, args.device, args.batch, args.seed)
        strict_failures = save(args, rows)
    for r in rows:
        if r["status"] == "ok":
            print(f"{'PASS' if r['passed'] else 'FAIL'} {r['model']}/{r['preset']} {r['precision']} {r['runtime']:<10} "
                  f"on {r['device']}: {r['output']} max |diff| {r['max_abs']:.2e} "
                  f"({r['max_rel_of_scale']:.1e} of the output scale) <= atol {r['atol']:.2e}")
        else:
            print(f"SKIP {r['model']}/{r['preset']} {r['precision']} {r['runtime']}: {r['reason']}")
    return 1 if strict_failures else 0


def save(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write parity.json with the rows so far; return the strict-fp32 failures."""
    strict_failures = [r for r in rows if r["status"] == "ok" and r["precision"] == "fp32" and not r["passed"]]
    write_json_atomic(args.out / "parity.json", {
        "reference": "torch on the CPU, float32", "device": args.device, "batch": args.batch, "seed": args.seed,
        "rule": "|a - b| <= atol + rtol * |b| (b: the CPU reference)", "tensorflow": tensorflow_note(),
        "rows": rows, "strict_fp32_failures": len(strict_failures)})
    return strict_failures


def tensorflow_note() -> str:
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        return "TensorFlow: not measured on this GPU (not installable there)"
    return "TensorFlow: installed, but not part of this no-TensorFlow GPU path"


if __name__ == "__main__":
    sys.exit(main())
