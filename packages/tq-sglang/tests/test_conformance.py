"""Cross-engine conformance (integration-tests/conformance): tq-sglang's pool, at the slots
SGLang's allocator hands out, writes the conformance tokens (the last one through the tq
backend's decode, as SGLang runs it); their bytes have the committed digest, the same as
tq-hf's and tq-vllm's write paths, and the backend's decode output equals tq_core's reference
over those pages."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conformance import (
    BLOCK_SIZE,
    GOLDEN,
    HEAD_DIM,
    NUM_KV_HEADS,
    NUM_Q_HEADS,
    NUM_TOKENS,
    SCALE,
    TOLERANCE,
    conformance_kv,
    conformance_query,
    digest,
    reference_decode,
    relative_error,
)  # fmt: skip
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

from tq_core.config import TQConfig
from tq_sglang.backend import TQAttnBackend
from tq_sglang.pool import TQTokenToKVPool


@pytest.mark.parametrize("bits", sorted(GOLDEN))
def test_sglang_pool_and_backend_conform(bits):
    config = TQConfig(head_dim=HEAD_DIM, k_bits=bits[0], v_bits=bits[1])
    pool = TQTokenToKVPool(160, BLOCK_SIZE, torch.float32, NUM_KV_HEADS, HEAD_DIM, 1, "cpu",
                           False, tq_config=config)  # fmt: skip
    keys, values = conformance_kv()
    pages = torch.tensor([7, 2, 5])  # the request's pages, as SGLang's allocator gave them
    positions = torch.arange(NUM_TOKENS)
    slots = pages[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    layer = RadixAttention(NUM_Q_HEADS, HEAD_DIM, SCALE, NUM_KV_HEADS, layer_id=0)
    pool.set_kv_buffer(layer, slots[:-1], keys[:-1], values[:-1])  # the prompt
    requests = ReqToTokenPool(1, 64, "cpu", False)
    requests.req_to_token[1, :NUM_TOKENS] = slots.to(torch.int32)
    runner = SimpleNamespace(device="cpu", req_to_token_pool=requests, token_to_kv_pool=pool)
    backend = TQAttnBackend(runner)
    seq_lens = torch.tensor([NUM_TOKENS])
    batch = ForwardBatch(
        forward_mode=ForwardMode.DECODE, batch_size=1, input_ids=torch.zeros(1, dtype=torch.int64),
        req_pool_indices=torch.tensor([1]), seq_lens=seq_lens, out_cache_loc=slots[-1:],
        seq_lens_sum=NUM_TOKENS, seq_lens_cpu=seq_lens,
    )  # fmt: skip
    backend.init_forward_metadata(batch)
    query = conformance_query()
    out = backend.forward_decode(query.reshape(1, -1), keys[-1:], values[-1:], layer, batch)
    assert digest(pool.pages(0), pages, pool.layout(0)) == GOLDEN[bits]
    expected = reference_decode(pool.pages(0), pages, pool.layout(0))
    assert relative_error(out.reshape(expected.shape), expected) < TOLERANCE
