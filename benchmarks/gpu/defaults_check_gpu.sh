#!/usr/bin/env bash
# After a default changes, in one call: every GPU op test (14 shards), the smoke suite's
# sections in SMOKE (default decode,store: decode at 1 x 1K and 8 x 16K over the codebooks, the
# store at 2,048 tokens with fused-turboquant from .whl where carried), with STORE_FULL=1 the
# full suite's store rows (32-65,536 tokens, fused-turboquant too) and, with TUNE=1, one run of
# both tune suites; everything packed into one check.tgz in $OUT.
#   bash benchmarks/gpu/defaults_check_gpu.sh COMMIT
set -uo pipefail
source benchmarks/gpu/card.sh "${1:?git sha of the measured commit}"
bash benchmarks/gpu/kernel_tests_parallel.sh "all-$gpu-$sha" "not no_such_test" 14 170
echo "== tests $(( $(date +%s) - start )) s"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 .whl/*.whl \
    > /dev/null 2>&1 || echo "peer wheels not installed"
PYTHONPATH=$PYTHONPATH:/tmp/site2:$(pwd)/benchmarks/gpu timeout 150 python3 \
    benchmarks/kernel_bench.py --suite smoke --only "${SMOKE:-decode,store}" \
    --out "$OUT/kernels-smoke-$gpu-$sha" \
    --git-sha "$sha" > "$OUT/log-smoke-$gpu-$sha.txt" 2>&1
echo "== smoke rc=$? $(( $(date +%s) - start )) s"
if [ -n "${STORE_FULL:-}" ]; then
  PYTHONPATH=$PYTHONPATH:/tmp/site2:$(pwd)/benchmarks/gpu timeout 150 python3 \
      benchmarks/kernel_bench.py --suite full --only store --out "$OUT/kernels-store-$gpu-$sha" \
      --git-sha "$sha" > "$OUT/log-store-$gpu-$sha.txt" 2>&1
  echo "== store rc=$? $(( $(date +%s) - start )) s"
fi
sections=""; [ -n "${TUNE:-}" ] && sections="tune_store tune"
for section in $sections; do
  timeout 100 python3 benchmarks/kernel_bench.py --suite tune --only "$section" \
      --out "$OUT/kernels-$section-$gpu-$sha" --git-sha "$sha" \
      > "$OUT/log-$section-$gpu-$sha.txt" 2>&1
  echo "== $section rc=$? $(( $(date +%s) - start )) s"
done
grep -hE "^\| (store|decode|prefill)" "$OUT"/kernels-*.md | grep -vE "flash|\+rotations" | cut -c1-120
cd "$OUT" && tar czf check.tgz ./*.txt ./*.json ./*.md && rm -f ./*.txt ./*.json ./*.md
