#!/usr/bin/env bash
# tq-sglang on the lent GPU: SGLang 0.5.17 (stage_sglang.sh here, unpack_sglang.sh there, into
# /tmp/sgsite) with the tq plugin from this checkout; one fresh engine per config.
#   bash benchmarks/gpu/sglang_gpu.sh COMMIT SPEC...
# SPEC is a config of benchmarks/sglang_throughput.py (bf16, bf16-eager, fp8, tq-k4v4, ...),
# measured on the Llama-3-8B-shaped model, or CONFIG:small for the greedy check on the small one.
# SCENARIOS (default 1024x512x256), TMO (seconds per spec, default 300), TP (tensor-parallel
# size, default 1) and PAGE (SGLang's page size, default 1) apply. Logs and JSON
# go to a work folder that is packed into $OUT/sglang-results.tgz after every spec ($OUT takes
# eight files at most), with the table in $OUT/table.md.
set -uo pipefail
sha=${1:?git sha of the measured commit}
shift
test -f /tmp/sgsite/env.sh || { echo "SGLang is not unpacked in /tmp/sgsite (stage it first)"; exit 3; }
source /tmp/sgsite/env.sh
root=$(pwd)
# SGLang finds plugins through entry points: a minimal dist-info puts tq-sglang's on the path.
dist=/tmp/tqsg/tq_sglang-0.1.0.dist-info
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: tq-sglang\nVersion: 0.1.0\n' > "$dist/METADATA"
printf '[sglang.srt.plugins]\ntq = tq_sglang:register\n' > "$dist/entry_points.txt"
export PYTHONPATH=/tmp/tqsg:$root/packages/tq-core/src:$root/packages/tq-sglang/src:$PYTHONPATH
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# The machine's rule (KINDS.md): NVLink multicast stays off, also in processes we start.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
work=/tmp/sglang-results
mkdir -p "$work"
for spec in "$@"; do
  config=${spec%%:*}
  small=""
  [ "$spec" != "$config" ] && small="--small"
  start=$(date +%s)
  timeout "${TMO:-300}" python3 benchmarks/sglang_throughput.py --config "$config" $small \
      --scenarios "${SCENARIOS:-1024x512x256}" --out "$work" --git-sha "$sha" --tp-size "${TP:-1}" \
      --page-size "${PAGE:-1}" \
      > "$work/log-$config${small:+-small}.txt" 2>&1
  echo "== $spec rc=$? $(( $(date +%s) - start )) s"
  grep -E "ENGINE|SCENARIO|Error|error|Traceback" "$work/log-$config${small:+-small}.txt" \
      | cut -c1-400 | tail -8
  tar -C "$work" -czf "$OUT/sglang-results.tgz" .
  # A spec killed by its timeout can leave scheduler processes holding the GPU's memory.
  pkill -9 -f "sglang_throughput.py|sglang::" 2>/dev/null; sleep 1
done
python3 benchmarks/sglang_throughput.py --table "$work" | tee "$OUT/table.md"
