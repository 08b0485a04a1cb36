"""Triton helpers shared by the store and attention kernels: reading and writing packed fields.

Addresses: a token's vector of one field lives at
``page * page_stride + REGION_OFF + (kv_head * block_size + offset) * FIELD_BYTES`` (layout.py).
Callers pass ``page_base`` (page * page_stride, int64) and ``slot`` (kv_head * block_size +
offset) per token; these helpers add the constant region offset and the byte index.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def unpack_plane(base_ptr, row_off, mask, WIDTH: tl.constexpr, D: tl.constexpr):
    """Codes of one bit plane, int32 [rows, D] in dimension order.

    ``row_off``: int64 [rows] byte offset of each vector's plane. Byte i holds codes
    i*k .. i*k + k - 1 (k = 8 / WIDTH), code i*k + j at bit j*WIDTH: the parts are interleaved
    back into dimension order with nested joins (the last joined axis is the lowest index bit).
    """
    NB: tl.constexpr = D * WIDTH // 8
    cols = tl.arange(0, NB)
    raw = tl.load(base_ptr + row_off[:, None] + cols[None, :], mask=mask[:, None], other=0)
    raw = raw.to(tl.int32)
    ROWS: tl.constexpr = raw.shape[0]
    if WIDTH == 8:
        codes = raw
    elif WIDTH == 4:
        codes = tl.join(raw & 15, raw >> 4).reshape(ROWS, D)
    elif WIDTH == 2:
        c0 = raw & 3
        c1 = (raw >> 2) & 3
        c2 = (raw >> 4) & 3
        c3 = (raw >> 6) & 3
        codes = tl.join(tl.join(c0, c2), tl.join(c1, c3)).reshape(ROWS, D)
    else:
        b0 = raw & 1
        b1 = (raw >> 1) & 1
        b2 = (raw >> 2) & 1
        b3 = (raw >> 3) & 1
        b4 = (raw >> 4) & 1
        b5 = (raw >> 5) & 1
        b6 = (raw >> 6) & 1
        b7 = (raw >> 7) & 1
        a0 = tl.join(b0, b4)
        a1 = tl.join(b1, b5)
        a2 = tl.join(b2, b6)
        a3 = tl.join(b3, b7)
        codes = tl.join(tl.join(a0, a2), tl.join(a1, a3)).reshape(ROWS, D)
    return codes


@triton.jit
def load_codes(
    cache_ptr,
    page_base,
    slot,
    mask,
    D: tl.constexpr,
    P0_OFF: tl.constexpr,
    P0_W: tl.constexpr,
    P0_SHIFT: tl.constexpr,
    P1_OFF: tl.constexpr,
    P1_W: tl.constexpr,
    P1_SHIFT: tl.constexpr,
    P2_OFF: tl.constexpr,
    P2_W: tl.constexpr,
    P2_SHIFT: tl.constexpr,
):
    """int32 [rows, D] codes of a b-bit field stored as up to three planes (widest first)."""
    codes = unpack_plane(cache_ptr + P0_OFF, page_base + slot * (D * P0_W // 8), mask, P0_W, D)
    codes = codes << P0_SHIFT
    if P1_W > 0:
        part = unpack_plane(cache_ptr + P1_OFF, page_base + slot * (D * P1_W // 8), mask, P1_W, D)
        codes = codes | (part << P1_SHIFT)
    if P2_W > 0:
        part = unpack_plane(cache_ptr + P2_OFF, page_base + slot * (D * P2_W // 8), mask, P2_W, D)
        codes = codes | (part << P2_SHIFT)
    return codes


@triton.jit
def load_norm(cache_ptr, page_base, slot, mask, NORM_OFF: tl.constexpr, NORM_F16: tl.constexpr):
    """float32 [rows] stored norms."""
    if NORM_F16:
        ptr = (cache_ptr + NORM_OFF + page_base + slot * 2).to(tl.pointer_type(tl.float16))
    else:
        ptr = (cache_ptr + NORM_OFF + page_base + slot * 4).to(tl.pointer_type(tl.float32))
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_vectors(
    cache_ptr,
    centroids_ptr,
    page_base,
    slot,
    mask,
    D: tl.constexpr,
    BITS: tl.constexpr,
    P0_OFF: tl.constexpr,
    P0_W: tl.constexpr,
    P0_SHIFT: tl.constexpr,
    P1_OFF: tl.constexpr,
    P1_W: tl.constexpr,
    P1_SHIFT: tl.constexpr,
    P2_OFF: tl.constexpr,
    P2_W: tl.constexpr,
    P2_SHIFT: tl.constexpr,
    NORM_OFF: tl.constexpr,
    NORM_F16: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """(unit vectors [rows, D] in DOT_DTYPE, norms float32 [rows]), rotated domain.

    A compressed field gives its centroids (the norm stays apart, so callers fold it into
    scores or softmax weights: one multiply per token instead of per element); a raw bf16 layer
    (BITS == 16, its region at NORM_OFF) gives the vectors and norms of one.
    """
    if BITS == 16:
        ptr = (cache_ptr + NORM_OFF + page_base[:, None] + slot[:, None] * (2 * D)).to(
            tl.pointer_type(tl.bfloat16)
        )
        vectors = tl.load(ptr + tl.arange(0, D)[None, :], mask=mask[:, None], other=0.0)
        norms = tl.where(mask, 1.0, 0.0)
    else:
        codes = load_codes(
            cache_ptr,
            page_base,
            slot,
            mask,
            D,
            P0_OFF,
            P0_W,
            P0_SHIFT,
            P1_OFF,
            P1_W,
            P1_SHIFT,
            P2_OFF,
            P2_W,
            P2_SHIFT,
        )
        vectors = tl.load(centroids_ptr + codes)
        norms = load_norm(cache_ptr, page_base, slot, mask, NORM_OFF, NORM_F16)
    return vectors.to(DOT_DTYPE), norms
