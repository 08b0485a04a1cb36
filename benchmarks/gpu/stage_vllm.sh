#!/usr/bin/env bash
# Stage vLLM 0.26.0 for the lent GPU (runs HERE, no device time, ~6 min): ../shared/gpu's recipe
# with two changes that this machine needs, then the chunks to carry.
#  - its `pip install --target` unpacks cp312 wheels, which pip refuses under Python 3.11 unless
#    told the target interpreter: the recipe's own platform flags ($PLAT) go on that line too;
#  - its 60 MiB chunks plus the checkout (~6 MB) exceed the 64 MiB a call carries: 50 MiB chunks
#    (four calls).
#   bash benchmarks/gpu/stage_vllm.sh     # prints A for unpack.sh; chunks in .devstage/parts
# Then, chained (the machine keeps /tmp 30 s after a call), for each chunk X in aa ab ac ad:
#   here:   rm -rf .devstage/c; mkdir -p .devstage/c; mv .devstage/parts/part.X .devstage/c/
#   device: mkdir -p /tmp/stage && mv .devstage/c/part.* /tmp/stage/        (carry .devstage/c)
# and in the last call `bash .devstage/gpu-recipe/unpack.sh A` (carry .devstage/gpu-recipe too)
# before the run, e.g. benchmarks/gpu/vllm_gpu.sh.
set -euo pipefail
root=$(pwd)
grep -qx "/.devstage/" .git/info/exclude 2>/dev/null || echo /.devstage/ >> .git/info/exclude
rm -rf .devstage/gpu-recipe && mkdir -p .devstage && cp -r ../shared/gpu .devstage/gpu-recipe
chmod -R u+w .devstage/gpu-recipe
sed -i 's|pip install -q --no-index --no-deps --no-compile --target|pip install -q --no-index --no-deps --no-compile $PLAT --target|' \
    .devstage/gpu-recipe/stage_vllm.sh
bash .devstage/gpu-recipe/stage_vllm.sh | tail -1
rm -rf "$root/.devstage/parts" && mkdir -p "$root/.devstage/parts"
cat /tmp/vllmstage/a.tar.xz /tmp/vllmstage/b.tar.xz | (cd "$root/.devstage/parts" && split -b 50M - part.)
ls -la "$root/.devstage/parts"
echo "A=$(stat -c %s /tmp/vllmstage/a.tar.xz)   # pass to: bash .devstage/gpu-recipe/unpack.sh \$A"
