#!/usr/bin/env bash
# tq-hf on the lent GPU: its CUDA tests (Triton kernels under transformers) and the
# generation benchmark. Stage first, here (network, no GPU):
#   mkdir -p .whl-hf && pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 --platform any -d .whl-hf \
#     transformers==5.19.0 tokenizers==0.23.3 safetensors==0.8.0
# (the image's huggingface-hub is used: 2.x from PyPI needs httpx2, which it lacks)
# then run this there with `carry: [".whl-hf"]`; results land in $OUT.
#   bash benchmarks/gpu/hf_gpu.sh COMMIT [SUITE]
set -uo pipefail
sha=${1:?git sha of the measured commit}
suite=${2:-full}
root=$(pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/hfsite .whl-hf/*.whl
export PYTHONPATH=/tmp/hfsite:$root/packages/tq-core/src:$root/packages/tq-hf/src
python3 -c "import transformers, torch, triton; print('transformers', transformers.__version__, \
'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
# The CUDA tests: random-weight Gemma 2/3 with sliding windows and padding, on the Triton path.
python3 -m pytest -q -rs -s -m gpu packages/tq-hf/tests/test_sliding_window.py \
    2>&1 | tee "$OUT/hf-tests-gpu.txt"
python3 benchmarks/hf_generate.py --suite "$suite" --out "$OUT/hf-generate" --git-sha "$sha"
