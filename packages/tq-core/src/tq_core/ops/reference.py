"""PyTorch reference of the paged ops: the ground truth for kernels and adapters (CPU or CUDA).

Conventions shared with the kernels (they follow vLLM's, which SGLang's and transformers' map
onto without copies):
- ``kv_cache``: uint8 [num_blocks, layout.page_bytes], one tensor per layer (layout.py).
- ``slot_mapping``: int [num_tokens], slot = block * block_size + offset, -1 = skip (padding).
- ``block_table``: int [num_seqs, max_blocks_per_seq], block ids in sequence order.
- ``seq_lens``: int [num_seqs], tokens in the cache per sequence, new tokens included (``store``
  runs before attention, as in vLLM).
- Queries are pre-rotated (``rotate_query``) and outputs are in the rotated domain
  (``unrotate_output``), so the cache is never rotated back.
- Query token j of a sequence with q new tokens sits at position seq_len - q + j and sees keys
  at positions <= its own (causal), and with ``sliding_window=W`` only the last W of them.
  ``logit_softcap=c`` applies c * tanh(s / c) to the scaled scores, as Gemma does.
"""

from __future__ import annotations

import torch

from tq_core.layout import CacheLayout
from tq_core.ops import validation
from tq_core.rotation import rotate_query, unrotate_output


def _region_view(kv_cache: torch.Tensor, layout: CacheLayout, region) -> torch.Tensor:
    """A writable [num_blocks, num_kv_heads, block_size, bytes] view of one region."""
    span = kv_cache[:, region.offset : region.offset + region.nbytes]
    return span.view(kv_cache.shape[0], layout.num_kv_heads, layout.block_size, -1)


def store(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    layout: CacheLayout,
) -> None:
    """Encode new tokens' K and V and write them into the paged cache.

    key, value: float [num_tokens, num_kv_heads, head_dim], original (unrotated) domain.
    kv_cache: uint8 [num_blocks, page_bytes], written in place.
    slot_mapping: int32/int64 [num_tokens]; -1 skips the token.
    """
    validation.check_store_inputs(key, value, kv_cache, slot_mapping, layout)
    validation.check_store_values(slot_mapping, kv_cache, layout)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // layout.block_size, slots % layout.block_size
    codec = layout.codec
    for tensor, x, fmt in (("key", key, layout.key_format), ("value", value, layout.value_format)):
        fields = codec.encode_fields(x[keep], fmt)
        for region in layout.regions_of(tensor):
            # Advanced indices around a slice: the result is [tokens, heads, bytes].
            _region_view(kv_cache, layout, region)[blocks, :, offsets] = fields[region.field]


