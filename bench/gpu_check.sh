#!/usr/bin/env bash
# One call on the GPU machine: build the extension, report the environment, check
# parity, run the test suite, time blocks and models, print a summary table.
#
#   bash bench/gpu_check.sh [--quick] [--compile] [--no-build]
#
#   --quick     resnet50 + cifar_resnet56 only, fewer steps, no torch.compile,
#               skips the non-GPU part of the test suite
#   --compile   add torch.compile variants (blocks: eager block; models: resnet50
#               and cifar_resnet56, eager and fused); slow to build
#   --no-build  skip `pip install -e .` (extension already built in place)
#
# The GPU machine has no nvidia-cutlass (whose headers the build needs) and no
# network: download the wheel here into .whl/ (git-ignored) and carry it:
#   python3 -m pip download --no-deps -d .whl "nvidia-cutlass>=4.2"
# then run with carry [".whl"]; the script installs .whl/*.whl before building.
#
# Run from anywhere (it cd's to the repo root). Writes under $OUT (default
# bench/out), 15 files, none nested (more than a device call brings back: tar them):
#   setup.log    nvidia-smi, versions, wheel install, extension build, fused-resnet info
#   tests.log    fused-resnet check runs (whole-model parity vs torchvision), then
#                pytest -m gpu, then pytest -m "not gpu" (together: the whole suite)
#   bench.log    stdout/stderr of the two benchmarks, profile_blocks.py and host_overhead.py
#   blocks.json  bench/bench_blocks.py results
#   models.json  bench/bench_models.py results
#   graphs.json  bench/bench_models.py --graphs: the same steps replayed from CUDA graphs
#   host_overhead.json  bench/host_overhead.py: this machine's host time per fused block step
#   speed_table.json  the fused blocks' times per backend: commit it to
#                fused_resnet/speed_tables/ and backend="auto" follows it on that GPU
#   first_step.jsonl  bench/first_step.py: the triton backend's first ResNet-50 training steps
#   <GPU>__triton-<version>.json  the Triton configurations that run tuned: commit it to
#                fused_resnet/tuned/ and that GPU's first steps time nothing
#   host_profile.txt  bench/host_profile.py: cProfile of real block steps on this machine
#   profile_models.json  bench/profile_models.py: a ResNet-50 inference batch part by part
#   sync_batch_norm.json  bench/bench_sync_batch_norm.py: SyncBatchNorm's collectives per training step
#   summary.txt  the table printed at the end
#   failures.log each failing test's id and traceback, written as it fails (so a
#                stage cut short by its time limit still says what failed)
# SKIP="name ..." skips the named stages (e.g. SKIP="bench-models tests-rest").
# BLOCK_ARGS_EXTRA, MODEL_ARGS_EXTRA: more arguments for bench_blocks.py / bench_models.py
# (e.g. "--modes train"), GRAPH_ARGS_EXTRA for bench-graphs' bench_models.py; PROFILE_ARGS:
# profile_blocks.py's arguments (default --blocks layer1); HOST_PROFILE_ARGS: host_profile.py's.
# DRY_RUN=1 prints each stage's command instead of running it (no GPU needed).
# BENCH_MODELS="resnet50" limits bench-models to those models (default: the script's).
#
# The stages run in order of what they tell: the CUDA extension's kernel tests first
# (tests-cuda: no Triton compiling, the kernels no other stage isolates), whole-model
# parity, the block benchmarks (both backends, training too, and the speed table),
# the rest of the GPU tests (most ran on 2026-11-23), then the model benchmarks and
# the diagnostics. Every stage runs under
# `timeout`; the stages share a budget (BUDGET_S, default 540 s) so that the whole
# script ends inside a 10-minute device call, and a stage that no longer fits is
# skipped and says so. Exit code 1 if any stage failed or timed out.
#
# The training plan (2026-12-04: one call inside 9 minutes, training first; what the
# training issues measure): build, the CUDA kernel tests, the three benchmark blocks'
# training steps on eager, cuda and triton (heuristic Triton configurations: autotuning
# a whole model takes minutes), the layer1/layer3 training profile, then ResNet-50
# training beside eager and torch.compile of eager, then inference, then the triton
# backend's first ResNet-50 training steps with autotuning on, cold and warm caches, then
# the host profile of a layer3 block step (eager and cuda), then the SyncBatchNorm
# collectives' cost per ResNet-50 training step (last: skipped if the budget is spent):
#   (timeout_s 600, carry [".whl"])
#      SKIP="info check-resnet50-bf16-train check-resnet50-fp32 profile-models tests-gpu bench-graphs host-overhead" \
#      FUSED_RESNET_TRITON_AUTOTUNE=0 BLOCK_ARGS_EXTRA="--modes train" PROFILE_ARGS="--blocks layer1,layer3 --modes train" \
#      BENCH_MODELS=resnet50 MODEL_ARGS_EXTRA="--backend cuda,triton --modes train,infer --compile --compile-variants eager" \
#      BUDGET_S=540 bash bench/gpu_check.sh --quick
#
# A session's device time is 15 minutes, machine start (1-2 min) and idle included.
# On the H100 of 2026-11-23 the build took 38 s and the GPU tests needed more than
# 240 s with 14 processes (mostly Triton compiling), so the plan is one full call
# and, only if at least 5 minutes are left right after it (the machine is then
# still warm and keeps the build), a short second one:
#   1. (timeout_s 600, carry [".whl"])
#      SKIP="bench-graphs profile profile-models host-overhead first-step-cold first-step-warm bench-sync" TESTS_GPU_S=150 BENCH_MODELS=resnet50 BUDGET_S=560 bash bench/gpu_check.sh --quick
#   2. (timeout_s 240, at once, same carry)
#      SKIP="check-resnet50-fp32 check-resnet50-bf16-train tests-cuda bench-blocks tests-gpu bench-models first-step-cold first-step-warm" BUDGET_S=220 bash bench/gpu_check.sh --quick --no-build
set -u -o pipefail
export PYTHONUNBUFFERED=1

cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-540}
QUICK=0 COMPILE=0 BUILD=1
for a in "$@"; do
  case $a in
    --quick) QUICK=1 ;;
    --compile) COMPILE=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

# Every stage's name, in the order they run: SKIP may name only these.
ALL_STAGES="env wheels cutlass-headers build info tests-cuda check-resnet50-bf16-train check-resnet50-fp32
  check-cifar56-bf16-train bench-blocks profile profile-models tests-gpu bench-models first-step-cold first-step-warm bench-graphs
  host-overhead host-profile bench-sync tests-rest"
for name in ${SKIP:-}; do
  if [[ " $(echo $ALL_STAGES) " != *" $name "* ]]; then
    echo "gpu_check.sh: SKIP names '$name', which is no stage; stages: $(echo $ALL_STAGES)" >&2
    exit 2
  fi
done

START=$SECONDS
STAGES=()
FAILED=0

# stage NAME CAP LOG CMD...: CMD under a timeout of min(CAP, budget left - 20 s),
# output appended to LOG (and shown when SHOW=1); one status line per stage.
stage() {
  local name=$1 cap=$2 log=$3; shift 3
  [[ " $(echo $ALL_STAGES) " == *" $name "* ]] || { echo "gpu_check.sh: stage $name is missing from ALL_STAGES" >&2; exit 2; }
  if [[ " ${SKIP:-} " == *" $name "* ]]; then
    STAGES+=("$name|skipped: SKIP|0")
    return 0
  fi
  local left=$(( BUDGET - (SECONDS - START) - 20 ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 15 )); then
    STAGES+=("$name|skipped: time budget spent|0")
    echo "--- $name: skipped (time budget spent)"
    return 0
  fi
  echo "--- $name (limit ${limit}s, log $log)"
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "    \$ $*"
    STAGES+=("$name|dry run|0")
    return 0
  fi
  printf '\n===== %s [%s, limit %ss]\n$ %s\n' "$name" "$(date -u +%FT%TZ)" "$limit" "$*" >>"$log"
  local t0=$SECONDS rc
  if [[ ${SHOW:-0} == 1 ]]; then
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"; rc=$?
  else
    timeout -k 10 "$limit" "$@" >>"$log" 2>&1; rc=$?
  fi
  local dt=$(( SECONDS - t0 )) st
  case $rc in
    0) st=ok ;;
    124|137) st="TIMEOUT (${limit}s)" ;;
    *) st="FAILED (rc=$rc)" ;;
  esac
  echo "===== $name: $st in ${dt}s" >>"$log"
  STAGES+=("$name|$st|$dt")
  if (( rc != 0 )); then
    FAILED=1
    echo "    $name: $st; last lines of $log:"
    tail -n 15 "$log" | sed 's/^/    | /'
  fi
  return 0
}

SETUP=$OUT/setup.log CHECK=$OUT/tests.log TESTS=$OUT/tests.log BENCH=$OUT/bench.log
export FUSED_RESNET_FAIL_LOG=$OUT/failures.log  # tests/conftest.py appends each failure
: >"$SETUP"; : >"$TESTS"; : >"$BENCH"; : >"$FUSED_RESNET_FAIL_LOG"

echo "gpu_check.sh: quick=$QUICK compile=$COMPILE build=$BUILD budget=${BUDGET}s out=$OUT"
stage env 30 "$SETUP" bash -c "nvidia-smi; $PY -c 'import sys, torch, torchvision; \
print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else None); print(\"torchvision\", torchvision.__version__); \
import triton; print(\"triton\", triton.__version__)'; git log --oneline -3 2>/dev/null; git status --short 2>/dev/null | head -20"

