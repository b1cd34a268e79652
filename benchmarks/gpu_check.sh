#!/usr/bin/env bash
# The GPU path in one short script (about 8 minutes on one H100/H200, set-up included):
#
#   setup        scripts/setup.sh (builds torchsort's CUDA extension where a GPU and nvcc are)
#   device       versions, the device, torchsort's CUDA extension        (benchmarks/gpu_env.py)
#   cuda_tests   pytest -m cuda: every test marked cuda must pass (on a CPU: all skip)
#   amp          every detector, a few training steps in fp32, bf16, fp16 (bench_amp.py)
#   throughput   our RetinaNet and FCOS R50-FPN vs torchvision's, interleaved (bench_throughput.py)
#   nms          greedy, CL-B and Soft-NMS on the device                  (bench_nms.py)
#   correlation  correlation loss, every kind, forward + backward         (bench_correlation.py)
#   sweep        a 2-trial sweep on one GPU (gpus_per_worker 0.5), one trial at a time;
#   memory_release  the second trial's free GPU memory at start against the first's
#
# Each step runs under a timeout (its own limit, and never past the whole run's budget), a
# failed check is reported and the next one runs; the exit status is 1 if any check failed.
# One line per check as it ends, then results/bench/gpu.md and gpu.json (benchmarks/
# gpu_report.py decides each verdict); the steps' own outputs and logs go to gpu/ beside them.
#
#   bash benchmarks/gpu_check.sh                        # on a GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --quick   # the same steps on a CPU, tiny sizes
#
# Options: --device cuda|cpu (default cuda), --quick (tiny sizes: minutes on a CPU), --out DIR
# (default results/bench on a GPU, a new temporary folder on a CPU, so a dry run never
# overwrites GPU figures), --python PATH (use that environment; setup.sh is not run),
# --budget S (seconds for the whole run; default 480 on a GPU, 1200 on a CPU).
# On a GPU with $OUT set, gpu.md, gpu.json and gpu_steps.tar.gz are also copied there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE=cuda
QUICK=0
OUT_DIR=""
PY=""
BUDGET=""
usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --device) DEVICE=${2:?--device needs cuda or cpu}; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT_DIR=${2:?--out needs a folder}; shift 2 ;;
    --python) PY=${2:?--python needs a path}; shift 2 ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in
  cuda | cuda:*) MODE=gpu ;;
  cpu) MODE=cpu ;;
  *) echo "gpu_check: --device must be cuda or cpu, got $DEVICE" >&2; exit 2 ;;
esac
if [[ -z "$OUT_DIR" ]]; then
  if [[ $MODE == gpu ]]; then OUT_DIR="$ROOT/results/bench"; else OUT_DIR="$(mktemp -d)"; fi
fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
STEPS="$OUT_DIR/gpu"
rm -rf "$STEPS"
mkdir -p "$STEPS"
WORK="$(mktemp -d /tmp/gpucheck.XXXXXX)" # the sweep's folder and Ray's (short: socket paths)
# On a CPU the limits only guard against a hang: a busy machine takes several times longer.
BUDGET=${BUDGET:-$([[ $MODE == gpu ]] && echo 480 || echo 1200)}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
RESERVE=10    # seconds kept for the report at the end
MIN_STEP_S=15 # a step that would get less is not started
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ $MODE == cpu ]]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
# The report needs only the standard library: it runs even where set-up failed.
REPORT_PY=$(command -v python3 || true)

# Ray processes of this run's sweep carry RAY_TMPDIR=$WORK/ray: end those, by id, and no other.
reap_ray() {
  local environ pid
  for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    [[ $pid == "$$" ]] && continue
    if grep -qzxF "RAY_TMPDIR=$WORK/ray" "$environ" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  reap_ray
  rm -rf "$WORK"
}
trap cleanup EXIT

# record NAME RC SECONDS LIMIT RAN NOTE [SKIP]: one line of the steps' status for the report.
record() {
  local note=${6//\\/\\\\}
  note=${note//\"/\\\"}
  printf '{"name": "%s", "rc": %s, "seconds": %s, "timeout_s": %s, "ran": %s, "note": "%s", "skip": %s}\n' \
    "$1" "$2" "$3" "$4" "$5" "$note" "${7:-false}" >>"$STEPS/status.jsonl"
}
line() { "${REPORT_PY:-$PY}" benchmarks/gpu_report.py --steps "$STEPS" --mode "$MODE" line "$1" || true; }
NO_ENV="" # set when there is no usable Python environment: later steps are not started

# run_step NAME LIMIT COMMAND...: run it in $ROOT (or $STEP_CWD) under min(LIMIT, time left),
# output to STEPS/NAME.log; never fails the script.
run_step() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - $(date +%s) - RESERVE))
  local limit=$((cap < left ? cap : left))
  if [[ -n $NO_ENV ]]; then
    record "$name" null 0 0 false "not run: $NO_ENV"
    return 0
  fi
  if ((limit < MIN_STEP_S)); then
    record "$name" null 0 0 false "not run: ${left} s of the ${BUDGET} s budget left"
    return 0
  fi
  echo "gpu_check: $name (limit ${limit} s)"
  local t0 t1 rc=0
  t0=$(date +%s%N)
  (cd "${STEP_CWD:-$ROOT}" && exec timeout --kill-after=10 "$limit" "$@") >"$STEPS/$name.log" 2>&1 || rc=$?
  t1=$(date +%s%N)
  record "$name" "$rc" "$(printf '%d.%03d' $(((t1 - t0) / 1000000000)) $(((t1 - t0) / 1000000 % 1000)))" \
    "$limit" true ""
}

