"""Cross-engine conformance: pages tq-hf's cache layer writes for one sequence hold the
conformance tokens' bytes with the committed digest, the same as tq-vllm's and tq-sglang's
write paths (integration-tests/conformance)."""

from __future__ import annotations

import pytest
from conformance import GOLDEN, NUM_KV_HEADS, codec, conformance_kv, digest

from tq_hf.cache import TQLayer


@pytest.mark.parametrize("bits", sorted(GOLDEN))
def test_tq_hf_layer_writes_the_conformance_digest(bits):
    layer = TQLayer(0, codec(*bits), NUM_KV_HEADS)
    keys, values = conformance_kv()
    # transformers hands a layer [batch, heads, tokens, head_dim]; one prefill of 24 tokens,
    # then 16 more, as generation would.
    k, v = keys.transpose(0, 1)[None], values.transpose(0, 1)[None]
    for start, end in ((0, 24), (24, 40)):
        layer.update(k[:, :, start:end], v[:, :, start:end])
        layer.commit(None)
    assert digest(layer.kv_cache, layer.block_table[0], layer.layout) == GOLDEN[bits]
