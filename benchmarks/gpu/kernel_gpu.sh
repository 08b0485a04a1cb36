#!/usr/bin/env bash
# The decode kernel on the lent GPU, in one call: the Triton op tests compiled for the GPU (with
# those only a GPU runs: inline PTX lookups and prefetch, CUDA-graph capture), the lever sweep
# against bf16 (SDPA; FA3 over paged KV when vLLM is staged), and ncu's stall reasons for the
# default and one variant at one shape.
#   bash benchmarks/gpu/kernel_gpu.sh COMMIT [NCU_VARIANT_FLAGS]
# e.g. `bash benchmarks/gpu/kernel_gpu.sh abc1234 "--prefetch 1"`; NCU= skips ncu. The op tests
# alone took 254 s on an H200, hence their 330 s. Results land in $OUT.
set -uo pipefail
sha=${1:?git sha of the measured commit}
variant=${2:-${NCU_VARIANT:---prefetch 1}}
export PYTHONPATH=$(pwd)/packages/tq-core/src
# With vLLM staged (../shared/GPU.md), the sweep adds its bf16 baseline: FA3 over paged KV.
if [ -d /tmp/site/vllm ]; then export PYTHONPATH=$PYTHONPATH:/tmp/site; fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name())"
start=$(date +%s)
timeout 330 python3 -m pytest -q -p no:cacheprovider packages/tq-core/tests/test_triton_ops.py \
    packages/tq-core/tests/test_cuda.py > "$OUT/kernel-tests.txt" 2>&1
echo "== tests rc=$? $(( $(date +%s) - start )) s"; tail -3 "$OUT/kernel-tests.txt"
timeout 200 python3 benchmarks/decode_levers.py --out "$OUT/decode-levers" --git-sha "$sha" \
    > "$OUT/levers-log.txt" 2>&1
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
      --section LaunchStats --metrics "${stalls%,}" \
      python3 benchmarks/decode_levers.py --ncu-target 8x16384 $flags > "$OUT/ncu-$name.txt" 2>&1
  echo "== ncu $name ($flags) rc=$? $(( $(date +%s) - start )) s"
done
grep -E "\| decode" "$OUT/decode-levers.md" | grep -E "16384|32768|1024" | cut -c1-120
