#!/bin/bash
# stage_sglang.sh -- build the SGLang 0.5.17 payload for the lent GPU (runs HERE, no device time).
#
# Target: the GPU image (Python 3.12, torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0, numpy,
# pytest) running SGLang's offline sglang.Engine(...) on one Hopper GPU with
# attention_backend="triton" (bf16 or fp8_e4m3 KV cache), sampling_backend="pytorch",
# skip_tokenizer_init=True, load_format="dummy", a Llama-architecture model.
#
# Result: $REPO/.devstage/parts-sglang/part.aa[, part.ab ...] (<= 60 MiB each): ONE xz tarball split
# in pieces (~60 MB: one piece as of 2026-11-28); its byte length and sha256 are printed
# (unpack_sglang.sh checks the length); plus the optional tf512.tar.xz (see TRANSFORMERS).
# Takes ~2-4 min on 2 cores (xz -9; 420 MB of wheels to download), ~2 GB of /tmp.  Run from the
# repository root.
# Needs: pip that reaches PyPI (any Python: wheels are only unpacked, the cp312 tags are forced),
# xz, tar, split.
#
# What is in it (explicit pins; versions are the ones resolved 2026-11-28):
#   sglang 0.5.17            pins torch==2.11.0, sglang-kernel==0.4.5, flashinfer-python==0.6.15.post1,
#                            transformers==5.12.1 (see TRANSFORMERS below), xgrammar==0.2.1,
#                            apache-tvm-ffi==0.1.11, openai==2.6.1
#   sglang-kernel 0.4.5      (the sgl_kernel module) built for CUDA 13 (NEEDED libcudart.so.13,
#                            libcublas(Lt).so.13, libnvrtc.so.13) against torch 2.11 -> matches cu130
#   flashinfer-python        imported unconditionally on CUDA (quantization/fp8_utils.py,
#                            moe/token_dispatcher) even with the triton backend; its data/ headers
#                            are also the include path of SGLang's JIT kernels -> kept whole
#   torchvision 0.26.0+cu130 imported unconditionally by sglang/srt/utils/common.py (decode_jpeg)
#   cuda-bindings/-pathfinder flashinfer.comm imports cuda.bindings.driver (13.0.x = the image's CUDA)
#   the rest: small wheels the import chain of the Engine path needs and the image lacks
#   (found with benchmarks/gpu/sglang_import_probe.py --cpu-fake).
# Not included (the image has them): torch, triton, transformers, numpy, huggingface_hub, tokenizers,
# safetensors, httpx/httpcore/h11/anyio/idna/certifi, pyyaml, regex, tqdm, filelock, fsspec,
# jinja2, sympy, networkx, packaging.
#
# TRANSFORMERS: sglang 0.5.17 pins 5.12.1; with the image's 5.17 its import dies at
#   sglang/srt/configs/qwen3_asr.py: AutoConfig.register("qwen3_asr", ...) -> ValueError
#   "'qwen3_asr' is already used by a Transformers config" (5.17 ships qwen3_asr).  This script
#   patches those two register calls to exist_ok=True (nothing else failed to import with 5.17).
#   As a fallback it also writes parts-sglang/tf512.tar.xz (~6 MB, an optional extra call):
#   transformers 5.12.1 + tokenizers 0.22.2 (5.12.1 requires 0.22.0<=tokenizers<=0.23.0; the image's
#   is newer).  Carry it to /tmp/stage-sglang/ too and unpack_sglang.sh puts it in /tmp/sgsite/_tf512;
#   then PYTHONPATH=/tmp/sgsite/_tf512:/tmp/sgsite uses the pinned version.  SG_TF512=0: not built.
set -euo pipefail
REPO=$(pwd); W=${SG_STAGE_DIR:-/tmp/sgstage/run}; rm -rf "$W"; mkdir -p "$W/whl" "$W/whl512" "$W/site"
PIP="python3 -m pip"
quiet() { "$@" 2>&1 | { grep -v -e "is ignored: it is neither" -e "Running pip as the 'root'" || true; }; }
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
 --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64
 --platform manylinux_2_31_x86_64 --platform manylinux_2_35_x86_64 --platform manylinux1_x86_64
 --platform manylinux_2_5_x86_64 --platform any"
quiet env PIP_CONSTRAINT=/dev/null $PIP download -q --no-deps $PLAT -d "$W/whl" \
  sglang==0.5.17 sglang-kernel==0.4.5 flashinfer-python==0.6.15.post1 torchvision==0.26.0 \
  apache-tvm-ffi==0.1.11 xgrammar==0.2.1 cuda-bindings==13.0.3 cuda-pathfinder==1.9.1 \
  nvidia-ml-py==13.615.71 openai==2.6.1 compressed-tensors==0.20.1 loguru==0.7.3 gguf==0.19.0 \
  sentencepiece==0.2.3 dill==0.4.1 einops==0.8.2 ipython==9.18.1 traitlets==5.16.1 \
  pygments==2.21.0 aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 attrs==26.1.0 \
  frozenlist==1.8.0 multidict==7.2.1 propcache==0.5.4 yarl==1.25.1 fastapi==0.165.0 \
  starlette==1.10.0 annotated-doc==0.0.7 uvicorn==0.54.0 click==8.5.1 uvloop==0.23.0 \
  msgspec==0.22.0 pyzmq==27.3.0 orjson==3.13.0 psutil==7.2.2 pybase64==1.5.1 pillow==13.0.0 \
  requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3 setproctitle==1.3.8 sniffio==1.3.1 \
  distro==1.9.0 opentelemetry-api==1.45.2 partial-json-parser==0.2.1.1.post7 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0 xxhash==4.1.0 ninja==1.13.2
