#!/usr/bin/env bash
# ncu on the store at one size for the default and each TUNING override set given, one report
# each (speed of light, scheduler, warp states, memory, stall reasons), then the reports' key
# lines.   bash benchmarks/gpu/store_ncu_gpu.sh COMMIT TOKENS [OVERRIDES ...]
# e.g. bash benchmarks/gpu/store_ncu_gpu.sh abc1234 65536 "binary_search=0,byte_squares=0"
# Results land in $OUT (ncu-store-TOKENS-N.txt, N = 0 for the default).
set -uo pipefail
sha=${1:?git sha}; tokens=${2:?tokens}; shift 2
export PYTHONPATH=$(pwd)/packages/tq-core/src
i=0
for overrides in "" "$@"; do
  report="$OUT/ncu-store-$tokens-$i.txt"
  echo "# store at $tokens tokens, commit $sha, TUNING overrides: ${overrides:-none}" > "$report"
  timeout 150 ncu -k regex:_store_kernel --launch-skip 2 --launch-count 1 \
      --section SpeedOfLight --section SchedulerStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      python3 benchmarks/store_ncu_target.py "$tokens" --tuning "$overrides" >> "$report" 2>&1
  echo "== $i (${overrides:-default}) rc=$?"
  grep -E "Duration|Issued Warp|Eligible Warps|Active Warps|Memory Throughput|DRAM Throughput|L1/TEX Cache|Registers Per|Achieved Occupancy|Stall|Warp Cycles Per Issued" "$report" | head -20
  i=$((i + 1))
done
