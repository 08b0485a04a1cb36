#!/usr/bin/env bash
# One call for a tuning round: the GPU op tests selected by TESTS (a pytest -k expression;
# default the store's), the store's tune suite and the decode tune suite (kernel_bench.py
# --suite tune; SECTIONS="tune_store" for the store's alone), RUNS times each (default 2: a
# setting is made default only on a repeated result), then everything in $OUT packed into
# one tune.tgz (the device tool brings back at most 8 files).
#   bash benchmarks/gpu/tune_gpu.sh COMMIT
set -uo pipefail
source benchmarks/gpu/card.sh "${1:?git sha of the measured commit}"
bash benchmarks/gpu/kernel_tests_parallel.sh "tune-$gpu-$sha" "${TESTS:-store or compander}" 14 100
echo "== tests $(( $(date +%s) - start )) s"
for run in $(seq 1 "${RUNS:-2}"); do
  for section in ${SECTIONS:-tune_store tune}; do
    timeout 110 python3 benchmarks/kernel_bench.py --suite tune --only "$section" \
        --out "$OUT/kernels-$section-run$run-$gpu-$sha" --git-sha "$sha" \
        > "$OUT/log-$section-run$run-$gpu-$sha.txt" 2>&1
    echo "== $section run $run rc=$? $(( $(date +%s) - start )) s"
  done
done
grep -hE "^\| (store|decode)" "$OUT"/kernels-*run1*.md | cut -c1-130
cd "$OUT" && tar czf tune.tgz ./*.txt ./*.json ./*.md && rm -f ./*.txt ./*.json ./*.md