# --python-version/--platform make pip accept the cp312 wheels whatever Python runs it.
INST="--no-index --no-deps --no-compile $PLAT"
quiet env PIP_CONSTRAINT=/dev/null $PIP install -q $INST --target "$W/site" "$W"/whl/*.whl
if [ "${SG_TF512:-1}" != 0 ]; then   # the optional second archive (see TRANSFORMERS above)
  quiet env PIP_CONSTRAINT=/dev/null $PIP download -q --no-deps $PLAT -d "$W/whl512" transformers==5.12.1 tokenizers==0.22.2
  quiet env PIP_CONSTRAINT=/dev/null $PIP install -q $INST --target "$W/tf512/_tf512" "$W"/whl512/*.whl
  rm -rf "$W/tf512/_tf512/bin"
fi
cd "$W/site"
# transformers 5.17 already registers qwen3_asr: let SGLang's own class override it.
sed -i -E 's/^AutoConfig\.register\("(qwen3_asr|qwen3_asr_thinker)", (Qwen3ASR[A-Za-z]*Config)\)$/AutoConfig.register("\1", \2, exist_ok=True)/' \
  sglang/srt/configs/qwen3_asr.py
test "$(grep -c 'exist_ok=True)$' sglang/srt/configs/qwen3_asr.py)" = 2 || { echo "qwen3_asr patch failed"; exit 1; }
# Prune what a 1-GPU Hopper dense-Llama triton run never loads:
#  sgl_kernel/flash_ops.abi3.so   1.1 GB  FA3 (only attention_backend="fa3"/vision; sgl_kernel.flash_attn)
#  sgl_kernel/sm100/              Blackwell common_ops (load_utils picks sm90/ for capability 9.0)
#  sgl_kernel/flashmla_ops        MLA (DeepSeek) only, loaded lazily by sgl_kernel.flash_mla
#  sgl_kernel/infllm_ops.cpython-310  InfLLM-v2, and built for Python 3.10 anyway
#  sglang/srt/{server,grpc,multimodal}/_core.cpython-312*.so  Rust HTTP/gRPC server, inkling image
#                                 processor: imported lazily, not by the offline Engine
rm -rf sgl_kernel/flash_ops.abi3.so sgl_kernel/sm100 sgl_kernel/flashmla_ops.abi3.so \
       sgl_kernel/infllm_ops.cpython-310-x86_64-linux-gnu.so \
       sglang/srt/server/_core.cpython-312-x86_64-linux-gnu.so \
       sglang/srt/grpc/_core.cpython-312-x86_64-linux-gnu.so \
       sglang/srt/multimodal/_core.cpython-312-x86_64-linux-gnu.so
test -f sgl_kernel/sm90/common_ops.abi3.so
#  sglang/multimodal_gen (13 MB): SGLang-Diffusion, reached only from sglang.cli and the lazily
#  imported kernels of sglang.kernels.ops.diffusion.
rm -rf sglang/multimodal_gen
#  xgrammar/lib/libxgrammar.a (65 MB static library, for C++ linking only) and the Cython sources
#  (.pyx/.pxd/.pxi/.cpp, ~90 MB, mostly cuda/bindings) of compiled wheels: never read at run time.
#  (flashinfer/, sglang/ and tvm_ffi/ keep theirs: their JIT compiles from them.)
rm -f xgrammar/lib/libxgrammar.a
find . \( -path ./flashinfer -o -path ./sglang -o -path ./tvm_ffi \) -prune -o \
     -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.cpp' \) -print0 | xargs -0 rm -f
find . -name __pycache__ -prune -exec rm -rf {} +
du -sh . ; du -s ./* | sort -n | tail -8
tar -cf - . | xz -9 -T2 --block-size=64MiB > "$W/sglang.tar.xz"
P="$REPO/.devstage/parts-sglang"; mkdir -p "$P" && rm -f "$P"/part.* "$P"/tf512.tar.xz
(cd "$P" && split -b 60M "$W/sglang.tar.xz" part.)
[ -d "$W/tf512" ] && tar -C "$W/tf512" -cf - . | xz -9 -T2 > "$P/tf512.tar.xz"
ls -la "$P"
echo "BYTES=$(stat -c %s "$W/sglang.tar.xz")  sha256=$(sha256sum "$W/sglang.tar.xz" | cut -c1-16)"
echo "# on the GPU machine, after the last chunk: bash benchmarks/gpu/unpack_sglang.sh \$BYTES"
