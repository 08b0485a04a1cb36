#!/usr/bin/env bash
# Stage the peer TurboQuant kernels that benchmarks/gpu/peers.py calls, for a
# GPU machine with no network (Python 3.12, torch, triton, numpy, scipy there).
# Run here, from the repo root; needs network and pip, uses no GPU.
#
#   .whl/                    turboquant-vllm 1.5.0 and fused-turboquant 0.1.0
#                            (pure-Python wheels; their other requirements are
#                            either in the GPU image or not used by peers.py)
#   .devstage/vllm_tq/vllm/  the five files of vLLM 0.26.0 that its TurboQuant
#                            Triton decode needs, extracted from the ~300 MB wheel
#                            (kept out of the repo; peers.py adds stand-ins for
#                            vllm.platforms and vllm.triton_utils)
#
# On the GPU machine: carry .whl and .devstage/vllm_tq, then
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

# The vLLM wheel is only a source of five files: keep it outside the repo so it
# never travels, and reuse it across runs.
CACHE=${TQ_STAGE_CACHE:-/tmp/tq-stage-cache}
VLLM_VERSION=0.26.0
VLLM_FILES=(
    vllm/v1/attention/ops/triton_turboquant_decode.py  # the decode kernel + launcher
    vllm/v1/attention/ops/triton_decode_attention.py   # its stage-2 (split reduce) kernel
    vllm/v1/attention/ops/triton_turboquant_store.py   # the store kernel that fills the cache
    vllm/model_executor/layers/quantization/turboquant/centroids.py  # Lloyd-Max centroids
    vllm/model_executor/layers/quantization/turboquant/config.py     # presets, slot layout
)

exclude=.git/info/exclude
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for p in /.whl/ /.devstage/; do
    grep -qxF "$p" "$exclude" || echo "$p" >>"$exclude"
done

# Wheels for CPython 3.12 on x86-64 Linux; both peers are py3-none-any, so
# "any" must be among the platforms pip accepts.
PIP_DL=(python3 -m pip download -q --no-deps --only-binary=:all:
        --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux1_x86_64 --platform any)
mkdir -p .whl
"${PIP_DL[@]}" -d .whl turboquant-vllm==1.5.0 fused-turboquant==0.1.0

dest=.devstage/vllm_tq
have_all=1
for f in "${VLLM_FILES[@]}"; do [[ -s $dest/$f ]] || have_all=0; done
if [[ $have_all == 0 ]]; then
    mkdir -p "$CACHE"
    wheel=$(ls "$CACHE"/vllm-"$VLLM_VERSION"-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z $wheel ]]; then
        "${PIP_DL[@]}" -d "$CACHE" "vllm==$VLLM_VERSION"
        wheel=$(ls "$CACHE"/vllm-"$VLLM_VERSION"-*.whl | head -n1)
    fi
    rm -rf "$dest"
    mkdir -p "$dest"
    unzip -q -o "$wheel" "${VLLM_FILES[@]}" -d "$dest"
    echo "vllm==$VLLM_VERSION from $(basename "$wheel")" >"$dest/SOURCE"
fi

ls -l .whl "$dest"
find "$dest" -type f | sort
echo "total staged: $(du -sch .whl "$dest" | tail -n1 | cut -f1)"
