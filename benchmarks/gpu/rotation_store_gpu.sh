#!/usr/bin/env bash
# One call: rotate=True's levers and probes (where the query is rotated, what each rotation
# costs, H from registers: kronecker_rotation) at 1-32 x 1-16K, the store's tune suite (prefetch_ahead among its settings), the
# rotation and store op tests in parallel shards, then SmolLM2's decode section of the suite.
# Results land in $OUT, named after the card.
#   bash benchmarks/gpu/rotation_store_gpu.sh COMMIT
source "$(dirname "$0")/card.sh" "$@"
log="$OUT/log-rotation-store-$gpu-$sha.txt"
SHAPES=${SHAPES:-1x1024,8x1024,1x4096,1x16384,8x4096,32x1024,8x16384,32x16384} TESTS=0 \
    bash benchmarks/gpu/query_rotation_gpu.sh "$sha" | sed 's/| decode | llama3-8b //' | cut -c1-120
rm -f "$OUT"/levers-query-rotation-log-*.txt
if [ "${STORE:-1}" = 1 ]; then
  timeout "${STORE_TIMEOUT:-150}" python3 benchmarks/kernel_bench.py --suite tune --only tune_store \
      --out "$OUT/kernels-tune-store-$gpu-$sha" --git-sha "$sha" >> "$log" 2>&1
  echo "== store tune rc=$? $(( $(date +%s) - start )) s"
  grep -E "^\| store" "$OUT/kernels-tune-store-$gpu-$sha.md" | cut -c1-120
  rm -f "$OUT/kernels-tune-store-$gpu-$sha.md"  # the JSON has every row; the .md is rewritten here
fi
bash benchmarks/gpu/kernel_tests_parallel.sh "rotation-store-$gpu-$sha" \
    "${TEST_EXPR:-rotat or halves or kronecker or store or graph}" 8 "${TESTS_TIMEOUT:-150}"
rm -f "$OUT"/kernel-tests-rotation-store-*-shard*.txt
echo "== tests $(( $(date +%s) - start )) s"
if [ "${SMOLLM2:-1}" = 1 ]; then
  timeout "${SUITE_TIMEOUT:-150}" python3 benchmarks/kernel_bench.py --suite full --only decode \
      --models smollm2 --out "$OUT/kernels-decode-smollm2-$gpu-$sha" --git-sha "$sha" >> "$log" 2>&1
  echo "== SmolLM2 decode rc=$? $(( $(date +%s) - start )) s"
  rm -f "$OUT/kernels-decode-smollm2-$gpu-$sha.md"
fi
