#!/usr/bin/env bash
# rotate=True with the query rotated by each attention program (short splits) against the
# rotation launch, at 1-128 x 1-16K, then the rotation, merge and decode op tests in parallel
# shards, in one call. Results land in $OUT, named after the card.
#   bash benchmarks/gpu/query_rotation_gpu.sh COMMIT
source "$(dirname "$0")/card.sh" "$@"
timeout "${LEVERS_TIMEOUT:-240}" python3 benchmarks/decode_levers.py --rotate --only "${ONLY:-in-kernel query,probe: rotate=True,probe: the rotated}" \
    --shapes "${SHAPES:-1x1024,8x1024,32x1024,128x1024,1x4096,8x4096,1x16384,8x16384}" \
    --out "$OUT/decode-levers-query-rotation-$gpu-$sha" --git-sha "$sha" \
    > "$OUT/levers-query-rotation-log-$gpu-$sha.txt" 2>&1
echo "== rotate=True levers rc=$? $(( $(date +%s) - start )) s"
grep -E "^\| decode" "$OUT/decode-levers-query-rotation-$gpu-$sha.md" | cut -c1-150
if [ "${TESTS:-1}" = 1 ]; then
  bash benchmarks/gpu/kernel_tests_parallel.sh "query-rotation-$gpu-$sha" \
      "${TEST_EXPR:-rotat or halves or merge or decode_matches or graph}" 8 "${TESTS_TIMEOUT:-200}"
  rm -f "$OUT"/kernel-tests-query-rotation-*-shard*.txt
  echo "== tests $(( $(date +%s) - start )) s"
fi
