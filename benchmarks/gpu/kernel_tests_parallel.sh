#!/usr/bin/env bash
# The GPU op tests selected by a -k expression, in N pytest processes at once (round-robin
# shards of the collected test ids): most of a GPU test's time is Triton compiling on the CPU,
# and the lent machine has 16 cores, so shards finish a selection in a fraction of one
# process's time. Logs land in $OUT as kernel-tests-NAME-shardI.txt, a summary on stdout.
#   bash benchmarks/gpu/kernel_tests_parallel.sh NAME "K-EXPRESSION" [SHARDS] [TIMEOUT_S]
set -uo pipefail
name=${1:?name for the logs}
expression=${2:?pytest -k expression}
shards=${3:-6}
limit=${4:-400}
export PYTHONPATH=$(pwd)/packages/tq-core/src:$(pwd)/integration-tests/conformance:$(pwd)/integration-tests/compat
tests=packages/tq-core/tests/test_triton_ops.py
list=$(mktemp)
python3 -m pytest -q --collect-only -p no:cacheprovider -k "$expression" "$tests" \
    | grep "::" | sed 's#^tests/#packages/tq-core/tests/#' > "$list"  # ids relative to tq-core
echo "$(wc -l < "$list") tests in $shards shards"
# SANITIZER=memcheck (or another compute-sanitizer tool) runs each shard under it, with
# PyTorch's caching allocator off so an access past a tensor's end is caught.
wrapper=(env)
if [ -n "${SANITIZER:-}" ]; then
  wrapper=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$SANITIZER"
           --error-exitcode 9 --print-limit 100)
fi
for ((i = 0; i < shards; i++)); do
    mapfile -t ids < <(awk -v n="$shards" -v i="$i" '(NR - 1) % n == i' "$list")
    # A shard with no ids would make pytest collect every package's tests (c0519c2's call).
    [ "${#ids[@]}" -eq 0 ] && continue
    timeout "$limit" "${wrapper[@]}" python3 -m pytest -v -rf -p no:cacheprovider "${ids[@]}" \
        > "$OUT/kernel-tests-$name-shard$i.txt" 2>&1 &
done
wait
cat "$OUT"/kernel-tests-"$name"-shard*.txt > "$OUT/kernel-tests-$name.txt"
echo "passed $(grep -c ' PASSED' "$OUT/kernel-tests-$name.txt"), skipped $(grep -c ' SKIPPED' "$OUT/kernel-tests-$name.txt"), failed $(grep -c ' FAILED' "$OUT/kernel-tests-$name.txt") of $(wc -l < "$list")"
grep -E "^FAILED|^ERROR" "$OUT/kernel-tests-$name.txt" | head -20
grep -h "ERROR SUMMARY" "$OUT"/kernel-tests-"$name"-shard*.txt
for f in "$OUT"/kernel-tests-"$name"-shard*.txt; do tail -1 "$f"; done
# The device tool brings back at most 8 files from $OUT: the joined log above holds every
# shard's, so the shard logs go (KEEP_SHARDS=1 keeps them).
if [ -z "${KEEP_SHARDS:-}" ]; then
    rm -f "$OUT"/kernel-tests-"$name"-shard*.txt
fi
