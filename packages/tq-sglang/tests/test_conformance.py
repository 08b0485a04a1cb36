"""Cross-engine conformance: pages written through tq-sglang's pool, at the slots SGLang's
allocator hands out, hold the conformance tokens' bytes with the committed digest, the same as
tq-hf's and tq-vllm's write paths (integration-tests/conformance)."""

from __future__ import annotations

import pytest
import torch
from conformance import BLOCK_SIZE, GOLDEN, HEAD_DIM, NUM_KV_HEADS, conformance_kv, digest
from sglang.srt.layers.radix_attention import RadixAttention

from tq_core.config import TQConfig
from tq_sglang.pool import TQTokenToKVPool


@pytest.mark.parametrize("bits", sorted(GOLDEN))
def test_sglang_pool_writes_the_conformance_digest(bits):
    config = TQConfig(head_dim=HEAD_DIM, k_bits=bits[0], v_bits=bits[1])
    pool = TQTokenToKVPool(160, BLOCK_SIZE, torch.bfloat16, NUM_KV_HEADS, HEAD_DIM, 1, "cpu",
                           False, tq_config=config)  # fmt: skip
    keys, values = conformance_kv()
    pages = torch.tensor([7, 2, 5])  # the request's pages, as SGLang's allocator gave them
    positions = torch.arange(keys.shape[0])
    slots = pages[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    layer = RadixAttention(4, HEAD_DIM, HEAD_DIM**-0.5, NUM_KV_HEADS, layer_id=0)
    pool.set_kv_buffer(layer, slots, keys, values)
    assert digest(pool.pages(0), pages, pool.layout(0)) == GOLDEN[bits]
