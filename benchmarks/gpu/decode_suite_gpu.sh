#!/usr/bin/env bash
# The decode section of the kernel suite at a commit's defaults, in one call: all three model
# shapes (rotated domain, +rotations, rotate=True); the small- and large-head shapes again under
# EXTRA_TUNING (a candidate for their prefixed settings, e.g.
# "decode.small_head_num_stages=3,decode.small_head_prefetch=0"); the short-context rotate=True
# levers LEVERS names (decode_levers.py --only); then the GPU op tests.
#   bash benchmarks/gpu/decode_suite_gpu.sh COMMIT
# Results land in $OUT.
set -uo pipefail
sha=${1:?git sha of the measured commit}
export PYTHONPATH=$(pwd)/packages/tq-core/src
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name())"
start=$(date +%s)
timeout 200 python3 benchmarks/kernel_bench.py --suite full --only decode \
    --out "$OUT/kernels-decode" --git-sha "$sha" > "$OUT/kernels-decode-log.txt" 2>&1
echo "== decode suite rc=$? $(( $(date +%s) - start )) s"
if [ -n "${EXTRA_TUNING:-}" ]; then
  TQ_TRITON_TUNING=$EXTRA_TUNING timeout 120 python3 benchmarks/kernel_bench.py --suite full \
      --only decode --models smollm2,gemma2-9b --out "$OUT/kernels-decode-extra" \
      --git-sha "$sha" > "$OUT/kernels-decode-extra-log.txt" 2>&1
  echo "== decode suite under $EXTRA_TUNING rc=$? $(( $(date +%s) - start )) s"
fi
if [ -n "${LEVERS:-}" ]; then
  timeout 120 python3 benchmarks/decode_levers.py --rotate --only "$LEVERS" \
      --shapes "${LEVER_SHAPES:-1x1024,8x1024,32x1024,1x4096,8x4096}" \
      --out "$OUT/decode-levers-rotate" --git-sha "$sha" > "$OUT/levers-rotate-log.txt" 2>&1
  echo "== rotate=True levers rc=$? $(( $(date +%s) - start )) s"
fi
timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider \
    packages/tq-core/tests/test_triton_ops.py packages/tq-core/tests/test_cuda.py \
    > "$OUT/kernel-tests.txt" 2>&1
echo "== tests rc=$? $(( $(date +%s) - start )) s"; tail -3 "$OUT/kernel-tests.txt"
grep -E "\| decode" "$OUT/kernels-decode.md" | grep -E "llama3-8b \| (1|8|32) \|" | cut -c1-110
