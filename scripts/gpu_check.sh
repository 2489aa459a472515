#!/usr/bin/env bash
# Does it work on CUDA, and how fast: one command, under 8 minutes on one GPU.
#   1. the gpu-marked tests (tests/test_gpu.py): the cupy, fused and torch neuron paths against each other (spikes
#      and gradients; float32, float16, bfloat16; tau 2 and 1.5; requirements in models/backend_check.py), a float16
#      training step with the CUDA gradient scaler per tokenizer layout, a whole run and test.py on CUDA, two
#      processes over NCCL (skipped with fewer than 2 GPUs), the benchmark script on every path;
#   2. throughput and peak memory: scripts/benchmark.py, training img/s per neuron path, for 8-768 at 224x224 and
#      4-384 at 32x32, float32 and float16 autocast (the published recipes train with fp16 AMP);
#      and the step memory of the published per-GPU batches without and with --grad-checkpointing (8-768 at 24,
#      fp16; DVS 2-256 at 16, T=16, fp32), which replaces the CPU estimates of docs/speed.md;
#      the opt-ins --channels-last and --torchcompile (inductor) against the plain fused path, 4-384 and 8-768 in
#      float16;
#   3. one summary table of both (utils/gpu_report.py), printed and written to OUT_DIR/summary.md.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (default output/gpu_check of the checkout; a relative OUT_DIR is taken
#        from where you call it; also pytest.txt, gpu_tests.xml, gpu_tests.json, bench_*.json/.md/.log there).
#        PYTHON=... picks the interpreter (default: the first of python, python3 that imports torch).
#        The tests stop after GPU_CHECK_TEST_LIMIT seconds (default 300; the table lists those that finished), each
#        benchmark when the script's 460 s are spent.
# GPU_CHECK_DEVICE=cpu: a dry run on CPU (the tests small, CuPy and NCCL skipped, one tiny benchmark), to check the
#        script itself where no GPU is.
# Exit status: 0 when every test passed and every benchmark finished, 1 otherwise, 2 without a CUDA device (or torch).
set -uo pipefail
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
OUT=$(absolute "${1:-$(dirname "$0")/../output/gpu_check}")
if [ -n "${PYTHON:-}" ]; then
  case $PYTHON in */*) PY=$(absolute "$PYTHON") ;; *) PY=$PYTHON ;; esac
else
  PY=
  for candidate in python python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' 2>/dev/null; then PY=$candidate; break; fi
  done
fi
if [ -z "$PY" ] || ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "no Python that imports torch (${PYTHON:-tried python, python3}): name one with PYTHON=/path/to/python"
  exit 2
fi
cd "$(dirname "$0")/.."
START=$SECONDS
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TEST_LIMIT=${GPU_CHECK_TEST_LIMIT:-300}
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "no CUDA device: nothing to check (GPU_CHECK_DEVICE=cpu runs a dry run on CPU)"
  exit 2
fi
mkdir -p "$OUT"
rm -f "$OUT"/gpu_tests.xml "$OUT"/gpu_tests.json "$OUT"/bench_*  # an earlier run's results must not enter the table

# timeout stops a hung test with SIGTERM, which tests/test_gpu.py turns into Ctrl-C: pytest still writes what finished
GPU_CHECK_DEVICE=$DEVICE GPU_CHECK_OUT=$OUT timeout --kill-after=30 "$TEST_LIMIT" "$PY" -m pytest -m gpu -q -rs \
  tests/test_gpu.py --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/pytest.txt"
CODE=${PIPESTATUS[0]}
STATUS=$([ "$CODE" = 0 ] && echo 0 || echo 1)
[ "$CODE" = 124 ] && echo "tests stopped at the limit of $TEST_LIMIT s (GPU_CHECK_TEST_LIMIT)"
echo "tests done after $((SECONDS - START)) s"

bench() {  # name, then benchmark.py arguments; each is bounded so that the whole script stays under 8 minutes
  local name=$1; shift
  local left=$((460 - (SECONDS - START)))
  if [ "$left" -lt 30 ]; then
    echo "benchmark $name not run: out of time"; echo "$name" >>"$OUT/bench_not_run.txt"; return
  fi
  echo "benchmark $name"
  timeout "$left" "$PY" scripts/benchmark.py --device "$DEVICE" --modes train --rounds 1 --warmup 2 --steps 5 \
    --json "$OUT/bench_$name.json" "$@" >"$OUT/bench_$name.md" 2>"$OUT/bench_$name.log" \
    || { echo "benchmark $name did not finish (see $OUT/bench_$name.log)"; echo "$name" >>"$OUT/bench_failed.txt"
         STATUS=1; }
}
if [ "$DEVICE" = cuda ]; then
  bench 8_768_fp32 --model spikingformer_8_768 --batch-size 16
  bench 8_768_fp16 --model spikingformer_8_768 --batch-size 16 --amp fp16
  bench 4_384_fp32 --model spikingformer_cifar_4_384 --batch-size 64
  bench 4_384_fp16 --model spikingformer_cifar_4_384 --batch-size 64 --amp fp16
  bench 8_768_fp16_ckpt --model spikingformer_8_768 --batch-size 24 --amp fp16 --paths fused --grad-checkpointing both
  bench dvs_2_256_ckpt --model spikingformer_dvs_2_256 --batch-size 16 --paths fused --grad-checkpointing both
  bench 4_384_fp16_opt_ins --model spikingformer_cifar_4_384 --batch-size 64 --amp fp16 \
    --paths fused,fused+channels_last,fused+compile
  bench 8_768_fp16_opt_ins --model spikingformer_8_768 --batch-size 16 --amp fp16 \
    --paths fused,fused+channels_last,fused+compile
else
  bench dry_run --model spikingformer_cifar_4_384 --batch-size 2 --T 1 --img-size 16 --amp fp16 --warmup 0 --steps 1
fi

echo
"$PY" -m utils.gpu_report "$OUT" || STATUS=1
echo "gpu_check finished in $((SECONDS - START)) s, exit status $STATUS"
exit "$STATUS"
