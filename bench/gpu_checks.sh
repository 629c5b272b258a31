#!/usr/bin/env bash
# Every GPU check of the performance work in one run (about 10 min on one H100): the CUDA-only
# tests, masked vs dense train step and plain vs fast rollout at lab size (float32 and bf16),
# a lab trial's device memory and trials per GPU (summed from its parts, then one real lab
# epoch), and bf16's effect on the objective.
# Five JSON files and one log (checks.log) go to $OUT (default bench/out). The machine needs
# the project's Python dependencies but not Ray or Optuna; the project itself is found through
# PYTHONPATH, so no install is needed.
#
#     bash bench/gpu_checks.sh            # PY=python3 OUT=bench/out by default
#     STEPS="memory trial_memory" bash bench/gpu_checks.sh    # only these checks
# Where one command may run 10 min at most, run it as two: every step but trial_memory (about
# 6 min), then STEPS=trial_memory (about 4 min, most of it simulating the short lab suite).
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
export LATENT_TUNE_DATA=${LATENT_TUNE_DATA:-/tmp/latent_tune_suites}
status=0
log=$OUT/checks.log
: >"$log"
STEPS=${STEPS:-pytest_cuda masked_decode memory memory_tu50 bf16 trial_memory}
step() {  # step NAME CMD...: run one check, log it to checks.log, keep going on failure
    local name=$1 t0=$SECONDS
    shift
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    echo "== $name: $*" | tee -a "$log"
    "$@" >>"$log" 2>&1 || { echo "   FAILED: $name (see checks.log)" | tee -a "$log"; status=1; }
    echo "   $((SECONDS - t0)) s" | tee -a "$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
step pytest_cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_share.py \
    tests/test_interpolation.py tests/test_masked_decode.py
step masked_decode "$PY" bench/bench_masked_decode.py --device cuda --bf16 --steps 5 \
    --lab-batch 256 --lab-ems 5 --rollout 2000 --out "$OUT/masked_decode_cuda.json"
step memory "$PY" bench/bench_memory.py --device cuda --out "$OUT/memory_lab_cuda.json"
step memory_tu50 "$PY" bench/bench_memory.py --device cuda --tu 50 --ems 6 \
    --out "$OUT/memory_lab_tu50_ems6_cuda.json"
step bf16 "$PY" bench/bench_bf16.py --device cuda --config demo --epochs 6 --seeds 0,1,2 \
    --out "$OUT/bf16_demo_cuda.json"
# last: it simulates a short lab suite first (a few minutes of CPU, 14 GB in /tmp)
step trial_memory "$PY" bench/bench_trial_memory.py --device cuda --preset lab \
    --out "$OUT/trial_memory_lab_cuda.json"
exit $status
