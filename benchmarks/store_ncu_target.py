"""A few store launches of one configuration, for `ncu -k regex:_store_kernel --launch-skip 2
--launch-count 1` (the first launch compiles).

    python benchmarks/store_ncu_target.py 65536 --tuning binary_search=0,block_rows=128

K4V4, Llama-3-8B shape (8 KV heads, head_dim 128), bf16 K and V, every token to its own slot
in shuffled order, as `kernel_bench.py`'s store rows.
"""

from __future__ import annotations

import argparse

import torch

from tq_core import TQCodec
from tq_core.ops import triton_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokens", type=int)
    parser.add_argument("--tuning", default="", help="triton_store.TUNING overrides: name=int,...")
    args = parser.parse_args()
    for item in filter(None, args.tuning.split(",")):
        name, value = item.split("=")
        if name not in triton_store.TUNING:
            raise SystemExit(f"unknown store setting {name!r}: {sorted(triton_store.TUNING)}")
        triton_store.TUNING[name] = int(value)
    num_kv, head_dim, block_size = 8, 128, 16
    layout = TQCodec(head_dim, 4, 4).cache_layout(num_kv, block_size)
    pages = -(-args.tokens // block_size)
    cache = torch.empty(pages, layout.page_bytes, dtype=torch.uint8, device="cuda")
    key = torch.randn(args.tokens, num_kv, head_dim, device="cuda", dtype=torch.bfloat16)
    value = torch.randn_like(key)
    slots = torch.randperm(args.tokens, device="cuda")
    for _ in range(4):
        triton_store.store(key, value, cache, slots, layout)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