if compgen -G ".whl/*.whl" >/dev/null; then
  stage wheels 90 "$SETUP" "$PY" -m pip install --no-index --no-deps .whl/*.whl
fi
if (( BUILD )); then
  # Without the CUTLASS headers setup.py would skip _C, and the cuda backend with it.
  stage cutlass-headers 30 "$SETUP" "$PY" -c "import importlib.util, sys; \
s = importlib.util.find_spec('cutlass_library'); print(s.submodule_search_locations if s else None); \
sys.exit(0 if s else 'nvidia-cutlass is not installed: carry its wheel in .whl/ (see the top of this script)')"
  if [[ -f setup.py || -f pyproject.toml ]]; then
    stage build 300 "$SETUP" env MAX_JOBS=16 "$PY" -m pip install --no-build-isolation --no-deps -e .
  else
    STAGES+=("build|skipped: no setup.py/pyproject.toml|0")
  fi
fi

if command -v fused-resnet >/dev/null 2>&1; then FR=(fused-resnet); else FR=("$PY" -m fused_resnet); fi
SHOW=1 stage info 60 "$SETUP" "${FR[@]}" info

# Test processes in parallel (pytest-xdist, when installed): most of the GPU suite's
# time is Triton compiling kernels on the CPU.
# A test that hangs is stopped (pytest-timeout, when installed) instead of eating the budget.
# -v: one line per finished test, so a stage cut short by its limit still says what passed.
PYTEST=("$PY" -m pytest -v -rfE -p no:cacheprovider --durations=10)
"$PY" -c "import xdist" 2>/dev/null && PYTEST+=(-n "${XDIST_N:-14}")
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 150)

# The CUDA extension's kernels against fp64 and the reference, on their own: they
# compile no Triton kernel, so they come back in a minute whatever follows.
CUDA_TESTS=(tests/cuda/test_*.py)
stage tests-cuda 180 "$TESTS" "${PYTEST[@]}" -m gpu "${CUDA_TESTS[@]}"

# Whole-model parity against torchvision (TF32 off for fp32; fp64 reference and the 2x rule for bf16/fp16).
# Parity does not depend on which Triton configuration is fastest: the heuristic one
# is used untimed, so the check compiles one configuration per kernel, not all.
NOTUNE=(env FUSED_RESNET_TRITON_AUTOTUNE=0)
stage check-resnet50-bf16-train 120 "$CHECK" "${NOTUNE[@]}" "${FR[@]}" check --model resnet50 --dtype bf16 --train --batch 32
stage check-resnet50-fp32 120 "$CHECK" "${NOTUNE[@]}" "${FR[@]}" check --model resnet50 --dtype fp32 --batch 8
if (( ! QUICK )); then
  stage check-cifar56-bf16-train 90 "$CHECK" "${NOTUNE[@]}" "${FR[@]}" check --model cifar_resnet56 --dtype bf16 --train --batch 128
fi

BLOCK_ARGS=(--json "$OUT/blocks.json" --table "$OUT/speed_table.json")
MODEL_ARGS=(--json "$OUT/models.json" --backend triton,cuda,auto)
[[ -n ${BENCH_MODELS:-} ]] && MODEL_ARGS+=(--models "$BENCH_MODELS")
# The same steps replayed from CUDA graphs: the gap to the plain rows is host time.
GRAPH_ARGS=(--json "$OUT/graphs.json" --backend triton,cuda --graphs --quick ${GRAPH_ARGS_EXTRA:-})
if (( QUICK )); then
  BLOCK_ARGS+=(--quick); MODEL_ARGS+=(--quick)
else
  (( COMPILE )) || BLOCK_ARGS+=(--no-compile)
  (( COMPILE )) && MODEL_ARGS+=(--compile)
fi
BLOCK_ARGS+=(${BLOCK_ARGS_EXTRA:-})
MODEL_ARGS+=(${MODEL_ARGS_EXTRA:-})
stage bench-blocks 150 "$BENCH" "$PY" bench/bench_blocks.py "${BLOCK_ARGS[@]}"
# The kernels of one block step per variant, with the CUTLASS kernels named by operator,
# mainloop and tile: where the fused blocks lose their time.
stage profile 120 "$BENCH" "$PY" bench/profile_blocks.py ${PROFILE_ARGS:---blocks layer1}
# A whole ResNet-50 inference batch, part by part (stem, each block, head), eager vs fused.
stage profile-models 120 "$BENCH" "$PY" bench/profile_models.py --models resnet50 --backends cuda,triton \
  --json "$OUT/profile_models.json"

# The rest of the GPU tests (the files tests-cuda ran are left out unless it was skipped).
# The files holding GPU tests that have never run go first: pytest-xdist hands tests
# out in collection order, so a stage cut short by its limit loses the others.
FIRST=(tests/test_gpu_models.py tests/triton/test_conv_backward.py)
REST=("${FIRST[@]}")
for f in tests/test_*.py tests/*/test_*.py; do
  [[ " ${FIRST[*]} " == *" $f "* ]] && continue
  [[ " ${SKIP:-} " != *" tests-cuda "* && " ${CUDA_TESTS[*]} " == *" $f "* ]] && continue
  REST+=("$f")
