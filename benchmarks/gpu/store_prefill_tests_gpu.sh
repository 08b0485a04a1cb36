#!/usr/bin/env bash
# One call: the store sweep and the store, prefill and decompress sections of the full suite
# (peers staged by stage.sh: carry .whl and .devstage/vllm_tq), then the GPU op tests
# (test_triton_ops.py and test_cuda.py; all 284 took over 420 s on an H200, so TESTS, a pytest
# -k filter, narrows them, e.g. TESTS="store or gather").
#   bash benchmarks/gpu/store_prefill_tests_gpu.sh COMMIT
# Results land in $OUT.
set -uo pipefail
sha=${1:?git sha of the measured commit}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    > /dev/null 2>&1 || echo "peer wheels not installed"
export PYTHONPATH=$(pwd)/packages/tq-core/src:/tmp/site:$(pwd)/benchmarks/gpu
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name())"
start=$(date +%s)
timeout 200 python3 benchmarks/kernel_bench.py --suite tune --only tune_store \
    --out "$OUT/kernels-tune-store" --git-sha "$sha" > "$OUT/tune-store-log.txt" 2>&1
echo "== store sweep rc=$? $(( $(date +%s) - start )) s"
grep -E "store" "$OUT/tune-store-log.txt" | grep -v "^| store" | head -40
timeout 80 python3 benchmarks/kernel_bench.py --suite full --only store,prefill,decompress \
    --out "$OUT/kernels-store-prefill" --git-sha "$sha" > "$OUT/store-prefill-log.txt" 2>&1
echo "== store, prefill, decompress rc=$? $(( $(date +%s) - start )) s"
grep -E "^\| (store|prefill|decompress)" "$OUT/kernels-store-prefill.md" | cut -c1-120
timeout "${TESTS_TIMEOUT:-420}" python3 -m pytest -q -p no:cacheprovider ${TESTS:+-k "$TESTS"} \
    packages/tq-core/tests/test_triton_ops.py packages/tq-core/tests/test_cuda.py \
    > "$OUT/kernel-tests.txt" 2>&1
echo "== op tests rc=$? $(( $(date +%s) - start )) s"; tail -5 "$OUT/kernel-tests.txt"
