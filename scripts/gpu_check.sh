#!/usr/bin/env bash
# `make gpu-check`: the GPU evidence in one run of under 8 minutes, on a machine with torch (CUDA),
# JAX (CUDA), onnx, onnxscript and onnxruntime, and without TensorFlow (README: "GPU evidence").
#   1. environment.json: card, driver, CUDA, cuDNN and library versions;
#   2. parity.json: resnet50, bert and vit (standard preset) on the GPU in strict fp32 and with TF32,
#      torch, keras-jax (the ported Keras twin on XLA) and ONNX Runtime, each against torch on the CPU;
#   3. bench_*.json: inference at batch 1, 8, 32, 128 and a training step at batch 32 for torch eager,
#      torch.compile, ONNX Runtime CUDA (IO binding; where onnxruntime-gpu was brought) and keras-jax;
#      fidelity_*.json: the engine's median against a bare loop timed with CUDA events (torch) or
#      perf_counter around call + sync (ORT, keras-jax), band 0.95-1.05;
#   4. report.md (+ bench_*.png, report.html where matplotlib/Jinja2 are there).
# Everything goes to one folder: $GPU_CHECK_OUT, else $OUT, else /tmp/parity-gpu-check.
# `bash scripts/gpu_check.sh --dry-run` (make gpu-check DRY_RUN=1) runs the same steps on the CPU at the
# small preset with TensorFlow made unimportable (scripts/gpu_notf), proving the path without a GPU.
# Python: $PYTHON, else .venv/bin/python, else python3.
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY="${PYTHON:-.venv/bin/python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # torch and JAX share the card
OUT_DIR="${GPU_CHECK_OUT:-${OUT:-/tmp/parity-gpu-check}}"
TOTAL_S="${GPU_CHECK_SECONDS:-450}"   # 7.5 minutes: the whole run stays under 8
if ((DRY)); then
    DEVICE=cpu PRESET=small BATCHES=1,8 TRAIN_BATCH=8 FID_BATCH=8 BUDGET="${GPU_CHECK_BUDGET:-0.05}" ORT=ort-cpu
    THREADS="--threads 1"
    export PYTHONPATH="$PWD/scripts/gpu_notf:$PYTHONPATH"   # as on the GPU machine: no TensorFlow
    TOTAL_S="${GPU_CHECK_SECONDS:-1800}" SCALE=5             # 2 shared CPU cores, not an H100
else
    DEVICE=cuda PRESET=standard BATCHES=1,8,32,128 TRAIN_BATCH=32 FID_BATCH=32 BUDGET="${GPU_CHECK_BUDGET:-0.3}"
    ORT=ort-cuda THREADS="" SCALE=1
fi
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
    limit=$((limit * SCALE))
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

echo "== gpu-check: python $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1)), device $DEVICE," \
     "preset $PRESET, out $OUT_DIR$( ((DRY)) && echo ' (CPU dry run, TensorFlow blocked)')"
if ((!DRY)) && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "gpu-check: nvidia-smi sees a GPU but torch does not (a CPU-only torch build?)"
        exit 1
    fi
    echo "gpu-check: no GPU on this machine; nothing to measure (make gpu-check DRY_RUN=1 runs the CPU dry run)"
    exit 0
fi
mkdir -p "$OUT_DIR"

step "environment" 60 "$PY" scripts/gpu_report.py env --out "$OUT_DIR"
if "$PY" -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("tensorflow") else 1)'; then
    echo "TensorFlow: installed here, but not used: this is the no-TensorFlow GPU path"
else
    echo "TensorFlow: not measured on this GPU (not installable there)"
fi

step "parity: resnet50, bert, vit ($PRESET) on $DEVICE, fp32 strict and TF32, against torch on the CPU" 190 \
    "$PY" scripts/gpu_parity.py --device "$DEVICE" --out "$OUT_DIR" --preset "$PRESET" --models resnet50,bert,vit

bench() {  # bench TAG LIMIT ARGS...
    local tag=$1 limit=$2
    shift 2
    # shellcheck disable=SC2086
    step "bench $tag" "$limit" "$PY" scripts/gpu_bench.py --device "$DEVICE" --out "$OUT_DIR" --tag "$tag" \
        --model resnet50 --preset "$PRESET" --budget "$BUDGET" $THREADS "$@"
}
# fast runtimes first (with the harness check), torch.compile last: it compiles every shape afresh
bench resnet50_inference 110 --batch "$BATCHES" --runtimes "torch-eager,$ORT,keras-jax" --fidelity "$FID_BATCH"
bench resnet50_training 50 --batch "$TRAIN_BATCH" --runtimes torch-eager,keras-jax --train
bench resnet50_inference_compile 70 --batch "$BATCHES" --runtimes torch-compile
bench resnet50_training_compile 40 --batch "$TRAIN_BATCH" --runtimes torch-compile --train

echo
echo "== report"
timeout 60 "$PY" scripts/gpu_report.py report --out "$OUT_DIR" || FAILED=1
echo "== gpu-check done in $((SECONDS - START))s; results in $OUT_DIR"
exit $FAILED
