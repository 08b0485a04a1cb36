"""Cross-engine conformance: pages tq-vllm's ``do_kv_cache_update`` writes into vLLM's block
view hold the conformance tokens' bytes with the committed digest, the same as tq-hf's and
tq-sglang's write paths (integration-tests/conformance)."""

from __future__ import annotations

import pytest
import torch
from conformance import BLOCK_SIZE, GOLDEN, HEAD_DIM, NUM_KV_HEADS, conformance_kv, digest

from tq_vllm import settings
from tq_vllm.backend import TQAttentionImpl, packed_bytes_per_token


@pytest.mark.parametrize("bits", sorted(GOLDEN))
def test_vllm_kv_cache_update_writes_the_conformance_digest(bits, monkeypatch):
    from vllm.config import VllmConfig, set_current_vllm_config

    monkeypatch.setattr(settings, "_active", None)
    config = VllmConfig(additional_config={"tq": {"k_bits": bits[0], "v_bits": bits[1]}})
    with set_current_vllm_config(config):
        impl = TQAttentionImpl(4, HEAD_DIM, HEAD_DIM**-0.5, num_kv_heads=NUM_KV_HEADS)
    # vLLM's per-layer cache: [num_blocks, 1, block_size, packed bytes per token] uint8.
    kv_cache = torch.zeros(
        6, 1, BLOCK_SIZE, packed_bytes_per_token(NUM_KV_HEADS, HEAD_DIM), dtype=torch.uint8
    )
    keys, values = conformance_kv()
    blocks = torch.tensor([4, 1, 3])  # the sequence's block table, as vLLM's manager gave it
    positions = torch.arange(keys.shape[0])
    slot_mapping = blocks[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    impl.do_kv_cache_update(None, keys, values, kv_cache, slot_mapping)
    pages, layout = impl._layout_for(kv_cache)
    assert digest(pages, blocks, layout) == GOLDEN[bits]
