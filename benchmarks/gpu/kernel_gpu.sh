#!/usr/bin/env bash
# The decode kernel on the lent GPU, in one call: the lever sweep against bf16 (SDPA; FA3 over
# paged KV when vLLM is staged), ncu's stall reasons for the default and one variant at one
# shape, and the Triton op tests compiled for the GPU (with those only a GPU runs: inline PTX
# lookups and prefetch, CUDA-graph capture), optionally under compute-sanitizer.
#   bash benchmarks/gpu/kernel_gpu.sh COMMIT [NCU_VARIANT_FLAGS]
# e.g. `bash benchmarks/gpu/kernel_gpu.sh abc1234 "--tuning decode.lookup=6"`; NCU= skips ncu,
# NCU=variant profiles the variant only. SANITIZER=memcheck runs the op tests under
# `compute-sanitizer --tool memcheck` (PyTorch's caching allocator off, so every tensor is its
# own allocation and an access past its end is caught). The op tests alone took 254-342 s on an
# H200, hence TESTS_TIMEOUT's default of 360 s; they run last, so a timeout there costs no
# figure. Results land in $OUT.
set -uo pipefail
sha=${1:?git sha of the measured commit}
variant=${2:-${NCU_VARIANT:---prefetch 1}}
export PYTHONPATH=$(pwd)/packages/tq-core/src
# With vLLM staged (../shared/GPU.md), the sweep adds its bf16 baseline: FA3 over paged KV.
if [ -d /tmp/site/vllm ]; then export PYTHONPATH=$PYTHONPATH:/tmp/site; fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name())"
start=$(date +%s)
timeout 200 python3 benchmarks/decode_levers.py --out "$OUT/decode-levers" --git-sha "$sha" \
    ${SHAPES:+--shapes "$SHAPES"} > "$OUT/levers-log.txt" 2>&1
echo "== levers rc=$? $(( $(date +%s) - start )) s"
# WIDE=1: the register-cap sweep of K8V4, whose 8-bit keys spill at the default cap.
if [ -n "${WIDE:-}" ]; then
  timeout 150 python3 benchmarks/decode_levers.py --bits 8x4 --shapes 8x16384,32x16384,32x32768 \
      --out "$OUT/decode-levers-k8v4" --git-sha "$sha" > "$OUT/levers-k8v4-log.txt" 2>&1
  echo "== K8V4 levers rc=$? $(( $(date +%s) - start )) s"
fi
stalls=$(printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' barrier \
    long_scoreboard short_scoreboard wait math_pipe_throttle mio_throttle not_selected \
    selected lg_throttle dispatch_stall)
for name in ${NCU-default variant}; do
  flags=""; [ "$name" = variant ] && flags=$variant
  timeout 100 ncu -k regex:_attention_kernel --launch-skip 2 --launch-count 1 \
      --section SpeedOfLight --section SchedulerStats --section Occupancy \
      --section LaunchStats --section ComputeWorkloadAnalysis --metrics "${stalls%,}" \
      python3 benchmarks/decode_levers.py --ncu-target 8x16384 $flags > "$OUT/ncu-$name.txt" 2>&1
  echo "== ncu $name ($flags) rc=$? $(( $(date +%s) - start )) s"
done
grep -E "\| decode" "$OUT/decode-levers.md" | grep -E "16384|32768|1024" | cut -c1-120
tests=(packages/tq-core/tests/test_triton_ops.py packages/tq-core/tests/test_cuda.py)
if [ -n "${SANITIZER:-}" ]; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${TESTS_TIMEOUT:-360}" compute-sanitizer \
      --tool "$SANITIZER" --error-exitcode 9 --print-limit 100 \
      python3 -m pytest -v -p no:cacheprovider "${tests[@]}" > "$OUT/kernel-tests-$SANITIZER.txt" 2>&1
  echo "== tests under compute-sanitizer $SANITIZER rc=$? $(( $(date +%s) - start )) s"
  grep -E "ERROR SUMMARY|passed|failed" "$OUT/kernel-tests-$SANITIZER.txt" | tail -3
else
  timeout "${TESTS_TIMEOUT:-360}" python3 -m pytest -q -p no:cacheprovider "${tests[@]}" \
      > "$OUT/kernel-tests.txt" 2>&1
  echo "== tests rc=$? $(( $(date +%s) - start )) s"; tail -3 "$OUT/kernel-tests.txt"
fi
