"""Side by side with onnx2tf and onnx2torch on the same ONNX files (a measurement, not a test).

For the zoo's resnet18, bert and lstm (small presets, torch twins, seed 0) this exports one ONNX file
each (the torch exporter's default, optimised export: BatchNorm already folded into the
convolutions), then converts that file with

- onnx2tf: its TF SavedModel (``tflite_backend="tf_converter"``) and its PyTorch code path
  (``flatbuffer_direct_output_pytorch=True``), each in a subprocess;
- onnx2torch (``onnx2torch.convert``);
- this project: ``parity convert --onnx FILE --to tf`` and ``--to torch`` (where the file's Keras twin
  cannot be generated, ``parity convert MODEL --from torch`` instead, from its own lossless export
  of the same model and weights); for resnet18 also the
  hand-written Keras twin ported from the file (``port_onnx``: 20 identity BatchNorms left running),
  that twin folded (``converters.fold_batchnorm.fold_keras``, checked against the torch source at
  the zoo's tolerance), and ``parity convert resnet18 --fold-batchnorm`` (the serving twin generated
  from the lossless export of the same model).

It records which tools convert and run, each result's max |error| against ONNX Runtime on the file
(seeded inputs), and latency: every model of one framework timed in turn in this one process
(``parity.bench.timing.measure_alternating``: one call of each per round, 2 threads, batch 1 and 32),
torch results in eager mode under ``no_grad``, TF results as graphs called two ways, the same for
every model: ``concrete`` (each graph's ConcreteFunction, as a SavedModel signature is served; the
twins traced once for any batch size) and ``tf.function`` (the signature wrapped in a ``tf.function``
too): a ``tf.function`` call costs Python dispatch on top (about 0.2-0.4 ms here), which at batch 1
is a tenth of resnet18's latency and must fall on both sides of a ratio.

The tools are not project dependencies: run this with the Python of a throwaway virtual
environment that sees the project's packages (TF, torch 2.13 CPU) through a ``.pth`` file and has
onnx2tf and onnx2torch installed beside them (see docs/benchmarking.md, "Other converters")::

    PATH=.venv/bin:$PATH /tmp/o2t/bin/python scripts/compare_converters.py --work /tmp/cmp

torchvision's PyPI wheel is a CUDA build that does not load next to the CPU torch; onnx2torch
imports it only for its NMS and RoIAlign converters, which these graphs do not use, so a stand-in
module without those two ops is put in its place (``--real-torchvision`` keeps the real one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import traceback
import types
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet18", "bert", "lstm")
BATCHES = (1, 32)
KEEP: list[Any] = []  # objects that must outlive the timing (a loaded SavedModel owns its variables)


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no output)"])[-1][:300]


def run_onnx2tf(onnx_file: Path, out: Path, pytorch: bool) -> dict[str, Any]:
    """onnx2tf in a subprocess of this interpreter: its TF SavedModel, or its PyTorch package."""
    mode = "pytorch" if pytorch else "tf"
    code = ("import torch, onnx2tf, sys\n"  # torch before TensorFlow
            f"onnx2tf.convert(input_onnx_file_path={str(onnx_file)!r}, output_folder_path={str(out)!r}, "
            + ("flatbuffer_direct_output_pytorch=True, " if pytorch else "tflite_backend='tf_converter', ")
            + "non_verbose=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    (out.parent / f"onnx2tf_{mode}.log").write_text(proc.stdout + proc.stderr)
    return {"converted": proc.returncode == 0, "exit_code": proc.returncode,
            "error": None if proc.returncode == 0 else _last_error(proc.stdout + proc.stderr)}


def _import_onnx2torch(real_torchvision: bool) -> Any:
    """onnx2torch, imported with a ``torchvision`` stand-in without ops (see the docstring) that is gone
    again afterwards (torch's ONNX exporter looks torchvision up too)."""
    if real_torchvision:
        import onnx2torch

        return onnx2torch
    vision = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision stand-in: NMS/RoIAlign are not available in this measurement")

    ops.nms = ops.roi_align = ops.batched_nms = missing  # type: ignore[attr-defined]
    vision.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = vision, ops
    try:
        import onnx2torch
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    return onnx2torch


def export(name: str, folder: Path) -> tuple[Any, Any, Path, dict[str, np.ndarray]]:
    """The zoo's torch twin (seed 0), its optimised ONNX export, and seeded inputs (batch 2)."""
    import zoo
    from converters.export import export_model
    from zoo.weights import randomize

    spec = zoo.get(name, preset="small")
    model = spec.build("torch", 0)
    randomize(model, "torch", 0)
    inputs = spec.inputs_for("torch", spec.example_inputs(2, 0))
    path = folder / f"{name}.onnx"
    export_model(model, "torch", list(inputs.values()), path, input_names=list(inputs),
                 output_names=spec.output_names, exporter=spec.torch_exporter, lossless=False)
    return spec, model, path, inputs


def _tf_inputs(spec: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return spec.inputs_for("tf", {n: v for n, v in inputs.items()})


def _batch(arrays: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """``batch`` rows, the seeded rows repeated."""
    return {n: np.ascontiguousarray(np.resize(a, (batch, *a.shape[1:]))) for n, a in arrays.items()}


def _error(got: Any, want: dict[str, np.ndarray]) -> float:
    """The largest |error| over the outputs: ``got`` a dict by output name, or the outputs in the file's order."""
    if isinstance(got, dict):  # by name where the names are the file's, else in order
        got = [got[n] for n in want] if set(want) <= set(got) else list(got.values())
    elif not isinstance(got, (list, tuple)):
        got = [got]
    worst = 0.0
    for value, expected in zip(got, want.values(), strict=True):
        value = np.asarray(value, dtype=np.float64)
        if value.shape != expected.shape:
            raise ValueError(f"an output of shape {value.shape} where ONNX Runtime gives {expected.shape}")
        worst = max(worst, float(np.abs(value - expected).max()))
    return worst


class Candidate:
    """One model to time: ``call(batch)`` returns a zero-argument call on resident inputs."""

    def __init__(self, label: str, framework: str, make_call: Any, error: float | None, note: str = "") -> None:
        self.label, self.framework, self.make_call, self.error, self.note = label, framework, make_call, error, note


def tf_candidates(name: str, spec: Any, source: Any, path: Path, folder: Path, inputs: dict[str, np.ndarray],
                  want: dict[str, np.ndarray], record: dict[str, Any]) -> list[Candidate]:
    import tensorflow as tf

    found: list[Candidate] = []
    keras_names = list(spec.inputs_for("tf", inputs))
    spatial = {s.name for s in spec.inputs if s.layout in ("NCHW", "NCL")}

    def feed(arrays: dict[str, Any]) -> Any:  # by input name (the zoo's and the generated twins' share them)
        return arrays if len(keras_names) > 1 else arrays[keras_names[0]]

    def keras_call(model: Any) -> Any:
        fn = tf.function(lambda xs: model(xs, training=False))
        ks = spec.inputs_for("tf", inputs)
        any_batch = feed({n: tf.TensorSpec((None, *ks[n].shape[1:]), ks[n].dtype) for n in keras_names})
        graph = fn.get_concrete_function(any_batch)  # called as a SavedModel's signature is

        def make(batch: int, mode: str) -> Any:
            ks = _batch(spec.inputs_for("tf", inputs), batch)
            resident = feed({n: tf.identity(tf.convert_to_tensor(ks[n])) for n in keras_names})
            return (lambda: graph(resident)) if mode == "concrete" else (lambda: fn(resident))
        return make

    def keras_error(model: Any) -> float:
        out = model(feed(spec.inputs_for("tf", inputs)), training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return _error(spec.outputs_from("tf", {n: np.asarray(o) for n, o in zip(want, outs, strict=True)}), want)

    # onnx2tf's TF SavedModel
    saved = folder / "onnx2tf_tf"
    if record["onnx2tf_tf"]["converted"]:
        try:
            loaded = tf.saved_model.load(str(saved))
            KEEP.append(loaded)  # the signature alone does not keep the model's variables alive
            fn = loaded.signatures["serving_default"]
            names = list(fn.structured_input_signature[1])

            def o2t_feed(batch: int) -> dict[str, Any]:
                arrays = _batch(inputs, batch)
                feed = {}
                for n in names:  # onnx2tf takes 4-D image inputs channels-last
                    a = arrays[n]
                    feed[n] = tf.identity(tf.convert_to_tensor(a.transpose(0, 2, 3, 1) if a.ndim == 4 else a))
                return feed

            out = {n: v.numpy() for n, v in fn(**o2t_feed(2)).items()}
            record["onnx2tf_tf"]["runs"] = True
            record["onnx2tf_tf"]["max_abs_error"] = _error(out, want)

            wrapped = tf.function(lambda feed: fn(**feed))  # the signature inside a tf.function, as the twins

            def o2t_make(batch: int, mode: str) -> Any:
                feed = o2t_feed(batch)
                return (lambda: fn(**feed)) if mode == "concrete" else (lambda: wrapped(feed))
            found.append(Candidate("onnx2tf SavedModel", "tf", o2t_make, record["onnx2tf_tf"]["max_abs_error"]))
        except Exception as exc:  # a result that does not run is a finding, not a crash of the measurement
            record["onnx2tf_tf"].setdefault("runs", False)
            record["onnx2tf_tf"]["error"] = f"{type(exc).__name__}: {exc}"[:300]
    # this project's generated Keras twin of the same file
    from parity.bench.generated import GeneratedTwin
    from parity.convert import convert_onnx

    try:
        result = convert_onnx(path, "tf", folder / "ours_tf", spatial_inputs=spatial or None, overwrite=True)
        record["ours_tf"] = {"converted": True, "passed": result.passed,
                             "max_abs_error_vs_ort": max(c.max_abs for c in result.comparisons)}
        twin = GeneratedTwin(folder / "ours_tf", "tf", name, "small", "torch").build()
        record["ours_tf"]["max_abs_error"] = keras_error(twin)
        found.append(Candidate("generated (parity convert --onnx)", "tf", keras_call(twin), record["ours_tf"]["max_abs_error"]))
    except Exception as exc:
        record["ours_tf"] = {"converted": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        # the same model through `parity convert MODEL --from torch` (its lossless export, a file of its own)
        from parity.convert import convert_zoo

        zoo_twin = convert_zoo(name, folder / "zoo_tf", overwrite=True)
        twin = GeneratedTwin(folder / "zoo_tf", "tf", name, "small", "torch").build()
        record["zoo_tf"] = {"passed": zoo_twin.passed, "max_abs_error": keras_error(twin),
                            "parity_max_abs": {f"{c.a}/{c.output}": c.max_abs for c in zoo_twin.result.comparisons}}
        found.append(Candidate("generated by parity convert MODEL (lossless export)", "tf", keras_call(twin),
                               record["zoo_tf"]["max_abs_error"]))
    if name != "resnet18":
        return found
    # the hand-written Keras twin ported from the same file, and that twin folded
    from converters.fold_batchnorm import fold_keras
    from converters.port import port_onnx
    from parity import check_models

    ported = spec.build("tf", 1)
    port_onnx(path, ported)
    record["ported_tf"] = {"max_abs_error": keras_error(ported),
                           "batchnorms": sum(type(la).__name__ == "BatchNormalization" for la in _leaves(ported))}
    found.append(Candidate("hand-written twin, ported", "tf", keras_call(ported), record["ported_tf"]["max_abs_error"]))
    folded, pairs = fold_keras(ported)
    check = check_models(source, folded, inputs, port=False, tolerance=spec.tolerance,
                         input_layouts={n: "NCHW" for n in spatial}, output_names=list(spec.output_names))
    record["ported_folded_tf"] = {"max_abs_error": keras_error(folded), "folded": len(pairs), "parity": check.passed,
                                  "parity_max_abs": {c.a: c.max_abs for c in check.comparisons},
                                  "parity_atol": check.comparisons[0].atol}
    found.append(Candidate("hand-written twin, ported + folded", "tf", keras_call(folded),
                           record["ported_folded_tf"]["max_abs_error"]))
    # parity convert resnet18 --fold-batchnorm (the serving twin, generated from the lossless export)
    from parity.convert import convert_zoo

    served = convert_zoo(name, folder / "serving_tf", fold_batchnorm=True, overwrite=True)
    twin = GeneratedTwin(folder / "serving_tf", "tf", name, "small", "torch").build()
    record["serving_tf"] = {"passed": served.passed, "max_abs_error": keras_error(twin),
                            "parity_max_abs": {c.a: c.max_abs for c in served.result.comparisons}}
    found.append(Candidate("generated, --fold-batchnorm", "tf", keras_call(twin), record["serving_tf"]["max_abs_error"]))
    return found


def _leaves(model: Any) -> list[Any]:
    from converters.targets.keras_target import leaf_layers

    return leaf_layers(model)


def torch_candidates(name: str, spec: Any, path: Path, folder: Path, inputs: dict[str, np.ndarray],
                     want: dict[str, np.ndarray], record: dict[str, Any], real_torchvision: bool) -> list[Candidate]:
    import torch

    found: list[Candidate] = []
    names = list(inputs)

    def torch_make(module: Any, call: Any = None) -> Any:
        def make(batch: int, mode: str) -> Any:
            args = [torch.from_numpy(a) for a in _batch(inputs, batch).values()]

            def run() -> Any:
                with torch.no_grad():
                    return (call or module)(*args)
            return run
        return make

    def numpy(out: Any) -> Any:
        if isinstance(out, dict):
            return {n: v.detach().numpy() for n, v in out.items()}
        if isinstance(out, (list, tuple)):
            return [o.detach().numpy() for o in out]
        return out.detach().numpy()

    def attempt(key: str, label: str, build: Any) -> None:
        try:
            module = build()
            with torch.no_grad():
                out = numpy(module(*[torch.from_numpy(inputs[n]) for n in names]))
            record[key]["runs"] = True
            record[key]["max_abs_error"] = _error(out, want)
            found.append(Candidate(label, "torch", torch_make(module), record[key]["max_abs_error"]))
        except Exception as exc:
            record[key].setdefault("runs", False)
            record[key]["run_error"] = f"{type(exc).__name__}: {exc}"[:300]
            (folder / f"{key}_traceback.txt").write_text(traceback.format_exc())

    if record["onnx2tf_pytorch"]["converted"]:
        package = folder / "onnx2tf_pytorch" / f"{path.stem}_pytorch"

        def build_o2t() -> Any:
            spec_ = importlib.util.spec_from_file_location(f"o2t_{path.stem}", package / "__init__.py",
                                                           submodule_search_locations=[str(package)])
            module = importlib.util.module_from_spec(spec_)
            sys.modules[spec_.name] = module
            spec_.loader.exec_module(module)
            loaded = module.load_model()
            return loaded.eval() if hasattr(loaded, "eval") else loaded

        record["onnx2tf_pytorch"]["lines_of_model_py"] = (len((package / "model.py").read_text().splitlines())
                                                          if (package / "model.py").exists() else None)
        attempt("onnx2tf_pytorch", "onnx2tf PyTorch package", build_o2t)
    record["onnx2torch"] = {}
    try:
        onnx2torch = _import_onnx2torch(real_torchvision)
        converted = onnx2torch.convert(str(path))
        record["onnx2torch"]["converted"] = True
        attempt("onnx2torch", "onnx2torch", lambda: converted.eval())
    except Exception as exc:
        record["onnx2torch"].update(converted=False, error=f"{type(exc).__name__}: {exc}"[:300])
    from parity.bench.generated import GeneratedTwin
    from parity.convert import convert_onnx

    record["ours_torch"] = {}
    try:
        result = convert_onnx(path, "torch", folder / "ours_torch", overwrite=True)
        record["ours_torch"].update(converted=True, passed=result.passed)
        attempt("ours_torch", "generated (parity convert --onnx)",
                lambda: GeneratedTwin(folder / "ours_torch", "torch", name, "small", "torch").build().eval())
    except Exception as exc:
        record["ours_torch"].update(converted=False, error=f"{type(exc).__name__}: {exc}"[:300])
    return found


def time_all(found: list[Candidate], budget_s: float, min_runs: int, modes: tuple[str, ...]) -> dict[str, Any]:
    """Median ms of each candidate per mode and batch size, all of one framework alternating in one loop,
    and each one's ratio to the first (the other tool's result)."""
    from parity.bench.timing import measure_alternating

    medians: dict[str, Any] = {}
    for mode in modes:
        for batch in BATCHES:
            calls = [(c.make_call(batch, mode), None) for c in found]
            measured = measure_alternating(calls, budget_s=budget_s, min_runs=min_runs, warmup=5)
            base = measured[0].stats.median_s
            for c, m in zip(found, measured, strict=True):
                medians.setdefault(c.label, {})[f"{mode} batch {batch}"] = {
                    "ms": round(m.stats.median_s * 1e3, 4), "ratio_to_first": round(m.stats.median_s / base, 3)}
    return medians


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="a folder for the files (ONNX, conversions, results.json)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed rounds per model and batch size")
    p.add_argument("--min-runs", type=int, default=30)
    p.add_argument("--real-torchvision", action="store_true")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(args.threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from importlib.metadata import version

    results: dict[str, Any] = {"threads": args.threads, "versions": {
        p: version(p) for p in ("onnx2tf", "onnx2torch", "torch", "tensorflow", "keras", "onnx", "onnxruntime")}}
    import onnxruntime as ort

    for name in args.models.split(","):
        folder = args.work / name
        folder.mkdir(parents=True, exist_ok=True)
        spec, source, path, inputs = export(name, folder)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        want = {o.name: v.astype(np.float64) for o, v in zip(session.get_outputs(), session.run(None, inputs),
                                                             strict=True)}
        record: dict[str, Any] = {"onnx": str(path), "onnx2tf_tf": run_onnx2tf(path, folder / "onnx2tf_tf", False),
                                  "onnx2tf_pytorch": run_onnx2tf(path, folder / "onnx2tf_pytorch", True)}
        tf_found = tf_candidates(name, spec, source, path, folder, inputs, want, record)
        torch_found = torch_candidates(name, spec, path, folder, inputs, want, record, args.real_torchvision)
        tf_modes, torch_modes = ("concrete", "tf.function"), ("eager",)
        record["latency_tf"] = time_all(tf_found, args.budget, args.min_runs, tf_modes) if len(tf_found) > 1 else {}
        record["latency_torch"] = (time_all(torch_found, args.budget, args.min_runs, torch_modes)
                                   if len(torch_found) > 1 else {})
        results[name] = record
        print(json.dumps({name: record}, indent=1, default=str), flush=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