def gather_kv(
    kv_cache: torch.Tensor,
    block_ids: torch.Tensor,
    seq_len: int,
    layout: CacheLayout,
    *,
    unrotate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one sequence's cached K and V, float32 [num_kv_heads, seq_len, head_dim] each,
    in the rotated domain, or rotated back to the original one with ``unrotate=True``.
    ``block_ids``: int [>= ceil(seq_len / block_size)].

    This is also the "decompress to a scratch buffer" half of a prefill path.
    """
    positions = torch.arange(seq_len, device=kv_cache.device)
    blocks = block_ids.long()[positions // layout.block_size]
    offsets = positions % layout.block_size
    decoded = []
    for tensor, fmt in (("key", layout.key_format), ("value", layout.value_format)):
        fields = {
            region.field: _region_view(kv_cache, layout, region)[blocks, :, offsets]
            for region in layout.regions_of(tensor)
        }
        # [seq_len, heads, head_dim] -> [heads, seq_len, head_dim]
        vectors = layout.codec.decode_fields(fields, fmt).transpose(0, 1)
        decoded.append(unrotate_output(vectors, layout.codec.seed) if unrotate else vectors)
    return decoded[0], decoded[1]


def attend(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    query_positions: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """Dense causal attention of one sequence, computed in float32 (float64 for a float64
    query: a float64 model then shares its precision with the decoded cache).

    query: [num_query_tokens, num_q_heads, head_dim]; keys, values: [num_kv_heads, seq_len,
    head_dim]; query_positions: int [num_query_tokens]. Returns [num_query_tokens, num_q_heads,
    head_dim]. GQA: query head h reads KV head h // (num_q_heads / num_kv_heads).
    """
    dtype = torch.promote_types(torch.promote_types(query.dtype, keys.dtype), torch.float32)
    group = query.shape[1] // keys.shape[0]
    keys = keys.to(dtype).repeat_interleave(group, dim=0)
    values = values.to(dtype).repeat_interleave(group, dim=0)
    scores = torch.einsum("nhd,hld->hnl", query.to(dtype), keys) * scale
    if logit_softcap is not None:
        scores = logit_softcap * torch.tanh(scores / logit_softcap)
    key_positions = torch.arange(keys.shape[1], device=keys.device)
    visible = key_positions.unsqueeze(0) <= query_positions.unsqueeze(1)
    if sliding_window is not None:
        visible &= key_positions.unsqueeze(0) > query_positions.unsqueeze(1) - sliding_window
    scores = scores.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("hnl,hld->nhd", weights, values)


def prefill_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    layout: CacheLayout,
    scale: float,
    *,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    out: torch.Tensor | None = None,
    rotate: bool = False,
    query_start_loc_host: list[int] | None = None,
    seq_lens_host: list[int] | None = None,
) -> torch.Tensor:
    """Attention of new tokens (ragged batch) against the compressed cache, causal.

    query: float [num_tokens, num_q_heads, head_dim], rotated, sequences back to back.
    query_start_loc: int [num_seqs + 1], sequence i owns rows start[i]:start[i + 1]; rows past
    start[num_seqs] (a padded batch) and sequences with no query rows are padding.
    block_table: int [num_seqs, max_blocks]; seq_lens: int [num_seqs] (new tokens included).
    Returns (or fills ``out``) [num_tokens, num_q_heads, head_dim] in query's dtype, rotated.
    ``rotate=True``: query and output are in the original domain instead (as in
    :func:`decode_attention`; the Triton op's dense path then rotates the keys back instead).
    ``query_start_loc_host``, ``seq_lens_host``: the same values as host lists, which spare the
    Triton op a read-back; here they are checked against the tensors (an engine's CPU copies
    must agree with what it hands the GPU).
    """
    validation.check_host_copies(
        query_start_loc, query_start_loc_host, seq_lens, seq_lens_host
    )  # fmt: skip
    if rotate:
        rotated = prefill_attention(
            rotate_query(query, layout.codec.seed), kv_cache, block_table, query_start_loc,
            seq_lens, layout, scale, sliding_window=sliding_window, logit_softcap=logit_softcap,
        )  # fmt: skip
        result = unrotate_output(rotated, layout.codec.seed)
        return result if out is None else out.copy_(result)
    validation.check_float("query", query, 3)
    validation.check_index("query_start_loc", query_start_loc, 1)
    num_seqs = query_start_loc.shape[0] - 1
    validation.check_attention_inputs(query, kv_cache, block_table, seq_lens, layout, num_seqs)
    validation.check_window_and_softcap(sliding_window, logit_softcap)
    starts, query_lens = validation.query_lengths(query_start_loc, query)
    validation.check_attention_values(kv_cache, block_table, seq_lens, query_lens, layout)
    result = torch.empty_like(query) if out is None else out
    # Rows past the last sequence are CUDA-graph padding: defined zeros, never garbage.
    result[starts[-1] :] = 0
    _attend_sequences(
        query,
        kv_cache,
        block_table,
        starts,
        seq_lens,
        layout,
        scale,
        sliding_window,
        logit_softcap,
        result,
    )
    return result


def _attend_sequences(
    query,
    kv_cache,
    block_table,
    starts,
    seq_lens,
    layout,
    scale,
    sliding_window,
    logit_softcap,
    result,
) -> None:
    """The shared body of both attention ops, on validated inputs: sequence i's query rows
    starts[i]:starts[i + 1] attend to its cached tokens. Sequences with no rows or seq_len 0
    (padding) are left as they are in ``result``."""
    for i in range(len(starts) - 1):
        start, end, seq_len = starts[i], starts[i + 1], int(seq_lens[i])
        if end == start or seq_len == 0:
            continue
        keys, values = gather_kv(kv_cache, block_table[i], seq_len, layout)
        positions = torch.arange(seq_len - (end - start), seq_len, device=query.device)
        result[start:end] = attend(
            query[start:end], keys, values, positions, scale, sliding_window, logit_softcap
        ).to(result.dtype)


def decode_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    layout: CacheLayout,
    scale: float,
    *,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    out: torch.Tensor | None = None,
    rotate: bool = False,
) -> torch.Tensor:
    """Decode attention: every sequence has the same number (1-8) of new query tokens.

    query: float [num_seqs, num_query_tokens, num_q_heads, head_dim], rotated; several query
    tokens per sequence are speculative-decoding verification, causal among themselves.
    block_table: int [num_seqs, max_blocks]; seq_lens: int [num_seqs] (new tokens included;
    0 marks a padding sequence, whose output is zeros).
    Returns (or fills ``out``) [num_seqs, num_query_tokens, num_q_heads, head_dim], rotated.
    ``rotate=True``: query and output are in the original domain instead (the op applies
    ``rotate_query`` and ``unrotate_output``; the Triton kernels fuse both).
    """
    if rotate:
        rotated = decode_attention(
            rotate_query(query, layout.codec.seed), kv_cache, block_table, seq_lens, layout,
            scale, sliding_window=sliding_window, logit_softcap=logit_softcap,
        )  # fmt: skip
        result = unrotate_output(rotated, layout.codec.seed)
        return result if out is None else out.copy_(result)
    num_seqs, num_query_tokens = validation.check_decode_query(query)
    validation.check_attention_inputs(query, kv_cache, block_table, seq_lens, layout, num_seqs)
    validation.check_window_and_softcap(sliding_window, logit_softcap)
    # seq_len 0 marks a padding sequence of a fixed-size (CUDA-graph) batch: it gets zeros.
    query_lens = (seq_lens > 0).to(seq_lens.dtype) * num_query_tokens
    validation.check_attention_values(kv_cache, block_table, seq_lens, query_lens, layout)
    result = torch.zeros_like(query) if out is None else out.zero_()
    starts = [i * num_query_tokens for i in range(num_seqs + 1)]
    _attend_sequences(
        query.reshape(-1, *query.shape[2:]),
        kv_cache,
        block_table,
        starts,
        seq_lens,
        layout,
        scale,
        sliding_window,
        logit_softcap,
        result.view(-1, *query.shape[2:]),
    )
    return result
