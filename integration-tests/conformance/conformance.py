"""One input, one format: what every adapter's write path must put in its pages, and what its
attention must compute over them.

Each adapter writes the same K/V (below) into pages through its own engine-facing path
(tq-hf's ``TQLayer``, tq-vllm's ``do_kv_cache_update``, tq-sglang's pool), wherever its engine
places them; reading every token's bytes back in token order through the core layout must give
exactly the committed digest, in every adapter's test session (and tq-core's, from
``ops.store`` itself). Pages an engine wrote therefore decode to the same K/V through
``tq_core`` whichever engine wrote them. Change a digest only together with FORMAT_VERSION.
Each adapter then decodes the conformance query (the last token's) through its own attention
call; the output must equal the ``tq_core`` reference's over the same pages within
``TOLERANCE``.

    python integration-tests/conformance/conformance.py    # prints the digests
"""

from __future__ import annotations

import hashlib
import json

import torch

from tq_core import CacheLayout, TQCodec, ops

NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_TOKENS = 2, 64, 16, 40
NUM_Q_HEADS = 4  # two query heads per KV head (GQA)
SCALE = HEAD_DIM**-0.5
#: Relative error allowed between an adapter's attention and the reference on the same pages.
TOLERANCE = 1e-5
#: The committed digests, per (k_bits, v_bits), of the conformance tokens' bytes in token order.
GOLDEN = {
    (4, 4): "3f15c3aea4a2dfff0cff484955844dd88dbe66e65f407fb17281d6414a7aa8e2",
    (8, 4): "e6f34be210c66dac499b822bc52ab6c816e2e6ab07c493174a3ec56b89e2f6f0",
}


def conformance_kv() -> tuple[torch.Tensor, torch.Tensor]:
    """K and V [NUM_TOKENS, NUM_KV_HEADS, HEAD_DIM] from closed formulas (no RNG to drift):
    keys with a shared offset, as real keys have."""
    t = torch.arange(NUM_TOKENS, dtype=torch.float64)[:, None, None]
    h = torch.arange(NUM_KV_HEADS, dtype=torch.float64)[None, :, None]
    i = torch.arange(HEAD_DIM, dtype=torch.float64)[None, None, :]
    keys = 2 * torch.sin(0.37 * (i + 1) + 0.11 * t + 1.3 * h) + 0.5
    values = torch.cos(1.3 * i + 0.29 * t - 0.7 * h) / (1 + i / 16)
    return keys.float(), values.float()


def conformance_query() -> torch.Tensor:
    """The last token's query [1, NUM_Q_HEADS, HEAD_DIM], from a closed formula."""
    h = torch.arange(NUM_Q_HEADS, dtype=torch.float64)[None, :, None]
    i = torch.arange(HEAD_DIM, dtype=torch.float64)[None, None, :]
    return (torch.sin(0.53 * i - 0.9 * h) + 0.2 * torch.cos(0.07 * i * (h + 1))).float()


def reference_decode(pages: torch.Tensor, block_ids: torch.Tensor, layout) -> torch.Tensor:
    """tq_core's reference decode of the conformance query over an adapter's pages and block
    table: [1, NUM_Q_HEADS, HEAD_DIM] float32."""
    from tq_core.ops import reference

    out = reference.decode_attention(
        conformance_query()[None], pages.cpu()[:, : layout.page_bytes].contiguous(),
        block_ids.cpu()[None].to(torch.int32), torch.tensor([NUM_TOKENS], dtype=torch.int32),
        layout, SCALE, rotate=True,
    )  # fmt: skip
    return out[0]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    return ((actual - expected).norm() / expected.norm()).item()


def codec(k_bits: int, v_bits: int) -> TQCodec:
    return TQCodec(HEAD_DIM, k_bits, v_bits)


def token_bytes(pages: torch.Tensor, block_ids: torch.Tensor, layout: CacheLayout) -> torch.Tensor:
    """uint8 [NUM_TOKENS, NUM_KV_HEADS, K + V bytes]: each token's fields read from ``pages``
    (rows of ``layout.page_bytes``) through ``block_ids``, the sequence's block table."""
    positions = torch.arange(NUM_TOKENS)
    blocks = block_ids.long().cpu()[positions // layout.block_size]
    offsets = positions % layout.block_size
    rows = pages.cpu()[:, : layout.page_bytes]
    fields = []
    for region in layout.regions:
        view = rows[:, region.offset : region.offset + region.nbytes]
        view = view.reshape(-1, layout.num_kv_heads, layout.block_size, region.bytes_per_vector)
        fields.append(view[blocks, :, offsets])
    return torch.cat(fields, dim=-1)


def digest(pages: torch.Tensor, block_ids: torch.Tensor, layout: CacheLayout) -> str:
    data = token_bytes(pages, block_ids, layout).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def core_digest(k_bits: int, v_bits: int) -> str:
    """The digest from tq_core's reference store, at slots of a shuffled block table."""
    layout = codec(k_bits, v_bits).cache_layout(NUM_KV_HEADS, BLOCK_SIZE)
    block_ids = torch.tensor([3, 0, 4])
    pages = torch.zeros(5, layout.page_bytes, dtype=torch.uint8)
    positions = torch.arange(NUM_TOKENS)
    slots = block_ids[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    keys, values = conformance_kv()
    ops.store(keys, values, pages, slots, layout)
    return digest(pages, block_ids, layout)


if __name__ == "__main__":
    print(json.dumps({f"{k}{v}": core_digest(k, v) for k, v in GOLDEN}, indent=2))