done
stage tests-gpu "${TESTS_GPU_S:-240}" "$TESTS" "${PYTEST[@]}" -m gpu "${REST[@]}"

# backend="auto" follows the speed table bench-blocks just measured on this GPU (the
# shipped tables name other devices), so the auto rows time this machine's choice.
TABLE_ENV=(env)
[[ -s $OUT/speed_table.json ]] && TABLE_ENV+=(FUSED_RESNET_SPEED_TABLES="$OUT/speed_table.json")
stage bench-models 240 "$BENCH" "${TABLE_ENV[@]}" "$PY" bench/bench_models.py "${MODEL_ARGS[@]}"
# The triton backend's first steps in fresh processes, autotuning on: a cold tuning and
# Triton compile cache, then the same caches warm (what a user's second run waits for).
FIRST_STEP_DIR=$(mktemp -d)
FIRST_STEP=(env FUSED_RESNET_TRITON_AUTOTUNE=1 FUSED_RESNET_CACHE_DIR="$FIRST_STEP_DIR/tuning"
            TRITON_CACHE_DIR="$FIRST_STEP_DIR/triton" "$PY" bench/first_step.py --json "$OUT/first_step.jsonl")
stage first-step-cold 150 "$BENCH" "${FIRST_STEP[@]}" --label cold
stage first-step-warm 60 "$BENCH" "${FIRST_STEP[@]}" --label warm
# The configurations the cold run tuned, as a table to ship in fused_resnet/tuned/ for this GPU.
compgen -G "$FIRST_STEP_DIR/tuning/*.json" >/dev/null && cp "$FIRST_STEP_DIR"/tuning/*.json "$OUT/"
stage bench-graphs 240 "$BENCH" "$PY" bench/bench_models.py "${GRAPH_ARGS[@]}"
stage host-overhead 90 "$BENCH" "$PY" bench/host_overhead.py --variants eager,null,triton-host,cuda-host --json "$OUT/host_overhead.json"
# The host side of real block steps on this machine's CPU, function by function.
stage host-profile 60 "$BENCH" "$PY" bench/host_profile.py --out "$OUT/host_profile.txt" ${HOST_PROFILE_ARGS:-}
# SyncBatchNorm on one GPU (NCCL, a world of one, collectives forced): what the fused and
# nn.SyncBatchNorm's collectives cost per ResNet-50 training step.
stage bench-sync 120 "$BENCH" "$PY" bench/bench_sync_batch_norm.py --steps 10 --json "$OUT/sync_batch_norm.json"

if (( ! QUICK )); then
  stage tests-rest 200 "$TESTS" "${PYTEST[@]}" -m "not gpu" tests
fi

# ---------------------------------------------------------------- summary
SUMMARY=$OUT/summary.txt
{
  echo "gpu_check.sh summary ($(date -u +%FT%TZ), total $(( SECONDS - START ))s, quick=$QUICK compile=$COMPILE)"
  printf '%-28s %-34s %6s\n' stage status seconds
  for s in "${STAGES[@]}"; do
    IFS='|' read -r n st dt <<<"$s"
    printf '%-28s %-34s %6s\n' "$n" "$st" "$dt"
  done
  grep -E '^(PASS|FAIL|PROBLEM)' "$CHECK" | sed 's/^/check: /'
  grep -E '^[0-9]+ (passed|failed)|passed|failed|error' "$TESTS" | grep -E ' in [0-9.]+s' | sed 's/^/pytest: /'
  "$PY" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
for name in ("blocks.json", "models.json"):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        print(f"\n{name}: not written")
        continue
    d = json.load(open(path))
    e = d.get("env", {})
    ceil = d.get("ceilings") or {}
    extra = f", copy {ceil['copy_GBps']:.0f} GB/s, bf16 GEMM {ceil['bf16_TFLOPs']:.0f} TFLOP/s" if ceil else ""
    print(f"\n{name}{' (PARTIAL: cut short)' if d.get('partial') else ''}: {d.get('device')}, "
          f"torch {e.get('torch')}, triton {e.get('triton')}, CUDA {e.get('cuda_runtime')}{extra}")
    print(d.get("table", ""))
EOF
} 2>&1 | tee "$SUMMARY"

exit $FAILED
