#!/usr/bin/env bash
# tq-vllm on the lent GPU: vLLM 0.26.0 (staged per ../shared/GPU.md into /tmp/site) with the tq
# plugin from this checkout; one fresh engine per KV configuration.
#   bash benchmarks/gpu/vllm_gpu.sh COMMIT CONFIG...   (configs: see benchmarks/vllm_throughput.py)
# SCENARIOS (default: vllm_throughput.py's, enough requests to fill the cache; empty for none), TMO (seconds per config,
# default 420) and TP (tensor-parallel size, default 1) apply; PROFILE=INPUTxOUTPUTxREQUESTS
# adds a profiled scenario (kernel times per group; with SCENARIOS= empty, a profile-only engine);
# TESTS=PYTEST_PATHS runs those tests first (e.g. the tensor-parallel file on two GPUs). Logs and JSON go to a work folder packed into
# $OUT/vllm-results.tgz after every step ($OUT takes eight files at most), the table to
# $OUT/table.md. SLOT=N (set by vllm_gpus.sh, which runs one such script per GPU) keeps this
# run's work folder, model folder, vLLM compile cache and clean-up apart from the other GPUs'
# and leaves packing and the table to the caller; LABEL_SUFFIX names the rows (e.g. -lookup5
# for a run under TQ_TRITON_TUNING=decode.lookup=5).
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
# The machine's rule (KINDS.md): NVLink multicast stays off, also in the workers vLLM starts;
# vLLM's symmetric-memory all-reduce is left out with it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_ALLREDUCE_USE_SYMM_MEM=0
slot=${SLOT:-}
tag=tq-bench${slot:+-gpu$slot}
work=${WORK:-/tmp/vllm-results${slot:+-gpu$slot}}
mkdir -p "$work"
# Two engines on one host must not share vLLM's compile cache (same model, same hash).
if [ -n "$slot" ]; then export VLLM_CACHE_ROOT=/tmp/vllm-cache-gpu$slot; fi
pack() { if [ -z "$slot" ]; then tar -C "$work" -czf "$OUT/vllm-results.tgz" .; fi; }
# A run killed by its timeout can leave worker processes holding the GPU's memory: kill what
# this script started (its processes carry BENCH_TAG in their environment), nothing else.
reap() {
  local proc
  for proc in /proc/[0-9]*; do
    if { tr '\0' '\n' < "$proc/environ"; } 2>/dev/null | grep -qx "BENCH_TAG=$tag"; then
      kill -9 "${proc#/proc/}" 2>/dev/null
    fi
  done
  sleep 1
}
if [ -n "${TESTS:-}" ]; then
  start=$(date +%s)
  BENCH_TAG=$tag timeout "${TESTS_TMO:-400}" python3 -m pytest -q -s -p no:cacheprovider $TESTS \
      > "$work/tests-gpu.txt" 2>&1
  echo "== tests rc=$? $(( $(date +%s) - start )) s"
  grep -E "passed|failed|KV tokens|greedy equal|Error" "$work/tests-gpu.txt" | cut -c1-300 | tail -12
  pack; reap
fi
for config in "$@"; do
  start=$(date +%s)
  label=$config${LABEL_SUFFIX:-}
  log="$work/log-$label${PROFILE:+-profile}.txt"
  BENCH_TAG=$tag timeout "${TMO:-420}" python3 benchmarks/vllm_throughput.py \
      --config "$config" --label "$label" --model-dir "/tmp/llama3-8b-shape${slot:+-gpu$slot}" \
      ${SCENARIOS+--scenarios "$SCENARIOS"} --out "$work" --git-sha "$sha" \
      --tensor-parallel-size "${TP:-1}" ${PROFILE:+--profile "$PROFILE"} > "$log" 2>&1
  echo "== ${slot:+gpu$slot }$label rc=$? $(( $(date +%s) - start )) s"
  grep -E "ENGINE|SCENARIO|LAYERS|tq-vllm:|CUDAGraphMode|cudagraph|Graph capturing finished|Error|error" \
      "$log" | grep -v "^ *$" | cut -c1-300 | tail -12
  grep -E "^PROFILE" "$log" | cut -c1-3000
  pack; reap
done
if [ $# -gt 0 ] && [ -z "$slot" ]; then python3 benchmarks/vllm_throughput.py --table "$work" | tee "$OUT/table.md"; fi
