"""tq-vllm's prefill through vLLM's own FlashAttention, on a GPU (skipped without CUDA).

The backend hands tq_core's decompressed pages to vLLM's FlashAttention (FA3 on Hopper) instead
of torch SDPA; both must compute the same attention over the same compressed cache: whole
prompts, chunks after cached context, a sequence without new tokens, GQA 32:8, padding rows.
The backend's call keeps the query and output in the model's domain (rotate=True: the keys are
rotated back while decompressed); it must equal rotating the query and the output outside.
"""

from __future__ import annotations

import pytest
import torch

from tq_core import TQCodec, ops, rotate_query, unrotate_output
from tq_vllm import _compat

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_prefill_through_vllm_flash_attention_matches_torch_sdpa():
    flash = _compat.flash_attention_varlen()
    assert flash is not None, "vLLM's FlashAttention did not load on this GPU"
    generator = torch.Generator().manual_seed(0)
    layout = TQCodec(128, 4, 4).cache_layout(num_kv_heads=8, block_size=16)
    seq_lens = [700, 300, 90, 1500]
    query_lens = [700, 64, 0, 200]  # a whole prompt, chunks after cached context, nothing new
    blocks = [-(-n // 16) for n in seq_lens]
    order = torch.randperm(sum(blocks) + 5, generator=generator)  # pages out of order
    block_table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32)
    slots, taken = [], 0
    for i, n in enumerate(seq_lens):
        block_table[i, : blocks[i]] = order[taken : taken + blocks[i]].to(torch.int32)
        taken += blocks[i]
        positions = torch.arange(n)
        slots.append(block_table[i, positions // 16].long() * 16 + positions % 16)
    slot_mapping = torch.cat(slots).cuda()
    total = slot_mapping.shape[0]
    key = torch.randn(total, 8, 128, generator=generator).to("cuda", torch.bfloat16)
    value = torch.randn(total, 8, 128, generator=generator).to("cuda", torch.bfloat16)
    pages = torch.zeros(order.shape[0], layout.page_bytes, dtype=torch.uint8, device="cuda")
    ops.store(key, value, pages, slot_mapping, layout)
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(int(starts[-1]) + 3, 32, 128, generator=generator)
    query = query.to("cuda", torch.bfloat16)
    args = (query, pages, block_table.cuda(), starts.cuda(), torch.tensor(seq_lens).int().cuda())
    sdpa = ops.prefill_attention(*args, layout, 128**-0.5)
    borrowed = ops.prefill_attention(*args, layout, 128**-0.5, dense_attention=flash)
    error = ((borrowed.float() - sdpa.float()).norm() / sdpa.float().norm()).item()
    version = flash.fa_version
    print(f"\nFA{version} vs torch SDPA over the same tq pages: relative error {error:.2e}")
    assert error < 1e-2  # two bf16 kernels' roundings
    assert torch.equal(borrowed[-3:], torch.zeros_like(borrowed[-3:]))

    seed = layout.codec.seed
    outside = ops.prefill_attention(rotate_query(query, seed), *args[1:], layout, 128**-0.5)
    outside = unrotate_output(outside, seed).float()
    direct = ops.prefill_attention(*args, layout, 128**-0.5, dense_attention=flash, rotate=True)
    error = ((direct.float() - outside).norm() / outside.norm()).item()
    print(f"rotate=True (keys rotated back) vs rotating query and output: {error:.2e}")
    assert error < 1e-2
    assert torch.equal(direct[-3:], torch.zeros_like(direct[-3:]))
