"""Builds paged caches the way an engine would, for the op tests: ragged sequences, block
tables in shuffled order, padding slots (-1) mixed into the slot mapping."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tq_core import TQCodec, ops


@dataclass
class PagedBatch:
    keys: list[torch.Tensor]  # per sequence [seq_len, num_kv_heads, head_dim], original domain
    values: list[torch.Tensor]
    kv_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    layout: object


def build_paged_batch(
    codec: TQCodec,
    seq_lens: list[int],
    num_kv_heads: int,
    block_size: int,
    generator: torch.Generator,
    spare_blocks: int = 3,
) -> PagedBatch:
    layout = codec.cache_layout(num_kv_heads, block_size)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    # Random bytes, not zeros: an op that reads a slot it should not would show up.
    kv_cache = torch.randint(
        0, 256, (num_blocks, layout.page_bytes), dtype=torch.uint8, generator=generator
    )
    order = torch.randperm(num_blocks, generator=generator)
    block_table = torch.zeros(len(seq_lens), max(blocks_per_seq) + 1, dtype=torch.int32)
    keys, values, slots, token_keys, token_values = [], [], [], [], []
    used = 0
    for i, seq_len in enumerate(seq_lens):
        ids = order[used : used + blocks_per_seq[i]]
        used += blocks_per_seq[i]
        block_table[i, : ids.numel()] = ids.to(torch.int32)
        k = torch.randn(seq_len, num_kv_heads, codec.head_dim, generator=generator) * 2 + 0.3
        v = torch.randn(seq_len, num_kv_heads, codec.head_dim, generator=generator)
        keys.append(k)
        values.append(v)
        positions = torch.arange(seq_len)
        slots.append(ids[positions // block_size] * block_size + positions % block_size)
        token_keys.append(k)
        token_values.append(v)
    # Padding tokens with slot -1 in between real ones: they must not be written anywhere.
    pad = torch.randn(2, num_kv_heads, codec.head_dim, generator=generator) * 100
    all_keys = torch.cat([pad[:1], *token_keys, pad[1:]])
    all_values = torch.cat([pad[:1], *token_values, pad[1:]])
    slot_mapping = torch.cat([torch.tensor([-1]), *slots, torch.tensor([-1])]).to(torch.int64)
    ops.store(all_keys, all_values, kv_cache, slot_mapping, layout)
    return PagedBatch(
        keys, values, kv_cache, block_table, torch.tensor(seq_lens, dtype=torch.int32), layout
    )


def fp64_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    query_positions: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """Independent fp64 attention, one loop per query token and head.

    query [n, num_q_heads, d]; keys, values [seq_len, num_kv_heads, d] (original domain).
    """
    query, keys, values = query.double(), keys.double(), values.double()
    num_q_heads, num_kv_heads = query.shape[1], keys.shape[1]
    out = torch.zeros_like(query)
    for t in range(query.shape[0]):
        position = int(query_positions[t])
        low = 0 if sliding_window is None else max(0, position - sliding_window + 1)
        for h in range(num_q_heads):
            kv_head = h * num_kv_heads // num_q_heads
            scores = keys[low : position + 1, kv_head] @ query[t, h] * scale
            if logit_softcap is not None:
                scores = logit_softcap * torch.tanh(scores / logit_softcap)
            weights = torch.softmax(scores, dim=0)
            out[t, h] = weights @ values[low : position + 1, kv_head]
    return out


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()
