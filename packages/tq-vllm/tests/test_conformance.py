"""Cross-engine conformance (integration-tests/conformance): tq-vllm's ``do_kv_cache_update``
writes the conformance tokens into vLLM's block view; their bytes have the committed digest,
the same as tq-hf's and tq-sglang's write paths, and the impl's decode of the last token equals
tq_core's reference over those pages."""

from __future__ import annotations

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

from tq_vllm import settings
from tq_vllm.backend import TQAttentionImpl, TQMetadata, packed_bytes_per_token


def _decode_of_the_last_token(blocks: torch.Tensor) -> TQMetadata:
    """vLLM's metadata of one sequence of NUM_TOKENS whose last token decodes."""
    return TQMetadata(
        num_actual_tokens=1, num_decodes=1, num_decode_tokens=1, decode_query_len=1,
        prefill_query_start_loc=torch.zeros(1, dtype=torch.int32),
        seq_lens=torch.tensor([NUM_TOKENS], dtype=torch.int32),
        block_table=blocks[None].to(torch.int32),
    )  # fmt: skip


@pytest.mark.parametrize("bits", sorted(GOLDEN))
def test_vllm_impl_conforms(bits, monkeypatch):
    from vllm.config import VllmConfig, set_current_vllm_config

    monkeypatch.setattr(settings, "_active", None)
    # The conformance bytes are plain TurboQuant's (every adapter's write path, centering off).
    tq = {"k_bits": bits[0], "v_bits": bits[1], "center_keys": False}
    config = VllmConfig(additional_config={"tq": tq})
    with set_current_vllm_config(config):
        impl = TQAttentionImpl(NUM_Q_HEADS, HEAD_DIM, SCALE, num_kv_heads=NUM_KV_HEADS)
    # vLLM's per-layer cache: [num_blocks, 1, block_size, packed bytes per token] uint8.
    kv_cache = torch.zeros(
        6, 1, BLOCK_SIZE, packed_bytes_per_token(NUM_KV_HEADS, HEAD_DIM), dtype=torch.uint8
    )
    keys, values = conformance_kv()
    blocks = torch.tensor([4, 1, 3])  # the sequence's block table, as vLLM's manager gave it
    positions = torch.arange(NUM_TOKENS)
    slot_mapping = blocks[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    impl.do_kv_cache_update(None, keys[:-1], values[:-1], kv_cache, slot_mapping[:-1])
    # The decode step: vLLM stores the new token, then runs attention for it.
    impl.do_kv_cache_update(None, keys[-1:], values[-1:], kv_cache, slot_mapping[-1:])
    metadata = _decode_of_the_last_token(blocks)
    query = conformance_query()
    output = torch.empty_like(query)
    impl.forward(None, query, keys[-1:], values[-1:], kv_cache, metadata, output)
    pages, layout = impl._layout_for(kv_cache)
    assert digest(pages, blocks, layout) == GOLDEN[bits]
    assert relative_error(output, reference_decode(pages, blocks, layout)) < TOLERANCE


def test_prefill_kernels_compile_once_ahead_and_a_failure_only_warns(monkeypatch):
    """The first forward with a cache (vLLM's decode capture) compiles the prefill path's
    kernels once per layout and query dtype (model domain, as prefills call them); a compile
    that fails leaves the forward's result as it is and says so in the log."""
    from vllm.config import VllmConfig, set_current_vllm_config

    from tq_vllm import backend

    monkeypatch.setattr(settings, "_active", None)
    tq = {"k_bits": 4, "v_bits": 4, "center_keys": False}
    with set_current_vllm_config(VllmConfig(additional_config={"tq": tq})):
        impl = TQAttentionImpl(NUM_Q_HEADS, HEAD_DIM, SCALE, num_kv_heads=NUM_KV_HEADS)
    kv_cache = torch.zeros(
        6, 1, BLOCK_SIZE, packed_bytes_per_token(NUM_KV_HEADS, HEAD_DIM), dtype=torch.uint8
    )
    keys, values = conformance_kv()
    blocks = torch.tensor([4, 1, 3])
    positions = torch.arange(NUM_TOKENS)
    slot_mapping = blocks[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    impl.do_kv_cache_update(None, keys, values, kv_cache, slot_mapping)
    metadata = _decode_of_the_last_token(blocks)
    calls, warnings = [], []

    def failing_compile(pages, layout, dtype, *, rotate):
        calls.append((pages.shape, layout.block_size, dtype, rotate))
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(backend.ops, "compile_prefill", failing_compile)
    monkeypatch.setattr(backend.logger, "warning_once", lambda *args: warnings.append(args))
    query = conformance_query()
    outputs = []
    for _ in range(2):
        outputs.append(torch.empty_like(query))
        impl.forward(None, query, keys[-1:], values[-1:], kv_cache, metadata, outputs[-1])
    pages, layout = impl._layout_for(kv_cache)
    assert calls == [(pages.shape, BLOCK_SIZE, query.dtype, True)]
    assert len(warnings) == 1 and "RuntimeError" in warnings[0]
    for output in outputs:
        assert relative_error(output, reference_decode(pages, blocks, layout)) < TOLERANCE
