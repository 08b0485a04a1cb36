#!/usr/bin/env bash
# After a change to the split merge: the decode section of the kernel suite for SmolLM2's shape
# (head_dim 64, where the merge's tile shape differs most from Llama-3-8B's), then the merge and
# decode op tests under compute-sanitizer memcheck in parallel shards, in one call.
#   bash benchmarks/gpu/merge_check_gpu.sh COMMIT
# Results land in $OUT, named after the card.
source "$(dirname "$0")/card.sh" "$@"
# The SmolLM2 rows compare with an H100 suite (kernels-decode-h100-1140488): H100 only.
[ "$gpu" = h100 ] && timeout 150 python3 benchmarks/kernel_bench.py --suite full --only decode --models smollm2 \
    --out "$OUT/kernels-decode-smollm2-$gpu-$sha" --git-sha "$sha" \
    > "$OUT/kernels-decode-smollm2-log-$gpu-$sha.txt" 2>&1
echo "== SmolLM2 decode rc=$? $(( $(date +%s) - start )) s"
grep -E "\| decode" "$OUT/kernels-decode-smollm2-$gpu-$sha.md" | grep -E "\| (32|128) \| 1024 \|" | cut -c1-110
SANITIZER=memcheck bash benchmarks/gpu/kernel_tests_parallel.sh "memcheck-merge-$gpu-$sha" \
    "${MEMCHECK_TESTS:-merge or decode_matches or per_key_mask}" 8 "${MEMCHECK_TIMEOUT:-300}"
rm -f "$OUT"/kernel-tests-memcheck-*-shard*.txt
echo "== memcheck $(( $(date +%s) - start )) s"
