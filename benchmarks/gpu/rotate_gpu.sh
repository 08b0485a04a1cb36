#!/usr/bin/env bash
# Where rotate=True's extra time goes (the decode call every adapter makes), in one call: the
# lever sweep through rotate=True and through the rotated domain at the shapes where the
# difference is largest, then each kernel's duration under ncu for a few settings at one shape.
#   bash benchmarks/gpu/rotate_gpu.sh COMMIT
# SHAPES (BATCHxCONTEXT list) and TARGET (the ncu shape) override the defaults. Results in $OUT.
set -uo pipefail
sha=${1:?git sha of the measured commit}
shapes=${SHAPES:-1x1024,8x1024,8x4096,8x16384,32x1024,32x16384,128x4096}
target=${TARGET:-8x4096}
export PYTHONPATH=$(pwd)/packages/tq-core/src
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name())"
start=$(date +%s)
for domain in rotate rotated; do
  flag=""; [ "$domain" = rotate ] && flag=--rotate
  timeout 200 python3 benchmarks/decode_levers.py $flag --shapes "$shapes" \
      --out "$OUT/decode-levers-$domain" --git-sha "$sha" >> "$OUT/levers-log.txt" 2>&1
  echo "== levers $domain rc=$? $(( $(date +%s) - start )) s"
done
# Every kernel of four calls (the first compiles), serialized by ncu: durations by kernel name.
for setting in "rotated:" "rotate:--rotate" "once:--rotate --tuning decode.rotate_query_once=1"; do
  name=${setting%%:*}; flags=${setting#*:}
  timeout 100 ncu -k regex:"_attention_kernel|_merge_splits|_rotate_queries" --csv \
      --print-units base --metrics gpu__time_duration.sum \
      python3 benchmarks/decode_levers.py --ncu-target "$target" $flags \
      > "/tmp/ncu-$name.csv" 2> "/tmp/ncu-$name.err"
  echo "== ncu $name ($flags) rc=$? $(( $(date +%s) - start )) s" | tee -a "$OUT/ncu-kernels.txt"
  python3 - "/tmp/ncu-$name.csv" <<'PY' | tee -a "$OUT/ncu-kernels.txt"
import collections, csv, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, body = rows[0], rows[1:]
k, v = head.index("Kernel Name"), head.index("Metric Value")
times = collections.defaultdict(list)
for r in body:
    times[r[k][:60]].append(float(r[v].replace(",", "")))
for name, t in times.items():
    print(f"   {name}: {len(t)} launches, last {t[-1] / 1000:.1f} us, min {min(t) / 1000:.1f} us")
PY
  tail -5 "/tmp/ncu-$name.err" >> "$OUT/ncu-kernels.txt"; cat "/tmp/ncu-$name.csv" >> "$OUT/ncu-kernels.txt"
done
for domain in rotate rotated; do
  grep -E "\| decode" "$OUT/decode-levers-$domain.md" | awk -F'|' '{print $4 $5 $6 $7 $10}'
done
