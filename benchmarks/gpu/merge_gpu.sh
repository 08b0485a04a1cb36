#!/usr/bin/env bash
# The split merge's levers (at babecec merge_unroll 1/2/4/8, d78bbbf-10b3c47 merge_in_place; the
# in-kernel merge, programmatic launches, split counts) at 1-32 x 1-64K, then the decode section
# of the kernel suite at the commit's defaults, then the GPU decode/merge op tests, in one call.
# Results land in $OUT, named after the card.
#   bash benchmarks/gpu/merge_gpu.sh COMMIT
set -uo pipefail
sha=${1:?git sha of the measured commit}
export PYTHONPATH=$(pwd)/packages/tq-core/src:$(pwd)/integration-tests/conformance:$(pwd)/integration-tests/compat
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
gpu=$(echo "$card" | grep -q H200 && echo h200 || echo h100)
echo "$card"
start=$(date +%s)
timeout 150 python3 benchmarks/decode_levers.py --only "merge,programmatic,splits" \
    --shapes 1x1024,8x1024,8x16384,8x32768,8x65536,32x16384,32x32768 \
    --out "$OUT/decode-levers-merge-$gpu-$sha" --git-sha "$sha" \
    > "$OUT/levers-merge-log-$gpu-$sha.txt" 2>&1
echo "== levers rc=$? $(( $(date +%s) - start )) s"
grep -E "^\| decode" "$OUT/decode-levers-merge-$gpu-$sha.md" | cut -c1-120
timeout 220 python3 benchmarks/kernel_bench.py --suite full --only decode \
    --out "$OUT/kernels-decode-$gpu-$sha" --git-sha "$sha" > "$OUT/kernels-decode-log-$gpu-$sha.txt" 2>&1
echo "== decode suite rc=$? $(( $(date +%s) - start )) s"
grep -E "\| decode" "$OUT/kernels-decode-$gpu-$sha.md" | grep -E "llama3-8b \| (1|8|32) \|" | grep "K4V4 |" | cut -c1-110
timeout "${TESTS_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider -k "merge or decode or split" \
    packages/tq-core/tests/test_triton_ops.py > "$OUT/kernel-tests-merge-$gpu-$sha.txt" 2>&1
echo "== tests rc=$? $(( $(date +%s) - start )) s"; tail -3 "$OUT/kernel-tests-merge-$gpu-$sha.txt"
