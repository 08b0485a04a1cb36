"""Triton paged attention over packed K/V: ``decode_attention`` and ``prefill_attention``.

One kernel serves both. A program owns one sequence, one KV head and either a tile of query
tokens (prefill) or a split of the key range (decode, flash-decoding). Its query rows are
(token, query head of the KV head's group) pairs, so each K/V tile is loaded and unpacked once
for the whole GQA group and feeds ``tl.dot`` directly. K/V never exist in bf16 outside
registers: a tile's codes become centroids (a table of at most 256 floats, cached on chip), the
key norms scale the scores, and the value norms scale the softmax weights, so the per-element
work is unpack + one table load. Splits write unnormalized partial results to a fixed workspace
and a second small kernel merges them. No host sync, no allocation after the first call with a
given shape: both ops can be captured in CUDA graphs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention.bias import causal_lower_right
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from tq_core.errors import TQInputError
from tq_core.layout import CacheLayout
from tq_core.ops import triton_decompress, triton_layout, validation
from tq_core.ops.triton_common import (
    INTERPRETED,
    codebook_words,
    dequantize,
    grid_values,
    half_times_signs,
    kronecker_hadamard,
    kronecker_unrotate,
    load_field,
    nibble_centroids,
    nibble_magnitude_words,
    nibble_pair_lookup,
    nibble_pair_registers,
    nibble_pairs_operands,
    nibble_pairs_pure,
    nibble_quads,
    nibble_quads_operands,
    prefetch_field,
    prefetch_lines,
    times_signs,
)
from tq_core.rotation import hadamard_signs, rotate_query, unrotate_output

_LOG2E = 1.4426950408889634

#: A dense causal attention kernel in the flash-attn varlen convention, for prefill's
#: "decompress" method: ``(q [tokens, q_heads, d], k, v [keys, kv_heads, d], cu_seqlens_q,
#: cu_seqlens_k (int32 [seqs + 1]), max_seqlen_q, max_seqlen_k, scale, out)`` writes into
#: ``out`` each sequence's queries attending to its keys, the causal mask aligned to the
#: sequences' ends (queries are the last tokens of their sequence).
DenseAttention = Callable[..., None]


@triton.jit
def _page_bases(table_row, tile_start, key_end, stride_page, BLOCK_SIZE: tl.constexpr,
                BLOCK_N: tl.constexpr, CLAMP: tl.constexpr = False):  # fmt: skip
    """int64 [BLOCK_N]: byte offset of the page of each key position of a tile (0 past the
    end; with ``CLAMP``, the last key's page)."""
    pos = tile_start + tl.arange(0, BLOCK_N)
    if CLAMP:
        page = tl.load(table_row + tl.minimum(pos, key_end - 1) // BLOCK_SIZE)
    else:
        page = tl.load(table_row + pos // BLOCK_SIZE, mask=pos < key_end, other=0)
    return page.to(tl.int64) * stride_page


@triton.jit
def _tile_fields(
    cache_ptr, page_base, tile_start, key_end, kv_head, BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, D: tl.constexpr,
    K_BITS: tl.constexpr, K_P0_OFF: tl.constexpr, K_P0_W: tl.constexpr, K_P1_OFF: tl.constexpr,
    K_P1_W: tl.constexpr, K_P2_OFF: tl.constexpr, K_P2_W: tl.constexpr,
    K_NORM_OFF: tl.constexpr, K_NORM_F16: tl.constexpr,
    V_BITS: tl.constexpr, V_P0_OFF: tl.constexpr, V_P0_W: tl.constexpr, V_P1_OFF: tl.constexpr,
    V_P1_W: tl.constexpr, V_P2_OFF: tl.constexpr, V_P2_W: tl.constexpr,
    V_NORM_OFF: tl.constexpr, V_NORM_F16: tl.constexpr, K_TRANSPOSED: tl.constexpr,
    V_WORDS: tl.constexpr, CLAMP: tl.constexpr = False,
):  # fmt: skip
    """The stored K and V bytes and norms of one key tile (load_field of each). Past key_end:
    zeros, or with ``CLAMP`` the last key's bytes again (no load is masked)."""
    pos = tile_start + tl.arange(0, BLOCK_N)
    if CLAMP:
        pos = tl.minimum(pos, key_end - 1)
        pos_ok = tl.full([BLOCK_N], 1, tl.int1)
    else:
        pos_ok = pos < key_end
    slot = kv_head * BLOCK_SIZE + pos % BLOCK_SIZE
    k0, k1, k2, k_norm = load_field(
        cache_ptr, page_base, slot, pos_ok, D, K_BITS, K_P0_OFF, K_P0_W, K_P1_OFF, K_P1_W,
        K_P2_OFF, K_P2_W, K_NORM_OFF, K_NORM_F16, K_TRANSPOSED,
    )  # fmt: skip
    v0, v1, v2, v_norm = load_field(
        cache_ptr, page_base, slot, pos_ok, D, V_BITS, V_P0_OFF, V_P0_W, V_P1_OFF, V_P1_W,
        V_P2_OFF, V_P2_W, V_NORM_OFF, V_NORM_F16, False, V_WORDS,
    )  # fmt: skip
    return k0, k1, k2, k_norm, v0, v1, v2, v_norm


@triton.jit
def _query_times_signs(q, signs_ptr, dims, cols, D: tl.constexpr):
    """q @ S[:, cols] for query rows as loaded: a half-precision query is one fp16 part (bf16's
    8-bit significand fits fp16's 11), one product; an fp32 one takes two (times_signs)."""
    if q.dtype != tl.float32:
        product = half_times_signs(q.to(tl.float16), signs_ptr, dims, cols, D)
    else:
        product = times_signs(q, signs_ptr, dims, cols, D, False)
    return product


@triton.jit
def _attention_kernel(
    q_ptr, cache_ptr, block_table_ptr, seq_lens_ptr, query_start_ptr, out_ptr,
    partial_acc_ptr, partial_stats_ptr, split_counts_ptr, k_cent_ptr, v_cent_ptr, signs_ptr,
    q_signs_ptr, stride_qr, stride_qh, stride_or, stride_oh, stride_page, stride_bt,
    num_seqs, num_rows, scale, softcap, window, num_splits, inv_sqrt_d,
    GROUP: tl.constexpr, NUM_KV_HEADS: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    TOKENS_PER_TILE: tl.constexpr, UNIFORM_Q: tl.constexpr, SPLIT: tl.constexpr,
    MERGE_IN_KERNEL: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_SLOTS: tl.constexpr,
    KEY_MASK: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_WINDOW: tl.constexpr, WAIT_PRIOR: tl.constexpr, LAUNCH_DEPENDENTS: tl.constexpr,
    LOOKUP: tl.constexpr, UNROTATE: tl.constexpr, ROTATE_Q: tl.constexpr,
    KRONECKER: tl.constexpr, PREFETCH_SIGNS: tl.constexpr, PREFETCH_FIRST: tl.constexpr,
    ROT_COLS: tl.constexpr,
    NIBBLE_LOW: tl.constexpr, NIBBLE_HIGH: tl.constexpr,
    NIBBLE_PAIRS: tl.constexpr, NIBBLE_QUADS: tl.constexpr, AFFINE_PAIRS: tl.constexpr,
    AFFINE_QUADS: tl.constexpr, PREFETCH: tl.constexpr, K_BITS: tl.constexpr,
    K_P0_OFF: tl.constexpr, K_P0_W: tl.constexpr, K_P0_SHIFT: tl.constexpr,
    K_P1_OFF: tl.constexpr, K_P1_W: tl.constexpr, K_P1_SHIFT: tl.constexpr,
    K_P2_OFF: tl.constexpr, K_P2_W: tl.constexpr, K_P2_SHIFT: tl.constexpr,
    K_NORM_OFF: tl.constexpr, K_NORM_F16: tl.constexpr,
    V_BITS: tl.constexpr,
    V_P0_OFF: tl.constexpr, V_P0_W: tl.constexpr, V_P0_SHIFT: tl.constexpr,
    V_P1_OFF: tl.constexpr, V_P1_W: tl.constexpr, V_P1_SHIFT: tl.constexpr,
    V_P2_OFF: tl.constexpr, V_P2_W: tl.constexpr, V_P2_SHIFT: tl.constexpr,
    V_NORM_OFF: tl.constexpr, V_NORM_F16: tl.constexpr,
    K_AFFINE: tl.constexpr, V_AFFINE: tl.constexpr, K_STEP: tl.constexpr, V_STEP: tl.constexpr,
    K_OFFSET: tl.constexpr, V_OFFSET: tl.constexpr,
):  # fmt: skip
    # Centroids and softmax weights fit fp16 (11-bit mantissa) better than bf16. Raw bf16 layers
    # (an uncompressed layer of the policy) multiply in fp32: their range may exceed fp16, and
    # Triton 3.6's interpreter, which runs these kernels in CI, gets bf16 products wrong.
    K_DOT: tl.constexpr = tl.float32 if K_BITS == 16 else tl.float16
    V_DOT: tl.constexpr = tl.float32 if V_BITS == 16 else tl.float16
    # 4-bit fields (K4, V4) skip re-interleaving the nibbles: the low nibbles are the even
    # dimensions, the high ones the odd, so each half multiplies the matching half of the query
    # (keys) or fills half of the output (values), and one table load per byte dequantizes
    # both (the k/v_cent_ptr tables are then nibble pairs). Other widths unpack fully.
    K_PAIRS: tl.constexpr = K_BITS == 4
    V_PAIRS: tl.constexpr = V_BITS == 4
    # lookup 5: 4-bit values read as 16-bit words, each giving dimensions 4j .. 4j + 3, so the
    # P.V product (contracting over tokens) can stage packed words, not fp16, for tl.dot.
    V_QUADS: tl.constexpr = V_PAIRS and (LOOKUP == 5 or LOOKUP == 6 or V_AFFINE)
    # K_AFFINE / V_AFFINE: a 4-bit field read on its integer grid (uniform or lloyd-max-grid),
    # level n = STEP * (code[n] - offset) (codebook.grid_codes). Its nibbles go to tl.dot as the
    # fp16 values 1024 + code[n] (inline PTX when compiled, LOOKUP > 0: an OR per two codes for
    # the uniform codebook, whose codes are n; two byte permutes per four codes for the Lloyd-Max
    # grid; the interpreter reads the codes from the table); K_OFFSET / V_OFFSET (1024 + offset)
    # comes off each product row afterwards (the query's sum for scores, the weights' sum for
    # the output) and STEP rides on the norms.
    HALF: tl.constexpr = D // 2
    QUARTER: tl.constexpr = D // 4
    # One query token per sequence (decode): every key before key_end is visible to it, and the
    # padding rows' results are never stored, so only keys past the end need masking: per key,
    # not per (row, key) score (a compare and a select per score, and masked loads, cost 73 of
    # 1,373 loop instructions per thread at head_dim 128 compiled for sm_90a: sm90a-probes JSON).
    # KEY_MASK (TUNING "key_mask", 1 by default) allows it, to time it against the per-score mask.
    ONE_QUERY: tl.constexpr = UNIFORM_Q == 1 and TOKENS_PER_TILE == 1
    KEY_MASK_ONLY: tl.constexpr = KEY_MASK and ONE_QUERY and not HAS_WINDOW and not HAS_SOFTCAP
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    if SPLIT:
        tile = 0
        split = tl.program_id(2)
    else:
        tile = tl.program_id(2)
        split = 0
    if LAUNCH_DEPENDENTS:
        # The merge launch may start now: its programs wait (gdc_wait) for this grid to
        # finish, and it launches only once every program here has started.
        gdc_launch_dependents()
    rows = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    heads = kv_head * GROUP + rows % GROUP
    if UNIFORM_Q > 0:
        start = seq * UNIFORM_Q
        query_len = UNIFORM_Q
    else:
        start = tl.load(query_start_ptr + seq)
        if seq == num_seqs:
            query_len = num_rows - start
        else:
            query_len = tl.load(query_start_ptr + seq + 1) - start
    first_token = tile * TOKENS_PER_TILE
    token = first_token + rows // GROUP
    row_ok = (rows < TOKENS_PER_TILE * GROUP) & (token < query_len)
    out_off = (start + token).to(tl.int64) * stride_or + heads * stride_oh
    if seq == num_seqs:
        # Rows past the last sequence are padding (a CUDA-graph batch): defined zeros, written
        # after the launch before has finished, as every other output.
        if WAIT_PRIOR:
            gdc_wait()
        zeros = tl.zeros([BLOCK_M, D], dtype=out_ptr.dtype.element_ty)
        tl.store(out_ptr + out_off[:, None] + dims[None, :], zeros, mask=row_ok[:, None])
        return
    if first_token >= query_len:
        return

    if PREFETCH_SIGNS:
        # The sign matrix the output is rotated back with, on its way into L2 while the keys
        # are read (one prefetch per 128-byte line of the fp16 matrix).
        prefetch_lines(signs_ptr + tl.arange(0, D * D // 64) * 64, 1)
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - query_len  # keys before the first new token
    query_pos = context + token
    # Output columns of each accumulator part (parts c, d: V_QUADS only).
    out_dims_c = 4 * tl.arange(0, QUARTER) + 2
    out_dims_d = out_dims_c + 1
    acc_c = tl.zeros([BLOCK_M, QUARTER], dtype=tl.float32)
    acc_d = tl.zeros([BLOCK_M, QUARTER], dtype=tl.float32)
    if V_QUADS:
        out_dims_a = 4 * tl.arange(0, QUARTER)
        out_dims_b = out_dims_a + 1
        acc_a = tl.zeros([BLOCK_M, QUARTER], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_M, QUARTER], dtype=tl.float32)
    elif V_PAIRS:
        out_dims_a = 2 * tl.arange(0, HALF)
        out_dims_b = out_dims_a + 1
        acc_a = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)
    else:
        out_dims_a = dims
        out_dims_b = 2 * tl.arange(0, HALF) + 1  # unused
        acc_a = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)  # unused

    key_end = tl.minimum(seq_len, context + tl.minimum(first_token + TOKENS_PER_TILE, query_len))
    key_start = 0
    if HAS_WINDOW:
        key_start = tl.maximum(context + first_token - window + 1, 0)
    if SPLIT:
        span = tl.maximum(key_end - key_start, 0)
        per_split = tl.cdiv(tl.cdiv(span, num_splits), BLOCK_N) * BLOCK_N
        key_start = key_start + split * per_split
        key_end = tl.minimum(key_end, key_start + per_split)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # V_AFFINE: the fp16 weights' sum per row, from tl.dot with a ones tile (exact products,
    # the same fp32 accumulation as the output's, and cheaper than converting the weights back).
    weight_sums = tl.zeros([BLOCK_M, 16], dtype=tl.float32)
    ones = tl.full([BLOCK_N, 16], 1.0, dtype=tl.float16)
    # The register lookups serve every 4-bit field but an affine one: K's and V's Lloyd-Max
    # magnitudes are the same words (one codebook per head_dim).
    K_TABLE: tl.constexpr = K_PAIRS and not K_AFFINE
    V_TABLE: tl.constexpr = V_PAIRS and not V_AFFINE
    if (LOOKUP == 2 or LOOKUP == 4) and (K_TABLE or V_TABLE):
        lut_ptr = k_cent_ptr if K_TABLE else v_cent_ptr
        lut = nibble_magnitude_words(lut_ptr)
    elif LOOKUP == 6 and (K_TABLE or V_TABLE):
        lut = codebook_words(k_cent_ptr if K_TABLE else v_cent_ptr)
    else:
        lut = (0, 0, 0, 0, 0)
    table_row = block_table_ptr + seq.to(tl.int64) * stride_bt
    if PREFETCH_FIRST and key_start < key_end:
        # The first key tile on its way into L2 before the query's rotation, whose loads and
        # products would otherwise come before that tile's loads.
        first_pages = _page_bases(
            table_row, key_start, key_end, stride_page, BLOCK_SIZE, BLOCK_N, KEY_MASK_ONLY
        )
        first_slot = kv_head * BLOCK_SIZE + (key_start + tl.arange(0, BLOCK_N)) % BLOCK_SIZE
        prefetch_field(
            cache_ptr, first_pages, first_slot, D, K_BITS, K_P0_OFF, K_P0_W, K_P1_OFF, K_P1_W,
            K_P2_OFF, K_P2_W, K_NORM_OFF, K_NORM_F16, 1,
        )  # fmt: skip
        prefetch_field(
            cache_ptr, first_pages, first_slot, D, V_BITS, V_P0_OFF, V_P0_W, V_P1_OFF, V_P1_W,
            V_P2_OFF, V_P2_W, V_NORM_OFF, V_NORM_F16, 1,
        )  # fmt: skip
    if PREFETCH > 0:
        tile_pages = _page_bases(
            table_row, key_start, key_end, stride_page, BLOCK_SIZE, BLOCK_N, KEY_MASK_ONLY
        )
    if WAIT_PRIOR:
        # Launched programmatically after the query rotation (rotate=True): everything above
        # overlapped its tail; the rotated queries are read only once it has finished.
        gdc_wait()
    q_off = (start + token).to(tl.int64) * stride_qr + heads * stride_qh
    even = 2 * tl.arange(0, HALF)
    if ROTATE_Q:
        # The query arrives in the model's domain (rotate=True in one wave of programs,
        # _rotates_query_in_kernel): R q = q @ S / sqrt(D) here, instead of a launch before this
        # one. For 4-bit keys q_signs_ptr is S with its even columns first
        # (triton_layout.sign_hadamard_halves), so each half is one contiguous tile.
        q = tl.load(q_ptr + q_off[:, None] + dims[None, :], mask=row_ok[:, None], other=0.0)
        if KRONECKER:
            # q_signs_ptr is the sign vector s (S = diag(s) H): R q = (q * s) @ H / sqrt(D),
            # H from registers (kronecker_hadamard); flipping signs is exact in q's own type.
            q_signs = tl.load(q_signs_ptr + dims).to(q.dtype)
            rotated = kronecker_hadamard(q * q_signs[None, :], D) * inv_sqrt_d
            if K_PAIRS:
                q_a, q_b = tl.split(tl.reshape(rotated, [BLOCK_M, HALF, 2]))
            else:
                q_a = rotated
        elif K_PAIRS:
            halves = tl.arange(0, HALF)
            q_a = _query_times_signs(q, q_signs_ptr, dims, halves, D) * inv_sqrt_d
            q_b = _query_times_signs(q, q_signs_ptr, dims, HALF + halves, D) * inv_sqrt_d
        else:
            q_a = _query_times_signs(q, q_signs_ptr, dims, dims, D) * inv_sqrt_d
    elif K_PAIRS:
        q_a = tl.load(q_ptr + q_off[:, None] + even[None, :], mask=row_ok[:, None], other=0.0)
        q_b = tl.load(q_ptr + q_off[:, None] + even[None, :] + 1, mask=row_ok[:, None], other=0.0)
    else:
        q_a = tl.load(q_ptr + q_off[:, None] + dims[None, :], mask=row_ok[:, None], other=0.0)
    if K_PAIRS:
        q_a = q_a.to(K_DOT)
        q_b = q_b.to(K_DOT)
        if K_AFFINE:
            # What 1024 + n adds to q . level, per row, from the fp16 query tl.dot sees.
            q_offset = K_OFFSET * (
                tl.sum(q_a.to(tl.float32), axis=1) + tl.sum(q_b.to(tl.float32), axis=1)
            )
    else:
        q_a = q_a.to(K_DOT)
        q_b = q_a
    for tile_start in range(key_start, key_end, BLOCK_N):
        pos = tile_start + tl.arange(0, BLOCK_N)
        pos_ok = pos < key_end
        if PREFETCH > 0:
            # The next tile's page numbers now; its bytes are prefetched at the end of this
            # iteration, when the numbers have arrived (global-load waits are the largest
            # stall: decode-levers/ncu-default-h100-b70155a.txt).
            # Clamped like the tile's loads (KEY_MASK_ONLY): a key past the end must read the
            # last key's page, not page 0, whose bytes may not be finite numbers.
            next_pages = _page_bases(
                table_row, tile_start + BLOCK_N, key_end, stride_page, BLOCK_SIZE, BLOCK_N,
                KEY_MASK_ONLY,
            )  # fmt: skip
        else:
            tile_pages = _page_bases(
                table_row, tile_start, key_end, stride_page, BLOCK_SIZE, BLOCK_N, KEY_MASK_ONLY
            )
        # Every load of the tile first (K and V bytes and norms), so they are in flight
        # together; then the arithmetic.
        k0, k1, k2, k_norm, v0, v1, v2, v_norm = _tile_fields(
            cache_ptr, tile_pages, tile_start, key_end, kv_head, BLOCK_SIZE, BLOCK_N, D,
            K_BITS, K_P0_OFF, K_P0_W, K_P1_OFF, K_P1_W, K_P2_OFF, K_P2_W, K_NORM_OFF, K_NORM_F16,
            V_BITS, V_P0_OFF, V_P0_W, V_P1_OFF, V_P1_W, V_P2_OFF, V_P2_W, V_NORM_OFF, V_NORM_F16,
            K_PAIRS and LOOKUP == 3 and not K_AFFINE, V_QUADS, KEY_MASK_ONLY,
        )  # fmt: skip
        if K_PAIRS:
            if K_AFFINE:
                if LOOKUP > 0:
                    # Transposed as bytes into a pure asm: tl.dot's layout change moves onto
                    # the bytes, as for lookup 5.
                    k_a, k_b = nibble_pairs_pure(tl.trans(k0), AFFINE_PAIRS)
                else:
                    k_t = tl.trans(k0).to(tl.int32)
                    k_a = grid_values(k_cent_ptr, k_t & 0xF)
                    k_b = grid_values(k_cent_ptr, k_t >> 4)
                scores = tl.dot(q_b, k_b, tl.dot(q_a, k_a)) - q_offset[:, None]
            elif LOOKUP == 3:  # k0 is [bytes, tokens]
                k_a = nibble_centroids(k0, NIBBLE_LOW)
                k_b = nibble_centroids(k0, NIBBLE_HIGH)
                scores = tl.dot(q_b, k_b, tl.dot(q_a, k_a))
            elif LOOKUP == 5:
                # One pure asm, codebook as immediates: Triton stages K's bytes for tl.dot.
                k_a, k_b = nibble_pairs_pure(tl.trans(k0), NIBBLE_PAIRS)
                scores = tl.dot(q_b, k_b, tl.dot(q_a, k_a))
            elif LOOKUP == 6:
                # 5 with the codebook words loaded, not immediates (kept in registers).
                k_a, k_b = nibble_pairs_operands(tl.trans(k0), lut, NIBBLE_PAIRS)
                scores = tl.dot(q_b, k_b, tl.dot(q_a, k_a))
            elif LOOKUP == 4:
                # Transposed as bytes, then a pure lookup: Triton moves the layout change for
                # tl.dot ahead of it, so K's bytes, not its fp16 tile, cross shared memory.
                k_a = nibble_centroids(tl.trans(k0), NIBBLE_LOW)
                k_b = nibble_centroids(tl.trans(k0), NIBBLE_HIGH)
                scores = tl.dot(q_b, k_b, tl.dot(q_a, k_a))
            else:
                if LOOKUP == 2:
                    k_a, k_b = nibble_pair_registers(k0, *lut)
                else:
                    k_a, k_b = nibble_pair_lookup(k0, k_cent_ptr)
                scores = tl.dot(q_b, tl.trans(k_b), tl.dot(q_a, tl.trans(k_a)))
        else:
            k = dequantize(
                k0, k1, k2, k_cent_ptr, D, K_BITS, K_P0_W, K_P0_SHIFT, K_P1_W, K_P1_SHIFT,
                K_P2_W, K_P2_SHIFT, K_DOT, LOOKUP,
            )  # fmt: skip
            scores = tl.dot(q_a, tl.trans(k))
        if K_AFFINE:
            k_norm = k_norm * K_STEP
        if KEY_MASK_ONLY:
            # log2(e) for exp2 below rides on the per-key factor, and keys past the end get
            # -inf from a per-key bias: one FFMA per score, no compare and select.
            key_bias = tl.where(pos_ok, 0.0, float("-inf"))
            scores = scores * (k_norm * (scale * 1.4426950408889634))[None, :] + key_bias[None, :]
        else:
            if HAS_SOFTCAP:
                scores = scores * (k_norm * scale)[None, :]
                # softcap * tanh(s / softcap), with tanh from exp (no libdevice in the
                # interpreter).
                scores = softcap * (1.0 - 2.0 / (tl.exp(2.0 * scores / softcap) + 1.0))
                scores = scores * 1.4426950408889634  # log2(e): exp2 below
            else:
                scores = scores * (k_norm * (scale * 1.4426950408889634))[None, :]
            visible = pos_ok[None, :] & (pos[None, :] <= query_pos[:, None])
            if HAS_WINDOW:
                visible = visible & (pos[None, :] > query_pos[:, None] - window)
            scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(scores - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if V_AFFINE:
            v_norm = v_norm * V_STEP
        weights = (p * v_norm[None, :]).to(V_DOT)
        if V_AFFINE:
            # Per 16-bit word: nibble 0 is dimension 4j, 1 is 4j + 1, and so on.
            if LOOKUP > 0:
                v_a, v_b, v_c, v_d = nibble_quads(v0, AFFINE_QUADS)
            else:
                v_w = v0.to(tl.int32)
                v_a = grid_values(v_cent_ptr, v_w & 0xF)
                v_b = grid_values(v_cent_ptr, (v_w >> 4) & 0xF)
                v_c = grid_values(v_cent_ptr, (v_w >> 8) & 0xF)
                v_d = grid_values(v_cent_ptr, v_w >> 12)
            weight_sums = tl.dot(weights, ones, weight_sums * alpha[:, None])
            acc_a = tl.dot(weights, v_a, acc_a * alpha[:, None])
            acc_b = tl.dot(weights, v_b, acc_b * alpha[:, None])
            acc_c = tl.dot(weights, v_c, acc_c * alpha[:, None])
            acc_d = tl.dot(weights, v_d, acc_d * alpha[:, None])
        elif V_QUADS:
            if LOOKUP == 6:
                v_a, v_b, v_c, v_d = nibble_quads_operands(v0, lut, NIBBLE_QUADS)
            else:
                v_a, v_b, v_c, v_d = nibble_quads(v0, NIBBLE_QUADS)
            acc_a = tl.dot(weights, v_a, acc_a * alpha[:, None])
            acc_b = tl.dot(weights, v_b, acc_b * alpha[:, None])
            acc_c = tl.dot(weights, v_c, acc_c * alpha[:, None])
            acc_d = tl.dot(weights, v_d, acc_d * alpha[:, None])
        elif V_PAIRS:
            if LOOKUP == 3:
                v_a = nibble_centroids(v0, NIBBLE_LOW)
                v_b = nibble_centroids(v0, NIBBLE_HIGH)
            elif LOOKUP == 2 or LOOKUP == 4:
                v_a, v_b = nibble_pair_registers(v0, *lut)
            else:
                v_a, v_b = nibble_pair_lookup(v0, v_cent_ptr)
            acc_a = tl.dot(weights, v_a, acc_a * alpha[:, None])
            acc_b = tl.dot(weights, v_b, acc_b * alpha[:, None])
        else:
            v = dequantize(
                v0, v1, v2, v_cent_ptr, D, V_BITS, V_P0_W, V_P0_SHIFT, V_P1_W, V_P1_SHIFT,
                V_P2_W, V_P2_SHIFT, V_DOT, LOOKUP,
            )  # fmt: skip
            acc_a = tl.dot(weights, v, acc_a * alpha[:, None])
        m_i = m_new
        if PREFETCH > 0 and tile_start + BLOCK_N < key_end:
            next_slot = kv_head * BLOCK_SIZE + (pos + BLOCK_N) % BLOCK_SIZE
            prefetch_field(
                cache_ptr, next_pages, next_slot, D, K_BITS, K_P0_OFF, K_P0_W, K_P1_OFF, K_P1_W,
                K_P2_OFF, K_P2_W, K_NORM_OFF, K_NORM_F16, PREFETCH,
            )  # fmt: skip
            prefetch_field(
                cache_ptr, next_pages, next_slot, D, V_BITS, V_P0_OFF, V_P0_W, V_P1_OFF, V_P1_W,
                V_P2_OFF, V_P2_W, V_NORM_OFF, V_NORM_F16, PREFETCH,
            )  # fmt: skip
            tile_pages = next_pages

    if V_AFFINE:
        # The weights' sum times V_OFFSET is what the 1024 + code values added to every
        # column beyond the levels (the ones tile's columns are equal: max picks one, exactly).
        shift = V_OFFSET * tl.max(weight_sums, axis=1)[:, None]
        acc_a -= shift
        acc_b -= shift
        acc_c -= shift
        acc_d -= shift
    if SPLIT:
        # Only the rows that hold queries: a decode token's GQA group often fills a quarter of
        # the tile, and at short context these partials cost as much traffic as the KV bytes.
        part = ((seq * NUM_KV_HEADS + kv_head) * num_splits + split).to(tl.int64)
        used = rows < UNIFORM_Q * GROUP
        acc_rows = partial_acc_ptr + (part * BLOCK_M + rows)[:, None] * D
        tl.store(acc_rows + out_dims_a[None, :], acc_a, mask=used[:, None])
        if V_PAIRS:
            tl.store(acc_rows + out_dims_b[None, :], acc_b, mask=used[:, None])
        if V_QUADS:
            tl.store(acc_rows + out_dims_c[None, :], acc_c, mask=used[:, None])
            tl.store(acc_rows + out_dims_d[None, :], acc_d, mask=used[:, None])
        tl.store(partial_stats_ptr + (part * 2) * BLOCK_M + rows, m_i, mask=used)
        tl.store(partial_stats_ptr + (part * 2 + 1) * BLOCK_M + rows, l_i, mask=used)
        if MERGE_IN_KERNEL:
            # The last split of this (sequence, KV head) to finish merges them all, instead of
            # a second launch: at short context the merge kernel's launch and tail cost as much
            # as the attention itself. Every thread's partial stores come before the barrier,
            # the release publishes them, and the last split's acquire sees them; its count
            # goes back to 0 for the next call (or CUDA-graph replay).
            tl.debug_barrier()
            count_ptr = split_counts_ptr + seq * NUM_KV_HEADS + kv_head
            finished = tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu")
            if finished == num_splits - 1:
                tl.store(count_ptr, 0)
                _merge_splits(
                    partial_acc_ptr, partial_stats_ptr, out_ptr, signs_ptr, stride_or,
                    stride_oh, num_splits, inv_sqrt_d, seq, kv_head, GROUP, NUM_KV_HEADS, D,
                    BLOCK_M, UNIFORM_Q, UNROTATE, KRONECKER, ROT_COLS, MERGE_ROWS, MERGE_SLOTS,
                )  # fmt: skip
    else:
        inv_l = 1.0 / tl.where(l_i > 0, l_i, 1.0)
        out_rows = out_ptr + out_off[:, None]
        if UNROTATE and KRONECKER:
            # out = acc @ S^T / sqrt(D) = (acc @ H) * s / sqrt(D), signs_ptr the sign vector s:
            # the parts interleaved back into dimension order first (V_QUADS: a b c d per
            # four dimensions, V_PAIRS: a b per two; a join's new axis is the last, so the
            # outer join picks between a and b).
            if V_QUADS:
                natural = tl.join(tl.join(acc_a, acc_c), tl.join(acc_b, acc_d))
            elif V_PAIRS:
                natural = tl.join(acc_a, acc_b)
            else:
                natural = acc_a
            natural = tl.reshape(natural, [BLOCK_M, D]) * inv_l[:, None]
            result = kronecker_unrotate(natural, signs_ptr, inv_sqrt_d, D)
            tl.store(
                out_rows + dims[None, :], result.to(out_ptr.dtype.element_ty), mask=row_ok[:, None]
            )
        elif UNROTATE:
            # Back to the original domain: out = acc @ S^T / sqrt(D), rows of S^T matching the
            # accumulator's columns, ROT_COLS output columns at a time (each part normalized
            # once, before the column slices).
            part_a = acc_a * inv_l[:, None]
            if V_PAIRS:
                part_b = acc_b * inv_l[:, None]
            if V_QUADS:
                part_c = acc_c * inv_l[:, None]
                part_d = acc_d * inv_l[:, None]
            for block in tl.static_range(D // ROT_COLS):
                cols = block * ROT_COLS + tl.arange(0, ROT_COLS)
                result = times_signs(part_a, signs_ptr, out_dims_a, cols, D, True)
                if V_PAIRS:
                    result += times_signs(part_b, signs_ptr, out_dims_b, cols, D, True)
                if V_QUADS:
                    result += times_signs(part_c, signs_ptr, out_dims_c, cols, D, True)
                    result += times_signs(part_d, signs_ptr, out_dims_d, cols, D, True)
                result = (result * inv_sqrt_d).to(out_ptr.dtype.element_ty)
                tl.store(out_rows + cols[None, :], result, mask=row_ok[:, None])
        else:
            result = (acc_a * inv_l[:, None]).to(out_ptr.dtype.element_ty)
            tl.store(out_rows + out_dims_a[None, :], result, mask=row_ok[:, None])
            if V_PAIRS:
                result = (acc_b * inv_l[:, None]).to(out_ptr.dtype.element_ty)
                tl.store(out_rows + out_dims_b[None, :], result, mask=row_ok[:, None])
            if V_QUADS:
                result = (acc_c * inv_l[:, None]).to(out_ptr.dtype.element_ty)
                tl.store(out_rows + out_dims_c[None, :], result, mask=row_ok[:, None])
                result = (acc_d * inv_l[:, None]).to(out_ptr.dtype.element_ty)
                tl.store(out_rows + out_dims_d[None, :], result, mask=row_ok[:, None])


@triton.jit
def _rotate_queries_kernel(
    q_ptr, out_ptr, signs_ptr, stride_qr, stride_qh, num_heads, inv_sqrt_d,
    HEADS: tl.constexpr, D: tl.constexpr, ROT_COLS: tl.constexpr,
    LAUNCH_DEPENDENTS: tl.constexpr,
):  # fmt: skip
    """R q for every head of one query row (program 0), ROT_COLS of its columns (program 1),
    into float32 rows [heads, D]."""
    if LAUNCH_DEPENDENTS:
        gdc_launch_dependents()  # the attention launch's prologue overlaps this grid
    row = tl.program_id(0)
    heads = tl.arange(0, HEADS)
    dims = tl.arange(0, D)
    cols = tl.program_id(1) * ROT_COLS + tl.arange(0, ROT_COLS)
    ok = heads < num_heads
    q = tl.load(
        q_ptr + row.to(tl.int64) * stride_qr + heads[:, None] * stride_qh + dims[None, :],
        mask=ok[:, None], other=0.0,
    ).to(tl.float32)  # fmt: skip
    rotated = times_signs(q, signs_ptr, dims, cols, D, False) * inv_sqrt_d
    out = out_ptr + (row.to(tl.int64) * num_heads + heads[:, None]) * D + cols[None, :]
    tl.store(out, rotated, mask=ok[:, None])


@triton.jit
def _merge_splits(
    partial_acc_ptr, partial_stats_ptr, out_ptr, signs_ptr, stride_or, stride_oh, num_splits,
    inv_sqrt_d, seq, kv_head,
    GROUP: tl.constexpr, NUM_KV_HEADS: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
    UNIFORM_Q: tl.constexpr, UNROTATE: tl.constexpr, KRONECKER: tl.constexpr,
    ROT_COLS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_SLOTS: tl.constexpr,
):  # fmt: skip
    """out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s over the splits of one (sequence,
    KV head). The partials are read past L1 (``.cg``): other programs wrote them.

    MERGE_SLOTS splits per round, as one [MERGE_SLOTS * MERGE_ROWS, D] tile (MERGE_ROWS: the
    query rows the splits wrote, padded to a power of two): the loads of a round depend on
    nothing before them, so they are in flight together, and a merge of 17 splits waits on 3
    round trips to L2 where reading one split's maximum, then its sum and partial, after
    another waited on 51 (11.4 us of 8 x 16K's call on an H100, decode-kernel-times-h100-144d3cf).
    Each slot keeps its own running maximum, so a round needs no change of layout; the slots of
    each query row are merged once, at the end."""
    SLOT_ROWS: tl.constexpr = MERGE_SLOTS * MERGE_ROWS
    slot_rows = tl.arange(0, SLOT_ROWS)
    slot = slot_rows // MERGE_ROWS
    row = slot_rows % MERGE_ROWS
    dims = tl.arange(0, D)
    first = ((seq * NUM_KV_HEADS + kv_head) * num_splits).to(tl.int64)
    row_ok = row < UNIFORM_Q * GROUP  # the rows the splits wrote
    m_slot = tl.full([SLOT_ROWS], float("-inf"), dtype=tl.float32)
    l_slot = tl.zeros([SLOT_ROWS], dtype=tl.float32)
    acc = tl.zeros([SLOT_ROWS, D], dtype=tl.float32)
    for first_split in range(0, num_splits, MERGE_SLOTS):
        split = first_split + slot
        ok = row_ok & (split < num_splits)
        part = first + split
        stats = partial_stats_ptr + (part * 2) * BLOCK_M + row
        m_split = tl.load(stats, mask=ok, other=float("-inf"), cache_modifier=".cg")
        l_split = tl.load(stats + BLOCK_M, mask=ok, other=0.0, cache_modifier=".cg")
        partial = tl.load(
            partial_acc_ptr + (part * BLOCK_M + row)[:, None] * D + dims[None, :],
            mask=ok[:, None],
            other=0.0,
            cache_modifier=".cg",
        )
        m_new = tl.maximum(m_slot, m_split)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        old_scale = tl.exp2(m_slot - m_use)
        new_scale = tl.exp2(m_split - m_use)
        l_slot = l_slot * old_scale + l_split * new_scale
        acc = acc * old_scale[:, None] + partial * new_scale[:, None]
        m_slot = m_new
    # Each query row over its slots: the row's maximum, and each slot's share of its sum.
    m_grid = tl.reshape(m_slot, [MERGE_SLOTS, MERGE_ROWS])
    m_row = tl.max(m_grid, axis=0)
    slot_scale = tl.exp2(m_grid - tl.where(m_row == float("-inf"), 0.0, m_row)[None, :])
    total = tl.sum(slot_scale * tl.reshape(l_slot, [MERGE_SLOTS, MERGE_ROWS]), axis=0)
    share = slot_scale / tl.where(total > 0, total, 1.0)[None, :]
    acc = acc * tl.reshape(share, [SLOT_ROWS])[:, None]
    out_row = tl.arange(0, MERGE_ROWS)
    token = out_row // GROUP
    heads = kv_head * GROUP + out_row % GROUP
    out_ok = out_row < UNIFORM_Q * GROUP
    out_rows = out_ptr + (seq * UNIFORM_Q + token).to(tl.int64)[:, None] * stride_or
    out_rows += heads[:, None] * stride_oh
    if UNROTATE and KRONECKER:
        # signs_ptr is the sign vector: every slot's rows in one product (kronecker_unrotate)
        # before the slots are summed.
        part = kronecker_unrotate(acc, signs_ptr, inv_sqrt_d, D)
        result = tl.sum(tl.reshape(part, [MERGE_SLOTS, MERGE_ROWS, D]), axis=0)
        tl.store(
            out_rows + dims[None, :], result.to(out_ptr.dtype.element_ty), mask=out_ok[:, None]
        )
    elif UNROTATE:
        # The rotation back is linear: each slot's share rotates before the slots are summed,
        # so the product keeps SLOT_ROWS (at least 16) rows.
        for block in tl.static_range(D // ROT_COLS):
            cols = block * ROT_COLS + tl.arange(0, ROT_COLS)
            part = times_signs(acc, signs_ptr, dims, cols, D, True) * inv_sqrt_d
            result = tl.sum(tl.reshape(part, [MERGE_SLOTS, MERGE_ROWS, ROT_COLS]), axis=0)
            tl.store(
                out_rows + cols[None, :], result.to(out_ptr.dtype.element_ty), mask=out_ok[:, None]
            )
    else:
        result = tl.sum(tl.reshape(acc, [MERGE_SLOTS, MERGE_ROWS, D]), axis=0)
        tl.store(
            out_rows + dims[None, :], result.to(out_ptr.dtype.element_ty), mask=out_ok[:, None]
        )


@triton.jit
def _merge_splits_kernel(
    partial_acc_ptr, partial_stats_ptr, out_ptr, signs_ptr, stride_or, stride_oh, num_splits,
    inv_sqrt_d,
    GROUP: tl.constexpr, NUM_KV_HEADS: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
    UNIFORM_Q: tl.constexpr, UNROTATE: tl.constexpr, KRONECKER: tl.constexpr,
    ROT_COLS: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_SLOTS: tl.constexpr,
    WAIT_PRIOR: tl.constexpr,
):  # fmt: skip
    """The merge as its own launch, a program per (sequence, KV head) (``merge`` 0)."""
    if WAIT_PRIOR:
        gdc_wait()  # launched programmatically: the partials are complete only after this
    _merge_splits(
        partial_acc_ptr, partial_stats_ptr, out_ptr, signs_ptr, stride_or, stride_oh, num_splits,
        inv_sqrt_d, tl.program_id(0), tl.program_id(1), GROUP, NUM_KV_HEADS, D, BLOCK_M,
        UNIFORM_Q, UNROTATE, KRONECKER, ROT_COLS, MERGE_ROWS, MERGE_SLOTS,
    )  # fmt: skip


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few splits, so tests exercise the merge
    return torch.cuda.get_device_properties(device).multi_processor_count


_BUFFERS: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}


def _kept_buffer(
    purpose: str, device: torch.device, numel: int, dtype: torch.dtype, zeroed: bool = False
) -> torch.Tensor:
    """A flat buffer of at least ``numel`` elements per (purpose, device, dtype), kept and grown
    on demand, so steady-state calls (and CUDA-graph replays) allocate nothing. ``zeroed``
    buffers start as zeros (whoever uses them must leave them so). Calls on one device must
    not run concurrently on different streams."""
    key = (purpose, torch.device(device), dtype)
    buffer = _BUFFERS.get(key)
    if buffer is None or buffer.numel() < numel:
        make = torch.zeros if zeroed else torch.empty
        buffer = make(numel, dtype=dtype, device=device)
        _BUFFERS[key] = buffer
    return buffer


def _split_count(num_seqs: int, layout: CacheLayout, max_tokens: int, device) -> int:
    """Splits of the key range per (sequence, KV head): enough programs to fill the GPU
    (``programs_per_sm`` per multiprocessor; with at least one pair per multiprocessor, none
    longer than ``max_split_tiles`` key tiles), at most one per key tile of the longest sequence
    the block table can hold, and two tiles per split once that still leaves a program per
    multiprocessor: a one-tile split pays its fixed work (query, partial result, merge) for
    little KV (8 x 1K: 1.07x bf16 with two tiles, 0.99x with one; 1 x 1K: 0.78x with two,
    0.88x with one; decode-levers-h200-c83cc80). Shapes only, so a CUDA graph fixes it; each
    program sizes its split from the sequence's true length, so short sequences leave the last
    splits empty."""
    tuning = TUNING["decode"]
    programs = max(1, num_seqs * layout.num_kv_heads)
    multiprocessors = _multiprocessors(device)
    tiles = max_tokens // _setting(tuning, layout, "block_n")
    splits = triton.cdiv(tuning["programs_per_sm"] * multiprocessors, programs)
    if programs >= multiprocessors:
        # Many (sequence, KV head) pairs: splits of at most max_split_tiles tiles, so the last
        # programs to start are short and the work evens out across multiprocessors. (With
        # fewer pairs the rule above already gives 16+ splits; more only add a partial wave.)
        splits = max(splits, triton.cdiv(tiles, tuning["max_split_tiles"]))
    splits = min(splits, tiles, 64)
    if programs * min(splits, tiles // 2) >= multiprocessors:
        splits = min(splits, tiles // 2)
    return max(1, splits)


def _rotation_cols(head_dim: int) -> int:
    """Output columns per rotation product, so that a [head_dim, cols] fp16 slice of the sign
    matrix is what the registers hold: all of it up to head_dim 128, 8,192 // head_dim columns
    above. Whole at head_dim 256 it spilled (sm_90a, lookup 5 at 160 registers, the kernel that
    merges its splits and rotates back: 2,156 bytes; 1,156 in 64-column slices, 720 in 32,
    against 620 without rotating back; benchmarks/static_cost.py) and rotate=True took 1.8x the
    rotated-domain call's time at Gemma-2's 8 x 4K (kernels-decode-h200-dd52956)."""
    return head_dim if head_dim <= 128 else 8192 // head_dim


def _grid_fields(layout: CacheLayout, lookup: int) -> tuple[bool, bool]:
    """Whether K and V take the integer-grid path (1024 + code into tl.dot) under the launch's
    lookup setting ``lookup`` (before the interpreter's 0). Uniform 4-bit fields take it where
    lookup 5 or more runs: in that path's layout (K's bytes transposed, V's 16-bit words) it ran
    1.2-1.4x faster than the Lloyd-Max permutes at head_dim 128 and 256, but 2.8-3.3x slower at
    head_dim 64 under the small-head launch (lookup 2, one stage:
    kernels-decode-smollm2-gemma-h200-6620f6c), which therefore keeps the table lookup. The
    Lloyd-Max grid codebook's fields take it in the same launches (two byte permutes per four
    codes instead of the OR)."""
    return tuple(
        lookup >= 5 and triton_layout.grid_nibbles(layout, tensor) for tensor in ("key", "value")
    )


def _kernel_constants(layout: CacheLayout, lookup: int) -> dict:
    """``lookup``: the launch's lookup setting (before the interpreter's 0)."""
    k_grid, v_grid = _grid_fields(layout, lookup)
    k_offset, k_step = triton_layout.grid_offset_step(layout, "key")
    v_offset, v_step = triton_layout.grid_offset_step(layout, "value")
    return {
        "ROT_COLS": _rotation_cols(layout.head_dim),
        "K_AFFINE": k_grid,
        "V_AFFINE": v_grid,
        "K_STEP": k_step if k_grid else 1.0,
        "V_STEP": v_step if v_grid else 1.0,
        "K_OFFSET": k_offset if k_grid else 0.0,
        "V_OFFSET": v_offset if v_grid else 0.0,
        **triton_layout.field_constants(layout, "key", "K_"),
        **triton_layout.field_constants(layout, "value", "V_"),
    }


def _nibble_constants(layout: CacheLayout, lookup: int) -> dict:
    """The inline PTX of the immediate-table lookups (lookups 3-5) when a field is 4-bit."""
    four_bit = any(
        fmt.compressed and fmt.mse_bits == 4 for fmt in (layout.key_format, layout.value_format)
    )
    constants = {"NIBBLE_LOW": "", "NIBBLE_HIGH": "", "NIBBLE_PAIRS": "", "NIBBLE_QUADS": ""}
    # Grid fields (_grid_fields): their PTX wherever a compiled lookup runs (K's bytes as pairs,
    # V's words as quads).
    for name, tensor, quads in (("AFFINE_PAIRS", "key", False), ("AFFINE_QUADS", "value", True)):
        constants[name] = (
            triton_layout.grid_asm(
                layout.head_dim, triton_layout.field_codebook(layout, tensor), quads
            )
            if lookup > 0 and triton_layout.grid_nibbles(layout, tensor)
            else ""
        )
    # The immediates: the one codebook the permutes read (_lookup falls back to the table
    # where K and V would need two).
    permuted = _permuted_codebooks(layout, lookup)
    codebook = permuted[0] if len(set(permuted)) == 1 else "lloyd-max"
    if four_bit and lookup in (3, 4):
        for name, high in (("NIBBLE_LOW", False), ("NIBBLE_HIGH", True)):
            constants[name] = triton_layout.nibble_asm(layout.head_dim, high, codebook)
    if four_bit and lookup == 5:
        for name, quads in (("NIBBLE_PAIRS", False), ("NIBBLE_QUADS", True)):
            constants[name] = triton_layout.nibble_group_asm(layout.head_dim, quads, codebook)
    if four_bit and lookup == 6:
        constants["NIBBLE_PAIRS"] = triton_layout.nibble_group_operand_asm(quads=False)
        constants["NIBBLE_QUADS"] = triton_layout.nibble_group_operand_asm(quads=True)
    return constants


# Launch settings, per op. Kept in one dict so the benchmark's tuning mode can try others.
TUNING = {
    # From the tune suites on an H200 (benchmarks/results/kernels-tune-h200*.json) and the
    # compiler's register report.
    # num_stages 3 (with prefetch 0 and maxnreg 128) where lookup 5 runs: its K bytes, V
    # words and norms already cross shared memory for tl.dot, so Triton 3.6's pipeliner turns
    # their loads into cp.async copies two tiles ahead, which bypass registers: the loop spills
    # 8 bytes at 128 registers (96 with one stage; static-cost-sm90a JSON), four programs fit a
    # multiprocessor instead of three, and the L2 prefetch only adds instructions. On an H200,
    # 3 stages at 128 registers against the one-stage, prefetching launch at 160: 1 x 16K
    # 0.0348 ms against 0.0389, 8 x 16K 0.1020 against 0.1063, 32 x 32K 0.6610 against 0.6979,
    # 128 x 32K 2.552 against 2.667, 8 x 1K 0.0129 against 0.0135
    # (decode-levers-regs-h200-5fee6fa; 2 and 4 stages, 64-token tiles and 3 stages with the
    # prefetch were slower or no faster there and in decode-levers-stages-h200-1c7c887).
    # Lookup 2 (head_dim below 128, wide fields) pipelines in registers, not shared memory:
    # SmolLM2's shape ran 3-8% slower in 3 stages (kernels-decode-extra-h200-1d0d68c), so
    # small_head_* and wide_* keep one stage and the prefetch; head_dim above 128 (lookup 5
    # uncapped) 1-4% faster at batch 8-32 in 3 stages (same file).
    # lookup: how 4-bit codes become centroids. 0 reads a table through L1 (any device, the
    # interpreter included); 2 permutes bytes of magnitudes held in registers (GPU: 1.5x faster
    # decode than 0, benchmarks/results/decode-levers-*.json); 3 is 2 with the packed bytes
    # staged for tl.dot instead of the fp16 values (slower: registers); 4 stages K's bytes only
    # (V as 2); 5 stages K's bytes and V's 16-bit words (pure lookups, the codebook as
    # immediates): about a quarter of 2's shared-memory instructions for 26% more instructions,
    # at 160 registers without spills (static-cost-sm90a-*.json). Timed on an H200: 4 and 5 at
    # 160 registers equal 2 at 128 within 1% in the kernel sweep (decode-levers-h200-962fb12),
    # and in vLLM 5 gave +2-3% gen tok/s in two calls (vllm-h200-x4), so 5 at 160 registers is
    # the default where every field has at most 4 bits. Wider layouts keep 2 (wide_lookup):
    # 5 was never timed on them. 6 is 5 with the codebook words loaded once instead of
    # immediates, which ptxas copies from a uniform register before every permute: compiled
    # for sm_90a, 1,236 loop instructions uncapped (168 registers, the same three programs per
    # multiprocessor as 160) against 5's 1,403 (static-cost-sm90a-*.json), yet within 1% of 5 at
    # 16-32K on an H200 (decode-levers-h200-7b3c6b5: the kernel waits on latency), so
    # opt-in (TQ_TRITON_TUNING=decode.lookup=6,decode.maxnreg=0). The interpreter always gets 0.
    # maxnreg: with one stage, 160 is what lookup 5 needs without spilling; lookup 2 ran best
    # at 128 (four programs per multiprocessor instead of three, 8-14% at 8-128 x 16-32K on an
    # H100, decode-levers-h100-b70155a.json).
    # prefetch 1 (one-stage launches): the next key tile's lines into L2 during the current
    # tile (1.01-1.04x at 16-32K; L1, 2, is the same); programs_per_sm 8 sizes the split-K
    # count (1.02-1.04x over 4 at 32-128 x 16-32K): decode-levers-h200-c83cc80 and -b26e280.
    # max_split_tiles 24: with at least one (sequence, KV head) pair per multiprocessor, long
    # sequences are cut into splits of at most 24 key tiles (3,072 tokens) even though 8
    # programs per multiprocessor are already there. Timed at explicit split counts on an H200
    # (decode-levers-splits-h200-b3d9045): 32 x 32K 0.6540 ms at 12 splits against 0.6661 at
    # the 5 the programs alone gave, 128 x 32K 2.467 at 12 against 2.592 at 2; 8-32 x 16K within
    # 1% of 8-17 splits. In the suite (kernels-decode-h200-34dffc2) 128 x 16K 1.54x bf16 from
    # 1.49x, 128 x 32K 1.56x from 1.49x, 32 x 64K 1.49x from 1.43x; but 8 x 64K (64 pairs) ran
    # 5% slower at 22 splits than at 17, hence the pair condition.
    # small_head_*: head_dim below 128 (SmolLM2's 64) keeps the launch every 4-bit layout had
    # before lookup 5 (lookup 2 at 128 registers). Lookup 5's 128-token tile there spills 852
    # bytes at 160 registers and its [16, 16] value products repeat across the 4 warps: 99.6
    # warp-instructions per token and KV head against lookup 2's 22.2 with no spill (sm_90a,
    # static-cost JSON); the H200 suite at 0e40444 measured SmolLM2-shaped decode at 0.25-0.49x
    # bf16 under lookup 5, half the speed of the old table lookup (kernels-h200-decode.json,
    # 0.47-0.68x). Chosen from the compiled code; timed at fec6f7d: 0.40-1.25x bf16 over 16
    # shapes, from 0.25-0.51x at 0e40444 (kernels-decode-h200-fec6f7d, kernels-h200-0e40444).
    # large_head_maxnreg 0: head_dim above 128 (Gemma-2's 256) goes uncapped: lookup 5's loop
    # spills 620 bytes at 160 registers there, none at 255 (static-cost-sm90a-fec6f7d), and
    # Gemma-2-shaped decode ran 0.91-1.39x bf16 uncapped against 0.61-1.00x capped, rotate=True
    # 0.70-1.37x against 0.53-0.99x (1 x 4K to 32 x 16K, H200, one session:
    # kernels-decode-gemma-uncapped-h200-fec6f7d against kernels-decode-h200-fec6f7d).
    # query_rotation_cols 32: rotate=True's query rotation launch computes 32 output columns
    # per program (0: as many as _rotation_cols allows), so 4 programs per query row at
    # head_dim 128, each with a quarter of the tensor-core chain: 0.6-1.4 us less per call than
    # whole rows at 1-32 x 1-4K (0.0117 ms against 0.0123 at 1 x 1K, 0.0438 against 0.0452 at
    # 8 x 4K), 64 and 16 columns within 0.4 us of it (decode-levers-rotate-h200-909d2ab).
    # pdl 0: with 1, on Hopper and later, the attention launch after rotate=True's query
    # rotation and the split-merge launch after the attention are programmatic dependent
    # launches (_programmatic_launches), each one's prologue overlapping the tail of the launch
    # before. Timed with rotate=True on an H200 in two calls: 0.3-0.8 us less per call at 1 x 1K,
    # 1 x 4K, 8 x 4K and 32 x 1K, 1.3 us more at 8 x 1K both times, 1% either way at 16-32K
    # (decode-levers-pdl-*-h200-2b53720, decode-levers-rotate-h200-1d0d68c). Opt-in.
    # merge_in_kernel 4: splits of at most 4 key tiles are merged by the last of them inside
    # the attention kernel, not by a second launch (_merges_in_kernel; 0 = always a launch);
    # merge_in_kernel_few_pairs 1: so are all splits where (sequence, KV head) pairs are fewer
    # than multiprocessors (batch 8 of Llama-3-8B: 2.6-3.4% faster at 16-64K on an H100,
    # decode-levers-merge-h100-1140488).
    # merge_rows 32: each round of the split merge reads as many splits as fill a tile of 32
    # rows (_merge_tile): 8 splits of a GQA-4 decode token. One split per round (the merge's
    # reads before) was 1-3% slower at 8 x 16-64K on an H100; 16 per round 1% faster there as
    # a launch but 0.7-1 us slower at 1-8 x 1K, where the merge is in the kernel (0.0070 ms
    # against 0.0060 at 1 x 1K; decode-levers-merge-h100-dee70ff).
    # query_rotation_in_kernel 4: rotate=True's attention programs rotate their own query rows,
    # with no rotation launch before them, where they number at most 4 per multiprocessor
    # (_rotates_query_in_kernel; 0: the launch everywhere).
    # signs_prefetch 0: with 1, rotate=True's programs that may rotate the output back (the
    # last split's merge, or an unsplit program's epilogue) prefetch the sign matrix into L2
    # when they start, so the end of the call does not wait on DRAM for it. Timed on an H100
    # (decode-levers/decode-levers-query-rotation-h100-0ecd4cf): 1 x 1K 0.0093 ms against
    # 0.0090, 8 x 1K 0.0158 against 0.0155; opt-in.
    # query_rotation_prefetch 0: with 1, programs that rotate their own query prefetch their
    # first key tile into L2 before the rotation's loads and products. Timed on an H100
    # (decode-levers/decode-levers-query-rotation-h100-0ecd4cf): rotate=True 1 x 1K 0.0094 ms
    # against 0.0090, 8 x 1K 0.0158 against 0.0155; opt-in.
    # kronecker_rotation 0: with 1, the programs that rotate a query or an output (rotate=True)
    # read the 128 signs instead of the [D, D] sign matrix (32 KB at head_dim 128, read by every
    # program of one wave at once) and multiply by H = H_(D/32) (x) H_32 with the 32 x 32
    # factor built in registers (triton_common.kronecker_hadamard). Timed on an H100 (same
    # file): 1 x 1K 0.0094 ms against 0.0090, 8 x 1K 0.0159 against 0.0155; opt-in.
    # wide_maxnreg 0 (no cap) where a field has more than 4 bits: such fields read a centroid
    # table through L1 and spill under the 4-bit cap; uncapped decode is 1.28-1.40x faster for
    # K8V4, 1.18x K4V8, 1.28-1.38x K6V4, 1.58-1.61x K8V8 at 8 x 16K and 32 x 32K on an H200,
    # bit-identical output (decode-levers-k*-h200-wide-494886a).
    "decode": {
        "block_n": 128,
        "num_warps": 4,
        "num_stages": 3,
        "lookup": 5,
        "maxnreg": 128,
        "wide_lookup": 2,
        "wide_maxnreg": 0,
        "small_head_lookup": 2,
        "small_head_maxnreg": 128,
        "large_head_maxnreg": 0,
        "query_rotation_cols": 32,
        "prefetch": 0,
        "small_head_prefetch": 1,
        "wide_prefetch": 1,
        "small_head_num_stages": 1,
        "wide_num_stages": 1,
        "programs_per_sm": 8,
        "max_split_tiles": 24,
        "merge_in_kernel": 4,
        "merge_in_kernel_few_pairs": 1,
        "merge_rows": 32,
        "query_rotation_in_kernel": 4,
        "signs_prefetch": 0,
        "query_rotation_prefetch": 0,
        "kronecker_rotation": 0,
        # One query token: mask keys past the end per key (an FFMA per score, loads clamped to
        # the last key), not per score; 0 restores the per-score compare and select.
        "key_mask": 1,
        "pdl": 0,
        # short_split_num_stages N (0: off): where a split spans at most short_split_tiles key
        # tiles, compile with at most N pipeline stages (_num_stages). H100, rotate=True at
        # 1 x 1K: 0.0085 ms against 0.0089 / 0.0088 with 3 stages in two runs at 6531303 (cuDNN
        # 0.0078: 1.09x), 0.0087 against 0.0091 at d383929; 2 x 1K 0.0090 against 0.0095 /
        # 0.0093, 8 x 1K 0.0147 against 0.0151 / 0.0150; 1 x 4K, 8 x 4K and 8 x 16K within
        # 0.0002 ms either way, the rotated domain too (2 stages everywhere: 8 x 16K 0.0911
        # against 0.0893-0.0898; decode-levers/kernels-tune-decode-short-run1/2-h100-6531303).
        "short_split_num_stages": 2,
        "short_split_tiles": 2,
    },
    "prefill": {"block_n": 32, "num_warps": 8, "num_stages": 1, "lookup": 2, "block_m": 128},
}
TUNING_ENV = "TQ_TRITON_TUNING"


def apply_tuning_overrides(tuning: dict, spec: str) -> dict:
    """``tuning`` with ``spec``'s settings, e.g. ``decode.lookup=5,decode.maxnreg=160``: how a
    benchmark tries a launch setting inside an engine's worker processes, which it reaches only
    through their environment. Unknown ops or settings are refused, so a typo cannot pass for
    a measured variant."""
    tuned = {op: dict(settings) for op, settings in tuning.items()}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        op, _, setting = name.strip().partition(".")
        if op not in tuned or setting not in tuned[op] or not value.strip().lstrip("-").isdigit():
            raise TQInputError(
                f"{TUNING_ENV}: {item!r} is not OP.SETTING=INTEGER with OP in {sorted(tuned)} "
                f"and SETTING one of that op's {sorted(tuned.get(op, {}))}"
            )
        tuned[op][setting] = int(value)
    return tuned


TUNING = apply_tuning_overrides(TUNING, os.environ.get(TUNING_ENV, ""))


_INTERPRETED = INTERPRETED  # a module global, so tests can patch it


def _has_wide_field(layout: CacheLayout) -> bool:
    """A compressed field of other than 4 bits: its centroids come from a table through L1 (the
    register lookups serve 4-bit fields only), so it launches with the ``wide_*`` settings.
    Narrower fields too: with the 4-bit launch (128 registers, 3 stages) K3V3 spilled and
    decoded 4.6x slower at 8 x 16K on an H100 (1.2567 ms against 0.2746; K2V2 1.0774 against
    0.2386; decode-levers/decode-levers-narrow-*-h100-726d147)."""
    return any(
        fmt.compressed and fmt.mse_bits != 4 for fmt in (layout.key_format, layout.value_format)
    )


def _setting(tuning: dict, layout: CacheLayout, name: str):
    """``name``'s value for this layout: ``wide_<name>`` where a field has more than 4 bits,
    ``small_head_<name>`` for a head_dim below 128, ``large_head_<name>`` above it, else
    ``name`` itself (a missing prefixed setting falls back to it; prefill has none)."""
    if _has_wide_field(layout):
        prefix = "wide_"
    elif layout.head_dim < 128:
        prefix = "small_head_"
    elif layout.head_dim > 128:
        prefix = "large_head_"
    else:
        prefix = ""
    return tuning.get(prefix + name, tuning.get(name))


def _four_bit_codebooks(layout: CacheLayout) -> list[str]:
    """The codebooks of the layout's 4-bit fields."""
    return [
        fmt.codebook
        for fmt in (layout.key_format, layout.value_format)
        if fmt.compressed and fmt.mse_bits == 4
    ]


def _permuted_codebooks(layout: CacheLayout, lookup: int) -> list[str]:
    """The codebooks of the 4-bit fields that the byte permutes read under ``lookup``: from
    lookup 5 on, grid codebooks take the integer path (_grid_fields) instead."""
    grid = triton_layout.GRID_CODEBOOKS if lookup >= 5 else ()
    return [codebook for codebook in _four_bit_codebooks(layout) if codebook not in grid]


def _lookup(tuning: dict, layout: CacheLayout) -> int:
    """The lookup to compile: inline PTX (2-6) cannot run in Triton's interpreter. The permutes
    hold one codebook for K and V (as immediates in lookups 3-5, as one set of register words
    in 2 and 6), and the immediates' must be a table codebook (Lloyd-Max or companded; a
    uniform field below lookup 5 has no immediates), so a layout that breaks either falls back
    to lookup 0 (each field's own table through L1)."""
    if _INTERPRETED:
        return 0
    lookup = _setting(tuning, layout, "lookup")
    if lookup > 0:
        permuted = _permuted_codebooks(layout, lookup)
        tables = all(codebook not in triton_layout.GRID_CODEBOOKS for codebook in permuted)
        if len(set(permuted)) > 1 or (lookup in (3, 4, 5) and not tables):
            return 0
    return lookup


def _register_cap(tuning: dict, layout: CacheLayout) -> dict:
    """The launch's ``maxnreg``, if any (see :func:`_setting`); 0 or absent means no cap."""
    cap = _setting(tuning, layout, "maxnreg")
    return {"maxnreg": cap} if cap else {}


def _merge_tile(tuning: dict, head_dim: int, query_rows: int, unrotate: bool) -> tuple[int, int]:
    """(rows, slots) of the split merge's tile: the query rows each split wrote, padded to a
    power of two, and how many splits one round reads, so that a round's tile has
    ``merge_rows`` rows up to head_dim 128 (half as many at 256: 32 registers a thread for
    the partials either way). rotate=True's merge multiplies the tile on tensor cores, which
    needs at least 16 rows."""
    rows = triton.next_power_of_2(query_rows)
    slot_rows = max(rows, tuning["merge_rows"] * 128 // max(128, head_dim))
    if unrotate:
        slot_rows = max(slot_rows, 16)
    return rows, slot_rows // rows


def _merges_in_kernel(
    tuning: dict, block_table, layout: CacheLayout, num_splits: int, num_seqs: int, device
) -> bool:
    """Whether the last split merges inside the attention kernel rather than in a second
    launch: where a split spans at most ``merge_in_kernel`` key tiles (0: never anywhere),
    and with ``merge_in_kernel_few_pairs`` wherever there are fewer (sequence, KV head) pairs than
    multiprocessors. Short splits gain the launch (1 x 1K: 0.0060 ms against 0.0070, 8 x 1K:
    0.0119 against 0.0130). With few pairs the merge launch leaves most multiprocessors idle,
    while the merges in the kernel overlap the splits still running: 8 x 16K 0.0849 ms
    against 0.0885, 8 x 32K 0.1588 against 0.1624, 8 x 64K within 0.1%; with many pairs
    the fence each split waits on before it exits costs more than the launch (32 x 32K 0.5795
    against 0.5710; all on an H100, decode-levers-merge-h100-dee70ff). Shapes only, so a CUDA
    graph fixes the choice."""
    block_n = _setting(tuning, layout, "block_n")
    tiles = triton.cdiv(block_table.shape[1] * layout.block_size, block_n)
    limit = tuning.get("merge_in_kernel", 0)
    if limit == 0:
        return False
    if triton.cdiv(tiles, num_splits) <= limit:
        return True
    few_pairs = num_seqs * layout.num_kv_heads < _multiprocessors(device)
    return bool(tuning.get("merge_in_kernel_few_pairs", 0)) and few_pairs


def _num_stages(tuning: dict, layout: CacheLayout, block_table, num_splits: int) -> int:
    """The launch's software-pipeline depth: the layout's ``num_stages`` setting, capped at
    ``short_split_num_stages`` (when set) where a split spans at most ``short_split_tiles`` key
    tiles: with one tile per split (1K keys in 8 splits) a third stage has nothing to overlap
    and its prologue sits on the critical path. Shapes only, so a CUDA graph fixes the
    choice."""
    stages = _setting(tuning, layout, "num_stages")
    short = tuning.get("short_split_num_stages", 0)
    if not short:
        return stages
    tiles = triton.cdiv(
        block_table.shape[1] * layout.block_size, _setting(tuning, layout, "block_n")
    )
    if triton.cdiv(tiles, num_splits) <= tuning.get("short_split_tiles", 0):
        return min(stages, short)
    return stages


def _rotates_query_in_kernel(
    tuning: dict, layout: CacheLayout, num_seqs: int, num_splits: int, device
) -> bool:
    """Whether rotate=True's attention programs rotate their own query rows instead of reading
    them from the query-rotation launch before (:func:`_rotated_queries`): where the programs
    number at most ``query_rotation_in_kernel`` per multiprocessor (0: never), one wave at the
    four a multiprocessor holds. Each program then reads the [D, D] sign matrix (32 KB at
    head_dim 128) and multiplies its query rows by it on tensor cores, as that launch does
    (the same products, so the same rotated query); in one wave that prologue is paid once,
    in parallel, where the launch costs a launch. On an H100 against the launch
    (decode-levers-query-rotation-h100-e238451): 1 x 1K 0.0090 ms against 0.0095, 8 x 1K
    0.0153 against 0.0165, 1 x 4K 0.0133 against 0.0141, 1 x 16K 0.0236 against 0.0241 (64 to
    512 programs); with 1,024 and more programs every one repeats it and the launch wins (8 x 4K
    0.0352 against 0.0327, 32 x 1K 0.0359 against 0.0340, 128 x 1K 0.1035 against 0.0993).
    Up to head_dim 128: wider rows would hold a [256, 128] matrix tile in registers. Shapes
    only, so a CUDA graph fixes the choice."""
    per_multiprocessor = tuning.get("query_rotation_in_kernel", 0)
    if per_multiprocessor == 0 or layout.head_dim > 128:
        return False
    programs = num_seqs * layout.num_kv_heads * num_splits
    return programs <= per_multiprocessor * _multiprocessors(device)


def _programmatic_launches(tuning: dict, device: torch.device) -> bool:
    """Whether decode's second and third launches (attention after the query rotation, the
    split merge after the attention) are programmatic dependent launches: each starts while the
    one before it drains, its programs' prologue overlapping that tail, and waits
    (``gdc_wait``) before reading what it produced. Only our own launches precede them, so
    nothing else can be read early. Hopper and later, compiled kernels only (``pdl`` 1)."""
    if _INTERPRETED or device.type != "cuda" or not tuning.get("pdl", 0):
        return False
    return _compute_capability(device)[0] >= 9


@functools.cache
def _compute_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _pdl_option(enabled: bool) -> dict:
    """The launch option of a programmatic dependent launch, only when used (the interpreter
    knows no such option)."""
    return {"launch_pdl": True} if enabled else {}


def _prefetch(tuning: dict, layout: CacheLayout) -> int:
    """The prefetch to compile (see :func:`_setting`): inline PTX, which Triton's interpreter
    cannot run."""
    return 0 if _INTERPRETED else _setting(tuning, layout, "prefetch") or 0


def _compiled_setting(tuning: dict, name: str) -> bool:
    """A setting that compiles to inline PTX (the opt-in prefetches ``signs_prefetch`` and
    ``query_rotation_prefetch``): off under Triton's interpreter, which cannot run PTX."""
    return not _INTERPRETED and bool(tuning.get(name, 0))


def _launch(
    query_rows, out_rows, kv_cache, block_table, seq_lens, query_start_loc, layout, scale,
    sliding_window, logit_softcap, *, grid, block_m, tokens_per_tile, uniform_q, num_splits,
    tuning, unrotate=False, after_rotation=False, programs_rotate_query=False,
):  # fmt: skip
    """``unrotate``: rotate the output back to the model's domain (the query rows arrive
    rotated unless ``programs_rotate_query``). ``after_rotation``: the launch just before this
    one rotated the queries (:func:`_rotated_queries`), so the attention may launch
    programmatically after it. ``programs_rotate_query``: the query rows arrive in the model's
    domain and every program rotates its own (:func:`_rotates_query_in_kernel`)."""
    device = query_rows.device
    group = query_rows.shape[1] // layout.num_kv_heads
    num_seqs = seq_lens.shape[0]
    partials = num_seqs * layout.num_kv_heads * num_splits * block_m if num_splits > 1 else 0
    workspace = _kept_buffer(
        "split partials", device, max(1, partials * (layout.head_dim + 2)), torch.float32
    )
    constants = _kernel_constants(layout, _setting(tuning, layout, "lookup"))
    kronecker = bool(tuning.get("kronecker_rotation", 0))
    if kronecker:
        # The programs rotate with H from registers and read only the sign vector.
        signs = hadamard_signs(layout.head_dim, layout.codec.seed, device)
        query_signs = signs
    else:
        signs = triton_layout.sign_hadamard(layout.head_dim, layout.codec.seed, device)
        query_signs = signs
        if programs_rotate_query and constants["K_BITS"] == 4:
            query_signs = triton_layout.sign_hadamard_halves(
                layout.head_dim, layout.codec.seed, device
            )
    inv_sqrt_d = layout.head_dim**-0.5
    lookup = _lookup(tuning, layout)
    limits = _register_cap(tuning, layout)
    partial_acc = workspace[: partials * layout.head_dim]
    partial_stats = workspace[partials * layout.head_dim :]
    merge_in_kernel = num_splits > 1 and _merges_in_kernel(
        tuning, block_table, layout, num_splits, num_seqs, device
    )
    merge_launch = num_splits > 1 and not merge_in_kernel
    merge_rows, merge_slots = (1, 1)  # prefill and unsplit decode merge nothing
    if num_splits > 1:
        merge_rows, merge_slots = _merge_tile(tuning, layout.head_dim, uniform_q * group, unrotate)
    programmatic = _programmatic_launches(tuning, device)
    attention_pdl = programmatic and after_rotation
    # One int32 per (sequence, KV head) for the in-kernel merge: each split counts itself in
    # and the last one resets the count, so the buffer is all zeros between calls.
    counters = _kept_buffer(
        "split counts", device, max(1, num_seqs * layout.num_kv_heads), torch.int32, zeroed=True
    )
    _attention_kernel[grid](
        query_rows, kv_cache, block_table, seq_lens, query_start_loc, out_rows,
        partial_acc, partial_stats, counters,
        triton_layout.attention_table(layout, "key", device),
        triton_layout.attention_table(layout, "value", device), signs, query_signs,
        query_rows.stride(0), query_rows.stride(1), out_rows.stride(0), out_rows.stride(1),
        kv_cache.stride(0), block_table.stride(0),
        num_seqs, query_rows.shape[0], float(scale),
        float(logit_softcap or 1.0), int(sliding_window or 0), num_splits, inv_sqrt_d,
        GROUP=group, NUM_KV_HEADS=layout.num_kv_heads, BLOCK_SIZE=layout.block_size,
        D=layout.head_dim, BLOCK_M=block_m, BLOCK_N=_setting(tuning, layout, "block_n"),
        LOOKUP=lookup,
        UNROTATE=unrotate, ROTATE_Q=programs_rotate_query, KRONECKER=kronecker,
        PREFETCH_SIGNS=unrotate and (merge_in_kernel or num_splits == 1) and not kronecker
        and _compiled_setting(tuning, "signs_prefetch"),
        PREFETCH_FIRST=programs_rotate_query
        and _compiled_setting(tuning, "query_rotation_prefetch"),
        **_nibble_constants(layout, lookup),
        PREFETCH=_prefetch(tuning, layout),
        TOKENS_PER_TILE=tokens_per_tile, UNIFORM_Q=uniform_q, SPLIT=num_splits > 1,
        MERGE_IN_KERNEL=merge_in_kernel, MERGE_ROWS=merge_rows, MERGE_SLOTS=merge_slots,
        KEY_MASK=bool(tuning.get("key_mask", 1)),
        HAS_SOFTCAP=logit_softcap is not None, HAS_WINDOW=sliding_window is not None,
        WAIT_PRIOR=attention_pdl, LAUNCH_DEPENDENTS=programmatic and merge_launch,
        **constants,
        num_warps=tuning["num_warps"],
        num_stages=_num_stages(tuning, layout, block_table, num_splits), **limits,
        **_pdl_option(attention_pdl),
    )  # fmt: skip
    if merge_launch:
        _merge_splits_kernel[(num_seqs, layout.num_kv_heads)](
            partial_acc, partial_stats, out_rows, signs, out_rows.stride(0), out_rows.stride(1),
            num_splits, inv_sqrt_d, GROUP=group, NUM_KV_HEADS=layout.num_kv_heads,
            D=layout.head_dim, BLOCK_M=block_m, UNIFORM_Q=uniform_q, UNROTATE=unrotate,
            KRONECKER=kronecker, ROT_COLS=_rotation_cols(layout.head_dim), MERGE_ROWS=merge_rows,
            MERGE_SLOTS=merge_slots, WAIT_PRIOR=programmatic,
            **_pdl_option(programmatic),
        )  # fmt: skip


def _check_common(query, sliding_window, logit_softcap) -> None:
    if query.stride(-1) != 1:
        raise TQInputError("query must have a contiguous last dimension")
    validation.check_window_and_softcap(sliding_window, logit_softcap)


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
    num_splits: int | None = None,
    validate: bool = False,
) -> torch.Tensor:
    """The Triton twin of ``reference.decode_attention`` (same arguments and result).

    ``rotate=True`` (query and output in the original domain) rotates the query and rotates the
    output back inside the kernels, instead of two separate GEMM launches. ``num_splits``
    overrides the split-K count (a shape-only heuristic by default);
    ``validate=True`` adds the reference's host-side value checks (not capturable).
    """
    num_seqs, num_query_tokens = validation.check_decode_query(query)
    num_q_heads, head_dim = query.shape[2:]
    validation.check_attention_inputs(query, kv_cache, block_table, seq_lens, layout, num_seqs)
    _check_common(query, sliding_window, logit_softcap)
    if validate:
        query_lens = (seq_lens > 0).to(seq_lens.dtype) * num_query_tokens
        validation.check_attention_values(kv_cache, block_table, seq_lens, query_lens, layout)
    result = torch.empty_like(query) if out is None else out
    if num_seqs == 0:
        return result
    query_rows = query.reshape(num_seqs * num_query_tokens, num_q_heads, head_dim)
    out_rows = result.view(num_seqs * num_query_tokens, num_q_heads, head_dim)
    group = num_q_heads // layout.num_kv_heads
    block_m = max(16, triton.next_power_of_2(num_query_tokens * group))
    max_tokens = block_table.shape[1] * layout.block_size
    splits = num_splits or _split_count(num_seqs, layout, max_tokens, query.device)
    programs_rotate_query = rotate and _rotates_query_in_kernel(
        TUNING["decode"], layout, num_seqs, splits, query.device
    )
    if rotate and not programs_rotate_query:
        query_rows = _rotated_queries(query_rows, layout)
    _launch(
        query_rows, out_rows, kv_cache, block_table, seq_lens, seq_lens, layout, scale,
        sliding_window, logit_softcap, grid=(num_seqs, layout.num_kv_heads, splits),
        block_m=block_m, tokens_per_tile=num_query_tokens, uniform_q=num_query_tokens,
        num_splits=splits, tuning=TUNING["decode"], unrotate=rotate,
        after_rotation=rotate and not programs_rotate_query,
        programs_rotate_query=programs_rotate_query,
    )  # fmt: skip
    return result


def _rotated_queries(query_rows: torch.Tensor, layout: CacheLayout) -> torch.Tensor:
    """R q of every query row and head, float32 [rows, heads, head_dim], in one launch, into a
    buffer kept per device and grown on demand (CUDA-graph safe once sized), which every split
    program then reads; where the programs fit one wave they rotate their own query instead
    (:func:`_rotates_query_in_kernel`). Each program rotating its own through a gather of every
    other column of the sign matrix (over a thousand programs per call at 8 x 4K) tripled the
    attention kernel's time there (ncu: 150.7 us against 50.2) and made rotate=True 1.25-2.8x
    slower than with this launch at 1-128 x 1-16K on an H200; with it, rotate=True costs 3-8 us
    more than the rotated-domain call (this launch and the output's rotation back): 1.02-1.03x
    its time at 8 x 16K, 32 x 16K and 128 x 4K, 1.6x at 1 x 1K
    (benchmarks/results/decode-levers/rotate-h200-c5a676c.md)."""
    rows, heads, head_dim = query_rows.shape
    device = query_rows.device
    numel = rows * heads * head_dim
    rotated = _kept_buffer("rotated queries", device, numel, torch.float32)[:numel]
    rotated = rotated.view(rows, heads, head_dim)
    signs = triton_layout.sign_hadamard(head_dim, layout.codec.seed, device)
    cols = min(TUNING["decode"].get("query_rotation_cols") or head_dim, _rotation_cols(head_dim))
    _rotate_queries_kernel[(rows, head_dim // cols)](
        query_rows, rotated, signs, query_rows.stride(0), query_rows.stride(1), heads,
        head_dim**-0.5, HEADS=max(16, triton.next_power_of_2(heads)), D=head_dim, ROT_COLS=cols,
        LAUNCH_DEPENDENTS=_programmatic_launches(TUNING["decode"], device),
    )  # fmt: skip
    return rotated


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
    method: str = "auto",
    block_m: int | None = None,
    validate: bool = False,
    dense_attention: DenseAttention | None = None,
    rotate: bool = False,
    query_start_loc_host: list[int] | None = None,
    seq_lens_host: list[int] | None = None,
) -> torch.Tensor:
    """The Triton twin of ``reference.prefill_attention`` (same arguments and result).

    Two methods. "inline": query tiles of ``block_m`` rows (tokens x the GQA group) attend to
    K/V dequantized in registers; capturable in CUDA graphs, any window or soft-cap.
    "decompress": each sequence's pages are decompressed to a bf16 scratch and torch's flash
    attention runs on it; at 16K cached tokens it runs at bf16 flash speed where the inline
    kernel is far slower (benchmarks/README.md), but it reads the batch layout on the host, so
    it cannot be captured, and it has no window or soft-cap. "auto" picks "decompress" unless
    a graph is being captured or a window or soft-cap is asked for.
    ``validate=True`` adds the reference's host-side checks of query_start_loc and the values.
    ``dense_attention``: the dense causal kernel "decompress" hands the whole batch to, in the
    flash-attn varlen convention (:data:`DenseAttention`), e.g. the FlashAttention an engine
    already serves with; torch SDPA per sequence when None.
    ``rotate=True``: query and output in the original domain. "decompress" rotates the keys
    and values back while decompressing them, so the query and the output are never rotated;
    "inline" rotates the query before its kernel and the output after.
    ``query_start_loc_host``, ``seq_lens_host``: the same values as host lists, when the caller
    has them (engines keep CPU copies of their batch layout): "decompress" then never reads the
    device tensors back, which would make the host wait for the GPU once per layer.
    """
    validation.check_float("query", query, 3)
    validation.check_index("query_start_loc", query_start_loc, 1)
    num_seqs = query_start_loc.shape[0] - 1
    validation.check_attention_inputs(query, kv_cache, block_table, seq_lens, layout, num_seqs)
    _check_common(query, sliding_window, logit_softcap)
    if validate:
        _, lengths = validation.query_lengths(query_start_loc, query)
        validation.check_attention_values(kv_cache, block_table, seq_lens, lengths, layout)
        validation.check_host_copies(
            query_start_loc, query_start_loc_host, seq_lens, seq_lens_host
        )  # fmt: skip
    result = torch.empty_like(query) if out is None else out
    num_tokens, num_q_heads, _ = query.shape
    if num_tokens == 0:
        return result
    if method not in ("auto", "inline", "decompress"):
        raise TQInputError(f"method={method!r}; choose auto, inline or decompress")
    plain = sliding_window is None and logit_softcap is None
    capturing = query.is_cuda and torch.cuda.is_current_stream_capturing()
    if method == "decompress" and not plain:
        raise TQInputError("the decompress method has no sliding window or soft-cap")
    if method == "decompress" or (method == "auto" and plain and not capturing):
        starts = query_start_loc.tolist() if query_start_loc_host is None else query_start_loc_host
        lengths = seq_lens.tolist() if seq_lens_host is None else seq_lens_host
        if dense_attention is None:
            _prefill_via_flash(
                query, kv_cache, block_table, starts, lengths, layout, scale, result, rotate
            )
        else:
            _prefill_via_dense(
                query, kv_cache, block_table, query_start_loc, seq_lens, starts, lengths, layout,
                scale, result, dense_attention, rotate,
            )  # fmt: skip
        return result
    if rotate:
        # The inline path serves CUDA graphs and windows; it rotates outside its kernel (the
        # decode kernel's in-kernel rotation at prefill's 128-row tiles faulted on an H200:
        # benchmarks/results/vllm-h200-rotate/tests-gpu-first.txt).
        seed = layout.codec.seed
        rotated = prefill_attention(
            rotate_query(query, seed), kv_cache, block_table, query_start_loc, seq_lens,
            layout, scale, sliding_window=sliding_window, logit_softcap=logit_softcap,
            method="inline", block_m=block_m,
        )  # fmt: skip
        return result.copy_(unrotate_output(rotated, seed))
    group = num_q_heads // layout.num_kv_heads
    block_m = max(block_m or TUNING["prefill"]["block_m"], triton.next_power_of_2(group))
    tokens_per_tile = block_m // group
    # Program (num_seqs, ...) zeroes the padding rows past the last sequence.
    grid = (num_seqs + 1, layout.num_kv_heads, triton.cdiv(num_tokens, tokens_per_tile))
    _launch(
        query, result, kv_cache, block_table, seq_lens, query_start_loc, layout, scale,
        sliding_window, logit_softcap, grid=grid, block_m=block_m,
        tokens_per_tile=tokens_per_tile, uniform_q=0, num_splits=1, tuning=TUNING["prefill"],
    )  # fmt: skip
    return result


def _prefill_via_flash(query, kv_cache, block_table, starts, lengths, layout, scale, out, unrotate):
    """Decompress each sequence's pages into a scratch in the query's dtype (in the query's
    domain), then torch SDPA (flash attention for half queries) with a causal mask aligned to
    the sequence's end. ``starts``, ``lengths``: query_start_loc and seq_lens as host lists."""
    num_kv, head_dim = layout.num_kv_heads, layout.head_dim
    longest = max(lengths, default=0)
    scratch = _kept_buffer(
        "decompressed kv", query.device, 2 * num_kv * max(longest, 1) * head_dim, query.dtype
    )
    keys = scratch[: num_kv * longest * head_dim].view(num_kv, longest, head_dim)
    values = scratch[num_kv * longest * head_dim : 2 * num_kv * longest * head_dim]
    values = values.view(num_kv, longest, head_dim)
    for i, seq_len in enumerate(lengths):
        start, end = starts[i], starts[i + 1]
        if end == start or seq_len == 0:
            continue
        k, v = keys[:, :seq_len], values[:, :seq_len]
        triton_decompress.gather_kv(
            kv_cache, block_table[i], seq_len, layout, out=(k, v), unrotate=unrotate
        )
        q = query[start:end].transpose(0, 1).unsqueeze(0)
        mask = causal_lower_right(end - start, seq_len)
        attended = F.scaled_dot_product_attention(
            q, k.unsqueeze(0), v.unsqueeze(0), attn_mask=mask, scale=scale, enable_gqa=True
        )
        out[start:end] = attended[0].transpose(0, 1)
    out[starts[-1] :] = 0


def _prefill_via_dense(
    query, kv_cache, block_table, query_start_loc, seq_lens, starts, lengths, layout, scale, out,
    dense_attention, unrotate,
):  # fmt: skip
    """Decompress every sequence's pages into one packed scratch (keys of sequence i at rows
    cu_k[i]:cu_k[i+1]) in the query's dtype and domain, then one ``dense_attention`` call for
    the batch. ``starts``, ``lengths``: query_start_loc and seq_lens as host lists; the kernel's
    key offsets are computed on the device, so nothing is read back or copied from the host."""
    # Sequences without new tokens need no keys: they get an empty key range.
    used = [n if starts[i + 1] > starts[i] else 0 for i, n in enumerate(lengths)]
    cu_k = [0]
    for n in used:
        cu_k.append(cu_k[-1] + n)
    num_kv, head_dim = layout.num_kv_heads, layout.head_dim
    total = max(cu_k[-1], 1)
    scratch = _kept_buffer(
        "decompressed kv", query.device, 2 * total * num_kv * head_dim, query.dtype
    )
    keys = scratch[: total * num_kv * head_dim].view(total, num_kv, head_dim)
    values = scratch[total * num_kv * head_dim : 2 * total * num_kv * head_dim]
    values = values.view(total, num_kv, head_dim)
    for i, n in enumerate(used):
        if n:
            rows = slice(cu_k[i], cu_k[i + 1])
            triton_decompress.gather_kv(
                kv_cache, block_table[i], n, layout,
                out=(keys[rows].transpose(0, 1), values[rows].transpose(0, 1)), unrotate=unrotate,
            )  # fmt: skip
    real = starts[-1]
    if real:
        query_lens = query_start_loc[1:] - query_start_loc[:-1]
        cu_seqlens_k = torch.zeros_like(query_start_loc, dtype=torch.int32)
        cu_seqlens_k[1:] = torch.where(query_lens > 0, seq_lens, 0).cumsum(0)
        max_q = max(starts[i + 1] - starts[i] for i in range(len(lengths)))
        dense_attention(
            query[:real], keys, values, query_start_loc.to(torch.int32), cu_seqlens_k,
            max_q, max(used), scale, out[:real],
        )  # fmt: skip
    out[real:] = 0
