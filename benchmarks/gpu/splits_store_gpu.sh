#!/usr/bin/env bash
# One call: the decode kernel at explicit split counts and under the affine-nibble probe
# (decode_levers.py --splits / --only probe), the store's tuning sweep (row blocks, warps,
# columns, butterflies), then the GPU store and CUDA-graph tests.
#   bash benchmarks/gpu/splits_store_gpu.sh COMMIT
# SPLITS and SHAPES override the split counts and shapes. Results land in $OUT.
set -uo pipefail
sha=${1:?git sha of the measured commit}
export PYTHONPATH=$(pwd)/packages/tq-core/src
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name())"
start=$(date +%s)
timeout 240 python3 benchmarks/decode_levers.py --only probe --splits "${SPLITS:-2,4,8,12,16}" \
    --shapes "${SHAPES:-8x16384,8x32768,32x16384,32x32768,128x32768}" \
    --out "$OUT/decode-levers-splits" --git-sha "$sha" > "$OUT/levers-splits-log.txt" 2>&1
echo "== split and probe levers rc=$? $(( $(date +%s) - start )) s"
grep -E "splits|probe|default" "$OUT/levers-splits-log.txt" | head -60
timeout 150 python3 benchmarks/kernel_bench.py --suite tune --only tune_store \
    --out "$OUT/kernels-tune-store" --git-sha "$sha" > "$OUT/tune-store-log.txt" 2>&1
echo "== store sweep rc=$? $(( $(date +%s) - start )) s"
grep -E "store" "$OUT/tune-store-log.txt" | head -20
timeout "${TESTS_TIMEOUT:-170}" python3 -m pytest -q -p no:cacheprovider -k "store or graph" \
    packages/tq-core/tests/test_triton_ops.py packages/tq-core/tests/test_cuda.py \
    > "$OUT/kernel-tests-store-graph.txt" 2>&1
echo "== store and graph tests rc=$? $(( $(date +%s) - start )) s"; tail -3 "$OUT/kernel-tests-store-graph.txt"
