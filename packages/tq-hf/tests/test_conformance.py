"""Cross-engine conformance (integration-tests/conformance): tq-hf's cache layer writes the
conformance tokens (the last one through the "tq" attention function, as a decode step of
generate runs it); their bytes have the committed digest, the same as tq-vllm's and
tq-sglang's write paths, and the attention output equals tq_core's reference over those
pages."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conformance import (
    GOLDEN,
    NUM_KV_HEADS,
    NUM_TOKENS,
    SCALE,
    TOLERANCE,
    codec,
    conformance_kv,
    conformance_query,
    digest,
    reference_decode,
    relative_error,
)  # fmt: skip

from tq_hf.attention import tq_attention_forward
from tq_hf.cache import TQLayer


@pytest.mark.parametrize("bits", sorted(GOLDEN))
def test_tq_hf_layer_and_attention_conform(bits):
    layer = TQLayer(0, codec(*bits), NUM_KV_HEADS)
    keys, values = conformance_kv()
    # transformers hands a layer [batch, heads, tokens, head_dim]: a prompt of 24 tokens and
    # one of 15 (chunked), then a decode step whose attention call stores the last token.
    k, v = keys.transpose(0, 1)[None], values.transpose(0, 1)[None]
    for start, end in ((0, 24), (24, NUM_TOKENS - 1)):
        layer.update(k[:, :, start:end], v[:, :, start:end])
        layer.commit(None)
    layer.update(k[:, :, -1:], v[:, :, -1:])
    query = conformance_query().transpose(0, 1)[None]  # [1, heads, 1, head_dim]
    out, _ = tq_attention_forward(
        SimpleNamespace(layer_idx=0), query, k[:, :, -1:], v[:, :, -1:], None, scaling=SCALE
    )
    block_ids = layer.block_table[0]
    assert digest(layer.kv_cache, block_ids, layer.layout) == GOLDEN[bits]
    expected = reference_decode(layer.kv_cache, block_ids, layer.layout)
    assert relative_error(out.reshape(expected.shape), expected) < TOLERANCE