# ------------------------------------------------------------------------------- set-up
if [[ -n $PY ]]; then
  record setup null 0 0 false "using --python $PY (scripts/setup.sh not run)" true
else
  if [[ $MODE == gpu && -z ${TORCH_CUDA_ARCH_LIST:-} ]] && command -v nvidia-smi >/dev/null; then
    # Build torchsort's CUDA kernels for this GPU alone: half the build of "8.0;9.0".
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 || true)
    if [[ $cap =~ ^[0-9]+\.[0-9]+$ ]]; then export TORCH_CUDA_ARCH_LIST=$cap; fi
  fi
  run_step setup "$([[ $MODE == gpu ]] && echo 300 || echo 180)" bash scripts/setup.sh
  PY="$ROOT/.venv/bin/python"
fi
line setup
if ! "$PY" -c 'import torch, detectors' >/dev/null 2>&1; then
  NO_ENV="no working Python environment at $PY (see setup.log)"
fi

run_step env 60 "$PY" benchmarks/gpu_env.py --out "$STEPS/env.json"
line env

# --------------------------------------------------------------------------- the checks
mapfile -t CUDA_TEST_FILES < <(grep -rlE 'mark\.cuda\b' tests | sort)
run_step cuda_tests "$([[ $MODE == gpu ]] && echo 150 || echo 120)" \
  "$PY" -m pytest -m cuda -q -p no:cacheprovider -rfEs --junitxml="$STEPS/cuda_tests.xml" \
  "${CUDA_TEST_FILES[@]}"
line cuda_tests

# Spearman correlation loss on in every case: it runs through torchsort's CUDA extension.
CORR=(loss.corr.weight=0.2 loss.corr.kind=spearman)
if ((QUICK)); then
  AMP_ARGS=(--set "${CORR[@]}" --size 64 --batch 2 --steps 2 --threads 1)
  TP_ARGS=(--size 64 --batch 2 --iters 2 --repeats 2 --warmup 1 --threads 1 --no-memory)
  NMS_ARGS=(--sizes 1000 --classes 80 --repeats 3 --threads 1)
  CORR_ARGS=(--threads 1 --sizes 500 --min-time 0 --min-runs 3)
else
  R50=(model.backbone=resnet50 model.fpn_channels=256 model.head_convs=4)
  AMP_ARGS=(--set "${R50[@]}" "${CORR[@]}" --size 512 --batch 2 --steps 5)
  TP_ARGS=(--size 800 --batch 2 8 --iters 10 --repeats 3 --warmup 3)
  NMS_ARGS=(--sizes 5000 20000 --classes 5 80 --repeats 10)
  CORR_ARGS=(--threads 1 --min-time 0.1 --min-runs 10)
fi

run_step amp 120 "$PY" benchmarks/bench_amp.py --device "$DEVICE" "${AMP_ARGS[@]}" \
  --out "$STEPS/amp"
line amp
run_step throughput 150 "$PY" benchmarks/bench_throughput.py --device "$DEVICE" "${TP_ARGS[@]}" \
  --out "$STEPS/throughput"
line throughput
run_step nms 60 "$PY" benchmarks/bench_nms.py --device "$DEVICE" "${NMS_ARGS[@]}" \
  --out "$STEPS/nms"
line nms
run_step correlation 60 "$PY" benchmarks/bench_correlation.py --device "$DEVICE" \
  "${CORR_ARGS[@]}" --out "$STEPS/correlation"
line correlation

# Two trials one after the other; on a GPU each asks for half of it, and trains a ResNet-50
# at 512 px so that memory a finished trial kept would show in the next one's free memory.
mkdir -p "$WORK/sweep" "$WORK/ray"
if [[ $MODE == gpu ]]; then
  GPUS=0.5
  FIXED='fixed: {model.backbone: resnet50, data.image_size: 512, train.batch_size: 8}'
else
  GPUS=0
  FIXED=''
fi
cat >"$WORK/sweep/gpu_check.yaml" <<YAML
name: gpu_check
description: "benchmarks/gpu_check.sh: is GPU memory released between trials?"
base: smoke
metric: {name: AP, goal: maximize}
method: grid
parameters:
  loss.corr.weight: {values: [0.0, 0.2]}
$FIXED
repeats: 1
max_concurrent: 1
resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: $GPUS}
YAML
STEP_CWD="$WORK/sweep" RAY_TMPDIR="$WORK/ray" run_step sweep \
  "$([[ $MODE == gpu ]] && echo 150 || echo 480)" \
  "$PY" -m orchestrator.cli sweep gpu_check.yaml
reap_ray
cp "$WORK/sweep/.corrtune/sweeps/gpu_check/ledger.json" "$STEPS/sweep_ledger.json" 2>/dev/null || true
line sweep

# ------------------------------------------------------------------------------ the report
rc=0
"${REPORT_PY:-$PY}" benchmarks/gpu_report.py --steps "$STEPS" --mode "$MODE" report \
  --out-dir "$OUT_DIR" --wall-s "$(($(date +%s) - START))" --budget-s "$BUDGET" \
  --command "bash benchmarks/gpu_check.sh --device $DEVICE$( ((QUICK)) && echo ' --quick')" || rc=$?
if [[ $MODE == gpu && -n ${OUT:-} ]]; then # the remote runner copies $OUT back (8 files at most)
  cp "$OUT_DIR/gpu.md" "$OUT_DIR/gpu.json" "$OUT/" || true
  tar -czf "$OUT/gpu_steps.tar.gz" -C "$OUT_DIR" gpu || true
fi
exit "$rc"
