#!/usr/bin/env bash
# Several KV configurations at once, one GPU each, on one host: a one-session table in the time
# of the slowest GPU's share (the lent multi-GPU machines count their time, not their GPUs').
#   bash benchmarks/gpu/vllm_gpus.sh COMMIT "CONFIGS FOR GPU 0" "CONFIGS FOR GPU 1" ...
# A GPU's string holds configs (run one after another by vllm_gpu.sh, see there), optionally led
# by VAR=VALUE settings for that GPU alone, e.g.
#   "TQ_TRITON_TUNING=decode.lookup=5 LABEL_SUFFIX=-lookup5 tq-k4v4"
# The string "kernel" runs kernel_gpu.sh on its GPU instead (NCU_VARIANT=--lookup=5 picks the
# variant ncu profiles). Results gather in /tmp/gpu-slots, packed into $OUT/gpu-slots.tgz every
# 30 s and at the end (what a timeout leaves still comes back); the table of every vLLM row goes
# to $OUT/table.md.
set -uo pipefail
sha=${1:?git sha of the measured commit}
shift
slots=/tmp/gpu-slots
mkdir -p "$slots"
pack() { tar -C /tmp -czf "$OUT/gpu-slots.tgz" gpu-slots; }
pids=()
gpu=0
for spec in "$@"; do
  settings=() configs=()
  for word in $spec; do
    if [[ $word == *=* ]]; then settings+=("$word"); else configs+=("$word"); fi
  done
  dir=$slots/gpu$gpu
  mkdir -p "$dir"
  if [ "${configs[*]}" = kernel ]; then
    env "${settings[@]}" CUDA_VISIBLE_DEVICES=$gpu OUT="$dir" \
        bash benchmarks/gpu/kernel_gpu.sh "$sha" > "$dir/stdout.txt" 2>&1 &
  else
    env "${settings[@]}" CUDA_VISIBLE_DEVICES=$gpu SLOT=$gpu WORK="$dir" \
        bash benchmarks/gpu/vllm_gpu.sh "$sha" "${configs[@]}" > "$dir/stdout.txt" 2>&1 &
  fi
  pids+=($!)
  echo "gpu$gpu: ${settings[*]} ${configs[*]} (pid $!)"
  gpu=$((gpu + 1))
done
start=$(date +%s)
while [ -n "$(jobs -rp)" ]; do
  sleep 30
  pack
  echo "-- $(( $(date +%s) - start )) s: $(jobs -r | wc -l) GPU(s) still busy"
done
wait
for dir in "$slots"/gpu*; do echo "=== ${dir##*/}"; cat "$dir/stdout.txt"; done
python3 benchmarks/vllm_throughput.py --table "$slots" | tee "$OUT/table.md"
pack
