#!/usr/bin/env bash
# One call: the GPU store and gather_kv tests (TESTS, a pytest -k filter, narrows them; raw_dot
# 1 and the register lookup run only on a GPU), the store's tuning sweep, then the store,
# prefill and decompress sections of the full suite with the peer wheels staged by stage.sh
# (carry .whl and .devstage/vllm_tq).
#   bash benchmarks/gpu/store_prefill_gpu.sh COMMIT
# Results land in $OUT.
set -uo pipefail
sha=${1:?git sha of the measured commit}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    > /dev/null 2>&1 || echo "peer wheels not installed"
export PYTHONPATH=$(pwd)/packages/tq-core/src:/tmp/site:$(pwd)/benchmarks/gpu
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name())"
start=$(date +%s)
timeout "${TESTS_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider \
    -k "${TESTS:-store or gather}" packages/tq-core/tests/test_triton_ops.py \
    > "$OUT/kernel-tests-store.txt" 2>&1
echo "== store and gather_kv tests rc=$? $(( $(date +%s) - start )) s"
tail -3 "$OUT/kernel-tests-store.txt"
timeout 150 python3 benchmarks/kernel_bench.py --suite tune --only tune_store \
    --out "$OUT/kernels-tune-store" --git-sha "$sha" > "$OUT/tune-store-log.txt" 2>&1
echo "== store sweep rc=$? $(( $(date +%s) - start )) s"
grep -E "store" "$OUT/tune-store-log.txt" | head -30
timeout 200 python3 benchmarks/kernel_bench.py --suite full --only store,prefill,decompress \
    --out "$OUT/kernels-store-prefill" --git-sha "$sha" > "$OUT/store-prefill-log.txt" 2>&1
echo "== store, prefill, decompress rc=$? $(( $(date +%s) - start )) s"
grep -E "^\| (store|prefill|decompress)" "$OUT/kernels-store-prefill.md"
