#!/usr/bin/env bash
# `make gpu-check`: on a GPU machine, in one run of under 8 minutes,
#   1. GPU parity: strict fp32 (TF32 off) against a float64 CPU reference, then TF32 on
#      with a widened tolerance whose size and reason are printed; then `parity check mlp`
#      and `cnn` with --layers --grads --train-steps 2 after a GPU run: the diagnostics run
#      on the runners' devices (the JSON's runners say which; torch must be on the GPU);
#   2. GPU benchmarks (`parity bench`) for whatever is installed; a missing framework
#      (no TensorFlow, no onnxruntime-gpu) is reported with a message, never an error.
# Works without the .venv: `bash scripts/gpu_check.sh` uses $PYTHON, else .venv/bin/python,
# else python3. GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (a dry run of this script).
# Outputs (JSON per benchmark) go to $GPU_CHECK_OUT, else $OUT, else /tmp/parity-gpu-check.
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-.venv/bin/python}"
if ! command -v "$PY" >/dev/null 2>&1; then
    PY=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
OUT_DIR="${GPU_CHECK_OUT:-${OUT:-/tmp/parity-gpu-check}}"
TOTAL_S="${GPU_CHECK_SECONDS:-450}"   # 7.5 minutes: the whole run stays under 8
BUDGET="${GPU_CHECK_BUDGET:-0.5}"     # seconds of timed calls per benchmark cell
START=$SECONDS
FAILED=0

remaining() { echo $((TOTAL_S - (SECONDS - START))); }

# step NAME LIMIT_S COMMAND...: run under a timeout that never passes the overall deadline
step() {
    local name=$1 limit=$2 left rc
    shift 2
    left=$(remaining)
    if ((left < 15)); then
        echo "== $name: not run, the ${TOTAL_S}s budget is spent"
        return 0
    fi
    ((limit > left)) && limit=$left
    echo
    echo "== $name (at most ${limit}s; $((SECONDS - START))s elapsed)"
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "== $name: stopped at its ${limit}s limit"
    elif ((rc != 0)); then
        echo "== $name: exit code $rc"
        FAILED=1
    fi
    return 0
}

echo "== gpu-check: python $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1)), device $DEVICE"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
fi

"$PY" - "$DEVICE" <<'EOF'
import importlib.util, sys
device = sys.argv[1]
import torch  # torch before TensorFlow, always
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"GPU visible: {torch.cuda.is_available()}" + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
if importlib.util.find_spec("tensorflow") is None:
    print("TensorFlow: not installed -- the tf-* runtimes and TF parity are skipped")
if importlib.util.find_spec("onnxruntime") is None:
    print("onnxruntime: not installed -- the ort-* runtimes are skipped")
else:
    import onnxruntime as ort
    providers = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}: {', '.join(providers)}")
    if "CUDAExecutionProvider" not in providers:
        print("onnxruntime-gpu: not installed -- ort-cuda/ort-tensorrt are reported as skipped")
EOF

if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "gpu-check: nvidia-smi sees a GPU but torch does not (a CPU-only torch build?)"
        exit 1
    fi
    echo "gpu-check: no GPU on this machine; nothing to check (GPU_CHECK_DEVICE=cpu runs a dry run)"
    exit 0
fi

mkdir -p "$OUT_DIR"

# ---------------------------------------------------------------------------- 1. parity
step "parity: fp32 strict (TF32 off) and TF32 on, against a float64 reference" 150 "$PY" - "$DEVICE" <<'EOF'
import sys
import torch  # torch before TensorFlow, always
import numpy as np
import zoo

device = sys.argv[1]
# TF32 rounds matmul/conv inputs to 10 mantissa bits (unit roundoff 2^-11 ~ 4.9e-4). Each
# product then carries ~1e-3 relative error; over a random-sign sum of K terms the error
# grows like sqrt(K) while the output scale grows like sqrt(K) too, so each layer adds
# ~1e-3 of the output scale; three or four layers stay under ~4e-3. 1e-2 of the output
# scale leaves margin and is still far below the O(1) errors of a wrong weight.
TF32_ATOL, TF32_REASON = 1e-2, "TF32: 10-bit mantissa, ~1e-3 of the output scale per layer"
CASES = [("mlp", "small"), ("mlp", "standard"), ("cnn", "small"), ("cnn", "standard")]
failures = 0


def report(label, y, ref, atol, rtol, reason):
    global failures
    scale = float(np.max(np.abs(ref))) or 1.0
    err = np.abs(y.astype(np.float64) - ref)
    bad = err > atol * scale + rtol * np.abs(ref)
    verdict = "PASS" if not bad.any() else "FAIL"
    failures += verdict == "FAIL"
    print(f"{verdict} {label}: max |diff| {err.max() / scale:.2e} of the output scale "
          f"(allowed {atol:g} of scale + {rtol:g} relative; {reason}); {int(bad.sum())} of {bad.size} over")


def torch_out(model, arrays, dev, dtype, tf32):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    model = model.to(device=dev, dtype=dtype).eval()
    with torch.inference_mode():
        out = model(*[torch.from_numpy(a).to(device=dev, dtype=dtype) for a in arrays])
    return out.double().cpu().numpy()


