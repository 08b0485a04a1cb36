#!/usr/bin/env bash
# tq-vllm on the lent GPU: vLLM 0.26.0 (staged per ../shared/GPU.md into /tmp/site) with the tq
# plugin from this checkout; one fresh engine per KV configuration; JSON + logs land in $OUT.
#   bash benchmarks/gpu/vllm_gpu.sh COMMIT CONFIG...   (configs: see benchmarks/vllm_throughput.py)
# SCENARIOS (default 1024x512x256,8192x512x64) and TMO (seconds per config, default 420) apply.
set -uo pipefail
sha=${1:?git sha of the measured commit}
shift
test -d /tmp/site/vllm || { echo "vLLM is not staged in /tmp/site (stage it first)"; exit 3; }
root=$(pwd)
# vLLM finds plugins through entry points: a minimal dist-info puts tq-vllm's on the path.
dist=/tmp/tqsite/tq_vllm-0.1.0.dist-info
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: tq-vllm\nVersion: 0.1.0\n' > "$dist/METADATA"
printf '[vllm.general_plugins]\ntq = tq_vllm:register\n' > "$dist/entry_points.txt"
export PYTHONPATH=/tmp/tqsite:$root/packages/tq-core/src:$root/packages/tq-vllm/src:/tmp/site
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1
# apply_model (which layers tq serves) sends a function to the worker, which needs pickle.
export VLLM_ALLOW_INSECURE_SERIALIZATION=1
for config in "$@"; do
  start=$(date +%s)
  timeout "${TMO:-420}" python3 benchmarks/vllm_throughput.py --config "$config" \
      --scenarios "${SCENARIOS:-1024x512x256,8192x512x64}" --out "$OUT" --git-sha "$sha" \
      > "$OUT/log-$config.txt" 2>&1
  echo "== $config rc=$? $(( $(date +%s) - start )) s"
  grep -E "ENGINE|SCENARIO|LAYERS|tq-vllm:|CUDAGraphMode|cudagraph|Graph capturing finished|Error|error" \
      "$OUT/log-$config.txt" | grep -v "^ *$" | cut -c1-300 | tail -12
done
python3 benchmarks/vllm_throughput.py --table "$OUT" | tee "$OUT/table.md"
