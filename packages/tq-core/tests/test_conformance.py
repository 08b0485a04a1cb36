"""The cross-engine conformance input (integration-tests/conformance) from tq_core itself: the
committed digests are what ops.store writes, and the bytes they cover are the codec's own
per-vector bytes, token by token. Each adapter's tests check its write path against the same
digests."""

from __future__ import annotations

import pytest
import torch
from conformance import GOLDEN, codec, conformance_kv, core_digest, token_bytes

from tq_core import ops


@pytest.mark.parametrize("bits", sorted(GOLDEN))
def test_reference_store_gives_the_committed_digest(bits):
    assert core_digest(*bits) == GOLDEN[bits]


@pytest.mark.parametrize("bits", sorted(GOLDEN))
def test_token_bytes_are_the_codecs_per_vector_bytes(bits):
    tq = codec(*bits)
    layout = tq.cache_layout(2, 16)
    keys, values = conformance_kv()
    block_ids = torch.tensor([1, 2, 0])
    pages = torch.randint(0, 256, (3, layout.page_bytes), dtype=torch.uint8)
    positions = torch.arange(keys.shape[0])
    ops.store(keys, values, pages, block_ids[positions // 16] * 16 + positions % 16, layout)
    expected = torch.cat([tq.encode_keys(keys), tq.encode_values(values)], dim=-1)
    assert torch.equal(token_bytes(pages, block_ids, layout), expected)