for name, preset in CASES:
    spec = zoo.get(name, preset=preset)
    inputs = spec.example_inputs(batch=8, seed=0)
    arrays = [inputs[n] for n in spec.input_names]
    model = spec.build_torch(seed=0)
    ref = torch_out(model, arrays, "cpu", torch.float64, False)
    tol = spec.tolerance
    label = f"{name}/{preset}"
    report(f"{label} torch {device} fp32, TF32 off vs float64", torch_out(model, arrays, device, torch.float32, False),
           ref, tol.atol, tol.rtol, "the spec's tolerance")
    report(f"{label} torch {device} fp32, TF32 on  vs float64", torch_out(model, arrays, device, torch.float32, True),
           ref, TF32_ATOL, TF32_ATOL, TF32_REASON)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        import onnxruntime as ort
        from converters.export import export_model
        import tempfile, os
        with tempfile.TemporaryDirectory() as tmp:
            path = export_model(spec.build_torch(seed=0), "torch", arrays, os.path.join(tmp, "m.onnx"),
                                input_names=spec.input_names, output_names=spec.output_names)
            providers = ["CPUExecutionProvider"]
            if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
                providers = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
            sess = ort.InferenceSession(str(path), providers=providers)
            y = sess.run(None, dict(zip(spec.input_names, arrays)))[0]
            report(f"{label} onnxruntime {sess.get_providers()[0]} fp32 vs float64", y, ref, tol.atol, tol.rtol,
                   "the spec's tolerance")
    except ImportError as exc:
        print(f"skip {label} onnxruntime: {exc}")
    except Exception as exc:  # an export problem is reported, the GPU checks go on
        print(f"skip {label} onnxruntime: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
sys.exit(1 if failures else 0)
EOF

# `parity check` on the GPU, then with every diagnostic (--layers --grads --train-steps 2), which run
# where the runners ran. `--device cuda` needs all three runtimes on the GPU; where TensorFlow or
# onnxruntime cannot use it, `--device auto` runs torch on the GPU and the others on the CPU (which
# checks the per-framework placement of the diagnostics too), and says so.
check_device() {
    [ "$DEVICE" = cuda ] || { echo "$DEVICE"; return; }
    "$PY" - <<'EOF' 2>/dev/null && echo cuda || echo auto
import sys
import torch  # torch before TensorFlow, always
import onnxruntime as ort
import tensorflow as tf
sys.exit(0 if tf.config.list_physical_devices("GPU") and "CUDAExecutionProvider" in ort.get_available_providers() else 1)
EOF
}
diag_check() {  # diag_check MODEL: the check with every diagnostic, then where its runners ran
    local model=$1 json="$OUT_DIR/check_${1}_diagnostics.json"
    rm -f "$json"
    step "parity check $model --device $CHECK_DEVICE --layers --grads --train-steps 2" 120 \
        "$PY" -m parity check "$model" --device "$CHECK_DEVICE" --layers --grads --train-steps 2 --json "$json"
    [ -f "$json" ] || return 0
    "$PY" - "$json" "$DEVICE" <<'EOF' || FAILED=1
import json, sys
result = json.load(open(sys.argv[1]))
runners = {label: info.get("device_type") for label, info in result["runners"].items()}
print(f"   runners ran on {runners}; diagnostics present: "
      f"{[k for k in ('layers', 'gradients', 'training') if result.get(k)]}")
want = "cuda" if sys.argv[2] == "cuda" else "cpu"
if runners.get("torch") != want:
    print(f"   FAIL: the torch runner ran on {runners.get('torch')}, expected {want}")
    sys.exit(1)
EOF
}
if ! "$PY" -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("tensorflow") else 1)'; then
    echo "== parity check (torch vs Keras vs ONNX Runtime): skipped, TensorFlow is not installed here"
else
    CHECK_DEVICE=$(check_device)
    if [ "$CHECK_DEVICE" != "$DEVICE" ]; then
        echo "== parity check: TensorFlow or onnxruntime cannot use the GPU here; --device auto (torch on the GPU)"
    fi
    step "parity check mlp --device $CHECK_DEVICE (fp32, TF32 off)" 90 "$PY" -m parity check mlp --device "$CHECK_DEVICE"
    step "parity check mlp --device $CHECK_DEVICE --precision tf32" 90 \
        "$PY" -m parity check mlp --device "$CHECK_DEVICE" --precision tf32
    diag_check mlp
    diag_check cnn
fi

# ---------------------------------------------------------------------------- 2. benchmarks
bench() {  # bench NAME LIMIT ARGS...
    local name=$1 limit=$2
    shift 2
    step "bench $name" "$limit" "$PY" -m parity.cli.bench bench "$@" --device "$DEVICE" --budget "$BUDGET" \
        --min-runs 10 --json "$OUT_DIR/bench_${name}.json"
}
bench mlp_fp32 90 mlp --preset standard --batch 1,32,256
bench cnn_fp32 100 cnn --preset standard --batch 1,32,256
bench cnn_train_fp32 100 cnn --preset standard --batch 32,256 --train
bench cnn_tf32 60 cnn --preset standard --batch 32,256 --precision tf32 --runtimes torch-eager tf ort
bench cnn_bf16 60 cnn --preset standard --batch 32,256 --precision bf16 --runtimes torch-eager tf-function tf-xla

echo
echo "== gpu-check done in $((SECONDS - START))s; JSON in $OUT_DIR"
exit $FAILED
