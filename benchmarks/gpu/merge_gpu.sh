#!/usr/bin/env bash
# The split merge's levers (its splits per round, the in-kernel merge, programmatic launches,
# split counts) at 1-32 x 1-64K, rotate=True levers at 1-8 x 1-4K (ROTATE_LEVERS, optional),
# each launch's time from the profiler, the decode section of the kernel suite at the commit's
# defaults, then the GPU op tests in parallel shards, in one call.
# Results land in $OUT, named after the card.
#   bash benchmarks/gpu/merge_gpu.sh COMMIT
source "$(dirname "$0")/card.sh" "$@"
timeout "${LEVERS_TIMEOUT:-170}" python3 benchmarks/decode_levers.py --only "${LEVERS:-merge,programmatic,splits}" \
    --shapes 1x1024,8x1024,8x16384,8x32768,8x65536,32x16384,32x32768 \
    --out "$OUT/decode-levers-merge-$gpu-$sha" --git-sha "$sha" \
    > "$OUT/levers-merge-log-$gpu-$sha.txt" 2>&1
echo "== levers rc=$? $(( $(date +%s) - start )) s"
grep -E "^\| decode" "$OUT/decode-levers-merge-$gpu-$sha.md" | cut -c1-120
if [ -n "${ROTATE_LEVERS:-}" ]; then
  timeout 90 python3 benchmarks/decode_levers.py --rotate --only "$ROTATE_LEVERS" \
      --shapes 1x1024,8x1024,1x4096 --out "$OUT/decode-levers-rotate-$gpu-$sha" --git-sha "$sha" \
      >> "$OUT/levers-merge-log-$gpu-$sha.txt" 2>&1
  echo "== rotate=True levers rc=$? $(( $(date +%s) - start )) s"
  grep -E "^\| decode" "$OUT/decode-levers-rotate-$gpu-$sha.md" | cut -c1-120
fi
timeout 60 python3 benchmarks/decode_kernel_times.py --out "$OUT/decode-kernel-times-$gpu-$sha" \
    --git-sha "$sha" >> "$OUT/levers-merge-log-$gpu-$sha.txt" 2>&1
echo "== kernel times rc=$? $(( $(date +%s) - start )) s"
grep -E "^\|" "$OUT/decode-kernel-times-$gpu-$sha.md" | cut -c1-140
timeout "${SUITE_TIMEOUT:-200}" python3 benchmarks/kernel_bench.py --suite full --only decode \
    --out "$OUT/kernels-decode-$gpu-$sha" --git-sha "$sha" > "$OUT/kernels-decode-log-$gpu-$sha.txt" 2>&1
echo "== decode suite rc=$? $(( $(date +%s) - start )) s"
grep -E "\| decode" "$OUT/kernels-decode-$gpu-$sha.md" | grep -E "llama3-8b \| (1|8|32) \|" | grep "K4V4 |" | cut -c1-110
if [ "${TESTS:-1}" = 1 ]; then
  bash benchmarks/gpu/kernel_tests_parallel.sh "merge-$gpu-$sha" "merge or decode or split or graph" 8 \
      "${TESTS_TIMEOUT:-150}"
  rm -f "$OUT"/kernel-tests-merge-*-shard*.txt
  echo "== tests $(( $(date +%s) - start )) s"
fi
