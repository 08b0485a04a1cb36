#!/bin/bash
# unpack_sglang.sh [BYTES] -- on the GPU machine: reassemble /tmp/stage-sglang/part.* (made by
# stage_sglang.sh: one xz tarball split in 60 MiB pieces) into /tmp/sgsite and write
# /tmp/sgsite/env.sh.  BYTES (printed by stage_sglang.sh) checks that every chunk arrived.
# Then:  source /tmp/sgsite/env.sh && python3 benchmarks/gpu/sglang_import_probe.py
set -euo pipefail; t=$(date +%s); S=/tmp/stage-sglang; D=/tmp/sgsite
ls -la $S; n=$(cat $S/part.* | wc -c)   # optional: $S/tf512.tar.xz -> $D/_tf512 (transformers 5.12.1)
if [ -n "${1:-}" ] && [ "$n" != "$1" ]; then echo "chunks hold $n bytes, expected $1: a part is missing"; exit 2; fi
rm -rf $D; mkdir -p $D
if command -v xz >/dev/null; then
  cat $S/part.* | xz -dc -T0 | tar -xf - -C $D
else
  cat $S/part.* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer,mode='r|xz').extractall('$D')"
fi
if [ -f $S/tf512.tar.xz ]; then
  if command -v xz >/dev/null; then xz -dc $S/tf512.tar.xz | tar -xf - -C $D
  else python3 -c "import tarfile; tarfile.open('$S/tf512.tar.xz').extractall('$D')"; fi
fi
rm -f $S/part.* $S/tf512.tar.xz
# env.sh: the payload first on PYTHONPATH; ninja (SGLang's tvm-ffi JIT kernels build with it) on
# PATH; torch's own CUDA 13 libraries on LD_LIBRARY_PATH so sgl_kernel's NEEDED libnvrtc.so.13 /
# libcublas.so.13 resolve even if torch did not load them first.
NV=$(python3 -c "import glob,os,importlib.util as u; r=os.path.dirname(os.path.dirname(u.find_spec('torch').origin)); print(':'.join(sorted(glob.glob(r+'/nvidia/*/lib'))))" 2>/dev/null || true)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d $d ] && NV="$NV:$d"; done
cat > $D/env.sh <<ENV
# PYTHONPATH=/tmp/sgsite/_tf512:\$PYTHONPATH to use sglang's pinned transformers 5.12.1 instead of the image's
export PYTHONPATH=$D\${PYTHONPATH:+:\$PYTHONPATH}
export PATH=$D/bin:\$PATH
export LD_LIBRARY_PATH=${NV#:}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
ENV
du -sh $D; cat $D/env.sh; echo "unpack_s=$(( $(date +%s)-t ))"
