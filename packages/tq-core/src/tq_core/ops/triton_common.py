"""Triton helpers shared by the store and attention kernels: reading and writing packed fields.

Addresses: a token's vector of one field lives at
``page * page_stride + REGION_OFF + (kv_head * block_size + offset) * FIELD_BYTES`` (layout.py).
Callers pass ``page_base`` (page * page_stride, int64) and ``slot`` (kv_head * block_size +
offset) per token; these helpers add the constant region offset and the byte index.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# Triton reads the flag when its modules are imported, and so do these: inline PTX (register
# lookups, prefetch) needs a GPU, and the interpreter gets the table lookups instead.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def load_plane(base_ptr, row_off, mask, WIDTH: tl.constexpr, D: tl.constexpr):
    """uint8 [rows, D * WIDTH / 8]: the bytes of one plane, one vector per row.

    ``row_off`` (int64 [rows]) is a multiple of the plane's bytes (up to 16: regions are
    16-byte aligned), which lets the compiler issue wide loads.
    """
    NB: tl.constexpr = D * WIDTH // 8
    ALIGN: tl.constexpr = 16 if NB >= 16 else NB
    row_off = tl.multiple_of(row_off, ALIGN)
    cols = tl.max_contiguous(tl.arange(0, NB), NB)
    return tl.load(base_ptr + row_off[:, None] + cols[None, :], mask=mask[:, None], other=0)


@triton.jit
def unpack_plane(raw, WIDTH: tl.constexpr, D: tl.constexpr):
    """Codes of one bit plane, int32 [rows, D] in dimension order, from its bytes.

    Byte i holds codes i*k .. i*k + k - 1 (k = 8 / WIDTH), code i*k + j at bit j*WIDTH: the
    parts are interleaved back into dimension order with nested joins (the last joined axis is
    the lowest index bit).
    """
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
def load_plane_transposed(base_ptr, row_off, mask, WIDTH: tl.constexpr, D: tl.constexpr):
    """uint8 [D * WIDTH / 8, rows]: :func:`load_plane` with the bytes along the first axis, the
    shape of a ``tl.dot`` right operand (so no transpose sits between the load and the dot)."""
    NB: tl.constexpr = D * WIDTH // 8
    ALIGN: tl.constexpr = 16 if NB >= 16 else NB
    row_off = tl.multiple_of(row_off, ALIGN)
    cols = tl.max_contiguous(tl.arange(0, NB), NB)
    return tl.load(base_ptr + row_off[None, :] + cols[:, None], mask=mask[None, :], other=0)


@triton.jit
def load_field(
    cache_ptr, page_base, slot, mask, D: tl.constexpr, BITS: tl.constexpr,
    P0_OFF: tl.constexpr, P0_W: tl.constexpr, P1_OFF: tl.constexpr, P1_W: tl.constexpr,
    P2_OFF: tl.constexpr, P2_W: tl.constexpr, NORM_OFF: tl.constexpr, NORM_F16: tl.constexpr,
    TRANSPOSED: tl.constexpr = False, WORDS: tl.constexpr = False,
):  # fmt: skip
    """The stored bytes of one K or V field for a tile of tokens: (plane0, plane1, plane2,
    norms float32 [rows]); absent planes are 0. A raw bf16 layer (BITS == 16, its region at
    NORM_OFF) gives (vectors bf16 [rows, D], 0, 0, ones). ``TRANSPOSED`` gives a 4-bit plane0
    as [bytes, rows] (load_plane_transposed), ``WORDS`` as uint16 [rows, words].

    Loading is separate from decoding so a kernel can issue every load of a tile (K and V) before
    the arithmetic that waits for them.
    """
    # One exit: Triton's compiler still compiles the code after a return inside a compile-time
    # branch (the interpreter does not), so an early return breaks only the GPU build.
    plane1 = 0
    plane2 = 0
    if BITS == 16:
        ptr = (cache_ptr + NORM_OFF + page_base[:, None] + slot[:, None] * (2 * D)).to(
            tl.pointer_type(tl.bfloat16)
        )
        plane0 = tl.load(ptr + tl.arange(0, D)[None, :], mask=mask[:, None], other=0.0)
        norms = tl.where(mask, 1.0, 0.0)
    else:
        if WORDS:
            plane0 = load_plane_words(
                cache_ptr + P0_OFF, page_base + slot * (D * P0_W // 8), mask, P0_W, D
            )
        elif TRANSPOSED:
            plane0 = load_plane_transposed(
                cache_ptr + P0_OFF, page_base + slot * (D * P0_W // 8), mask, P0_W, D
            )
        else:
            plane0 = load_plane(
                cache_ptr + P0_OFF, page_base + slot * (D * P0_W // 8), mask, P0_W, D
            )
        if P1_W > 0:
            plane1 = load_plane(
                cache_ptr + P1_OFF, page_base + slot * (D * P1_W // 8), mask, P1_W, D
            )
        if P2_W > 0:
            plane2 = load_plane(
                cache_ptr + P2_OFF, page_base + slot * (D * P2_W // 8), mask, P2_W, D
            )
        if NORM_F16:
            ptr = (cache_ptr + NORM_OFF + page_base + slot * 2).to(tl.pointer_type(tl.float16))
        else:
            ptr = (cache_ptr + NORM_OFF + page_base + slot * 4).to(tl.pointer_type(tl.float32))
        norms = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    return plane0, plane1, plane2, norms


@triton.jit
def dequantize(
    plane0, plane1, plane2, centroids_ptr, D: tl.constexpr, BITS: tl.constexpr,
    P0_W: tl.constexpr, P0_SHIFT: tl.constexpr, P1_W: tl.constexpr, P1_SHIFT: tl.constexpr,
    P2_W: tl.constexpr, P2_SHIFT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    LOOKUP: tl.constexpr = 0,
):  # fmt: skip
    """Unit vectors [rows, D] in DOT_DTYPE from the planes of :func:`load_field` (the norm stays
    apart, so callers fold it into scores or softmax weights: one multiply per token instead of
    per element). LOOKUP 0 reads centroids through the L1 cache, 1 gathers from registers."""
    if BITS == 16:  # one exit: see load_field
        vectors = plane0.to(DOT_DTYPE)
    else:
        codes = unpack_plane(plane0, P0_W, D) << P0_SHIFT
        if P1_W > 0:
            codes = codes | (unpack_plane(plane1, P1_W, D) << P1_SHIFT)
        if P2_W > 0:
            codes = codes | (unpack_plane(plane2, P2_W, D) << P2_SHIFT)
        vectors = lookup(codes, centroids_ptr, BITS, DOT_DTYPE, LOOKUP)
    return vectors


@triton.jit
def lookup(codes, centroids_ptr, BITS: tl.constexpr, DOT_DTYPE: tl.constexpr, LOOKUP: tl.constexpr):
    """Centroid values of int codes [rows, cols]. LOOKUP 0 reads the table through the L1
    cache (no layout constraint); 1 gathers from a register copy of the table."""
    if LOOKUP == 1:
        TABLE: tl.constexpr = 1 << BITS
        table = tl.load(centroids_ptr + tl.arange(0, TABLE))
        table = tl.broadcast_to(table[None, :], (codes.shape[0], TABLE))
        vectors = tl.gather(table, codes, axis=1)
    else:
        vectors = tl.load(centroids_ptr + codes)
    return vectors.to(DOT_DTYPE)


@triton.jit
def load_vectors(
    cache_ptr, centroids_ptr, page_base, slot, mask, D: tl.constexpr, BITS: tl.constexpr,
    P0_OFF: tl.constexpr, P0_W: tl.constexpr, P0_SHIFT: tl.constexpr,
    P1_OFF: tl.constexpr, P1_W: tl.constexpr, P1_SHIFT: tl.constexpr,
    P2_OFF: tl.constexpr, P2_W: tl.constexpr, P2_SHIFT: tl.constexpr,
    NORM_OFF: tl.constexpr, NORM_F16: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """(unit vectors [rows, D] in DOT_DTYPE, norms float32 [rows]): load_field + dequantize."""
    plane0, plane1, plane2, norms = load_field(
        cache_ptr, page_base, slot, mask, D, BITS, P0_OFF, P0_W, P1_OFF, P1_W, P2_OFF, P2_W,
        NORM_OFF, NORM_F16,
    )  # fmt: skip
    vectors = dequantize(
        plane0, plane1, plane2, centroids_ptr, D, BITS, P0_W, P0_SHIFT, P1_W, P1_SHIFT, P2_W,
        P2_SHIFT, DOT_DTYPE,
    )  # fmt: skip
    return vectors, norms


@triton.jit
def nibble_pair_lookup(raw, pair_table_ptr):
    """fp16 centroids of both nibbles of every byte of a 4-bit plane, with one load per byte:
    (low nibbles = even dimensions, high nibbles = odd dimensions), each [rows, bytes].

    ``pair_table_ptr``: int32 [256], entry b = fp16 bits of c[b & 15] | those of c[b >> 4] << 16
    (triton_layout.nibble_pair_table).
    """
    words = tl.load(pair_table_ptr + raw.to(tl.int32))
    low = (words & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
    high = ((words >> 16) & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
    return low, high


# Register lookup of both nibbles of 4 bytes (8 codes) with byte permutes, no memory access.
# $4: the 4 bytes; $5, $9, $13, $17, $21: words 256-260 of nibble_pair_table (magnitude low
# bytes m0-3, m4-7, high bytes m0-3, m4-7; each arg arrives as 4 packed copies). Code n >= 8 is
# +m[n - 8], code n < 8 is -m[7 - n]: flip the low 3 bits of negative codes (8 - 1 = 7 in
# their nibbles of `flip`, 1 in `neg`), look up low and
# high bytes of 4 codes with one prmt each, set the sign bit of negative codes in the high
# byte, and interleave: $0, $1 = codes of the low nibbles of bytes (0, 1), (2, 3) as fp16x2,
# $2, $3 = those of the high nibbles.
_PRMT_PAIRS = tl.constexpr("""
{
.reg .b32 neg, flip, idx, lb, hb, sg, even, odd;
mov.b32 even, 0x6240;
mov.b32 odd, 0x7351;
and.b32 flip, $4, 0x88888888;
xor.b32 flip, flip, 0x88888888;
shr.u32 neg, flip, 3;
sub.u32 flip, flip, neg;
xor.b32 idx, $4, flip;
and.b32 idx, idx, 0x77777777;
prmt.b32 lb, $5, $9, idx;
prmt.b32 hb, $13, $17, idx;
prmt.b32 sg, $21, $21, neg;
or.b32 hb, hb, sg;
prmt.b32 $0, lb, hb, even;
prmt.b32 $2, lb, hb, odd;
shr.u32 idx, idx, 16;
shr.u32 neg, neg, 16;
prmt.b32 lb, $5, $9, idx;
prmt.b32 hb, $13, $17, idx;
prmt.b32 sg, $21, $21, neg;
or.b32 hb, hb, sg;
prmt.b32 $1, lb, hb, even;
prmt.b32 $3, lb, hb, odd;
}
""")
_PRMT_CONSTRAINTS = tl.constexpr("=r,=r,=r,=r," + ",".join(["r"] * 21))


@triton.jit
def nibble_magnitude_words(pair_table_ptr):
    """Words 256-260 of nibble_pair_table (the magnitudes' low and high bytes, the sign byte),
    read once per
    program. Read as a 4-vector and picked out with reductions: values the compiler cannot
    prove uniform across the warp stay in ordinary registers, where ``prmt`` reads them, instead
    of being copied out of uniform registers before every use."""
    lanes = tl.arange(0, 8)
    words = tl.load(pair_table_ptr + 256 + lanes, mask=lanes < 5, other=0)
    low_0 = tl.sum(tl.where(lanes == 0, words, 0))
    low_1 = tl.sum(tl.where(lanes == 1, words, 0))
    high_0 = tl.sum(tl.where(lanes == 2, words, 0))
    high_1 = tl.sum(tl.where(lanes == 3, words, 0))
    sign = tl.sum(tl.where(lanes == 4, words, 0))
    return low_0, low_1, high_0, high_1, sign


@triton.jit
def nibble_pair_registers(raw, low_0, low_1, high_0, high_1, sign):
    """:func:`nibble_pair_lookup` without memory: the codebook's magnitudes sit in four
    registers (:func:`nibble_magnitude_words`) and ``prmt`` selects bytes from them (GPU only:
    inline PTX, which Triton's interpreter cannot run). Same results, bit for bit."""
    low, high = tl.inline_asm_elementwise(
        _PRMT_PAIRS,
        _PRMT_CONSTRAINTS,
        [raw, low_0, low_1, high_0, high_1, sign],
        dtype=(tl.float16, tl.float16),
        # Not pure, on purpose: Triton sizes the dot operand's register groups (kWidth) from
        # the narrowest type behind it through pure elementwise ops, and would see the uint8
        # bytes; kWidth 4 then costs four register moves per HMMA. Nothing here needs CSE.
        is_pure=False,
        pack=4,
    )
    return low, high


@triton.jit
def nibble_centroids(raw, ASM: tl.constexpr):
    """fp16 centroids of one nibble (low or high, per ``ASM`` from
    triton_layout.nibble_asm) of every byte of a 4-bit plane, by byte permutes over the
    codebook's magnitudes held as immediates (GPU only: inline PTX). One input, one output and
    no side effects: Triton then moves the layout change that feeds ``tl.dot`` ahead of it, so
    the packed bytes, not the fp16 values, pass through shared memory."""
    return tl.inline_asm_elementwise(ASM, "=r,=r,r", [raw], dtype=tl.float16, is_pure=True, pack=4)


@triton.jit
def nibble_pairs_pure(raw, ASM: tl.constexpr):
    """:func:`nibble_pair_registers` as a pure asm with the codebook as immediates (``ASM``
    from triton_layout.nibble_group_asm): (low, high) nibbles' centroids of every byte. Its
    only operand traces back to a load, so Triton moves the layout change for ``tl.dot`` above
    it, onto the bytes (GPU only: inline PTX)."""
    return tl.inline_asm_elementwise(
        ASM, "=r,=r,=r,=r,r", [raw], dtype=(tl.float16, tl.float16), is_pure=True, pack=4
    )


@triton.jit
def nibble_pairs_operands(raw, words, ASM: tl.constexpr):
    """:func:`nibble_pairs_pure` with the codebook words as operands (``words``: five [1, 1]
    loads of nibble_pair_table's entries 256-260; ``ASM`` from
    triton_layout.nibble_group_operand_asm): every operand still traces back to a load, so
    Triton still moves tl.dot's layout change above it, and ptxas keeps each word in one
    register instead of rematerializing an immediate before every permute (GPU only)."""
    l0, l1, h0, h1, c80 = words
    return tl.inline_asm_elementwise(
        ASM, "=r,=r,=r,=r" + ",r" * 21, [raw, l0, l1, h0, h1, c80],
        dtype=(tl.float16, tl.float16), is_pure=True, pack=4,
    )  # fmt: skip


@triton.jit
def nibble_quads_operands(words16, words, ASM: tl.constexpr):
    """:func:`nibble_quads` with the codebook words as operands (see
    :func:`nibble_pairs_operands`)."""
    l0, l1, h0, h1, c80 = words
    return tl.inline_asm_elementwise(
        ASM, "=r,=r,=r,=r" + ",r" * 11, [words16, l0, l1, h0, h1, c80],
        dtype=(tl.float16,) * 4, is_pure=True, pack=2,
    )  # fmt: skip


@triton.jit
def codebook_words(table_ptr):
    """nibble_pair_table's register-lookup words (entries 256-260) as five [1, 1] loads."""
    at = tl.zeros([1, 1], dtype=tl.int32) + 256
    return (
        tl.load(table_ptr + at), tl.load(table_ptr + at + 1), tl.load(table_ptr + at + 2),
        tl.load(table_ptr + at + 3), tl.load(table_ptr + at + 4),
    )  # fmt: skip


@triton.jit
def grid_values(table_ptr, nibbles):
    """fp16 1024 + code[n] of int32 4-bit codes ``nibbles``, the grid codes read from entries
    261-276 of triton_layout.nibble_pair_table: what the integer path's inline PTX computes
    in registers, for the interpreter (and any launch without inline PTX)."""
    codes = tl.load(table_ptr + 261 + nibbles)
    return (codes | 0x6400).to(tl.uint16).to(tl.float16, bitcast=True)


@triton.jit
def nibble_quads(words, ASM: tl.constexpr):
    """fp16 centroids of the 4 nibbles of every 16-bit word of a 4-bit plane (dimensions 4j,
    4j + 1, 4j + 2, 4j + 3 of word j), by one pure asm with the codebook as immediates (GPU
    only). 16-bit units let a tile whose ``tl.dot`` contracts over tokens (P.V) stage its packed
    words through shared memory and load them with ldmatrix's transpose."""
    return tl.inline_asm_elementwise(
        ASM, "=r,=r,=r,=r,r", [words], dtype=(tl.float16,) * 4, is_pure=True, pack=2
    )


@triton.jit
def load_plane_words(base_ptr, row_off, mask, WIDTH: tl.constexpr, D: tl.constexpr):
    """uint16 [rows, D * WIDTH / 16]: :func:`load_plane` read as 16-bit words."""
    NB: tl.constexpr = D * WIDTH // 8
    ALIGN: tl.constexpr = 16 if NB >= 16 else NB
    row_off = tl.multiple_of(row_off, ALIGN)
    cols = tl.max_contiguous(tl.arange(0, NB // 2), NB // 2)
    ptr = (base_ptr + row_off[:, None]).to(tl.pointer_type(tl.uint16))
    return tl.load(ptr + cols[None, :], mask=mask[:, None], other=0)


@triton.jit
def times_signs(x, signs_ptr, rows, cols, D: tl.constexpr, TRANSPOSE: tl.constexpr):
    """x (float32 [M, len(rows)]) @ S[rows, cols] (or S^T[rows, cols] with TRANSPOSE) for the
    exact +-1 fp16 matrix S [D, D] of triton_layout.sign_hadamard: x is split into two fp16
    parts, so the products are exact and only the fp32 sums round."""
    if TRANSPOSE:
        signs = tl.load(signs_ptr + cols[None, :] * D + rows[:, None])
    else:
        signs = tl.load(signs_ptr + rows[:, None] * D + cols[None, :])
    high = x.to(tl.float16)
    low = (x - high.to(tl.float32)).to(tl.float16)
    return tl.dot(low, signs, tl.dot(high, signs))


@triton.jit
def half_times_signs(x, signs_ptr, rows, cols, D: tl.constexpr):
    """x (fp16 [M, len(rows)]) @ S[rows, cols]: one tensor-core product, exact but for the fp32
    sums (:func:`times_signs` for an x already in fp16)."""
    signs = tl.load(signs_ptr + rows[:, None] * D + cols[None, :])
    return tl.dot(x, signs)


@triton.jit
def walsh_hadamard_stages(x, ROWS: tl.constexpr, D: tl.constexpr, STAGES: tl.constexpr):
    """The first STAGES butterfly stages of H x for every row of x [ROWS, D] (fp32,
    unnormalized): stage s adds and subtracts the two halves of each block of D >> s entries,
    moved next to each other by a reshape and a permute so tl.split / tl.join pair them (warp
    shuffles and layout changes, no matrix). All log2(D) stages are the Walsh-Hadamard
    transform; the first s of them are H_(2^s) over the index's s high bits, each block of
    D >> s entries left as it is."""
    for stage in tl.static_range(STAGES):
        y = tl.permute(tl.reshape(x, [ROWS, 1 << stage, 2, D >> (stage + 1)]), (0, 1, 3, 2))
        a, b = tl.split(y)
        x = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), [ROWS, D])
    return x


@triton.jit
def sylvester_tile(N: tl.constexpr):
    """The [N, N] Walsh-Hadamard matrix (Sylvester's order, N <= 256) in fp16, from the indices:
    entry (i, j) is -1 where i & j has an odd number of set bits. No memory read."""
    both = tl.arange(0, N)[:, None] & tl.arange(0, N)[None, :]
    both ^= both >> 4
    both ^= both >> 2
    both ^= both >> 1
    return (1 - 2 * (both & 1)).to(tl.float16)


@triton.jit
def kronecker_hadamard(x, D: tl.constexpr):
    """x [M, D] @ H_D (Sylvester's Walsh-Hadamard matrix, unnormalized; fp32 result).

    H_D = H_(D/32) (x) H_32: one tensor-core product of x, as [M * D / 32, 32], with a 32 x 32
    matrix built in registers (:func:`sylvester_tile`), then log2(D / 32) butterfly stages over
    the index's high bits in fp32. The [D, D] sign matrix of :func:`times_signs` is 32 KB at
    D = 128, read by every program; this reads nothing. Half-precision x is one fp16 part
    (bf16's 8-bit significand fits fp16's 11); fp32 x two, so the products stay exact."""
    M: tl.constexpr = x.shape[0]
    INNER: tl.constexpr = 32 if D > 32 else D
    OUTER: tl.constexpr = D // INNER
    STAGES: tl.constexpr = 0 if OUTER == 1 else (1 if OUTER == 2 else (2 if OUTER == 4 else 3))
    tile = sylvester_tile(INNER)
    if x.dtype == tl.float32:
        high = x.to(tl.float16)
        low = (x - high.to(tl.float32)).to(tl.float16)
        product = tl.dot(
            tl.reshape(low, [M * OUTER, INNER]),
            tile,
            tl.dot(tl.reshape(high, [M * OUTER, INNER]), tile),
        )
    else:
        product = tl.dot(tl.reshape(x.to(tl.float16), [M * OUTER, INNER]), tile)
    return walsh_hadamard_stages(tl.reshape(product, [M, D]), M, D, STAGES)


@triton.jit
def kronecker_unrotate(x, signs_ptr, inv_sqrt_d, D: tl.constexpr):
    """x @ S^T / sqrt(D) for rows x [M, D] in the rotated domain, S = diag(s) H with signs_ptr
    the sign vector s: (x @ H) * s / sqrt(D), H from registers (:func:`kronecker_hadamard`)."""
    signs = tl.load(signs_ptr + tl.arange(0, D)) * inv_sqrt_d
    return kronecker_hadamard(x, D) * signs[None, :]


@triton.jit
def prefetch_lines(ptrs, LEVEL: tl.constexpr):
    """Start bringing the cache lines at ``ptrs`` into L2 (LEVEL 1) or L1 (LEVEL 2) ahead of
    the loads that will read them; no registers are held meanwhile (GPU only: inline PTX)."""
    if LEVEL == 2:
        tl.inline_asm_elementwise(
            "mov.u32 $0, 0;\nprefetch.global.L1 [$1];", "=r,l", [ptrs], dtype=tl.int32,
            is_pure=False, pack=1,
        )  # fmt: skip
    else:
        tl.inline_asm_elementwise(
            "mov.u32 $0, 0;\nprefetch.global.L2 [$1];", "=r,l", [ptrs], dtype=tl.int32,
            is_pure=False, pack=1,
        )  # fmt: skip


@triton.jit
def prefetch_field(
    cache_ptr, page_base, slot, D: tl.constexpr, BITS: tl.constexpr,
    P0_OFF: tl.constexpr, P0_W: tl.constexpr, P1_OFF: tl.constexpr, P1_W: tl.constexpr,
    P2_OFF: tl.constexpr, P2_W: tl.constexpr, NORM_OFF: tl.constexpr, NORM_F16: tl.constexpr,
    LEVEL: tl.constexpr,
):  # fmt: skip
    """prefetch_lines of everything :func:`load_field` will read for these tokens."""
    base = cache_ptr + page_base
    if BITS == 16:
        prefetch_lines(base + NORM_OFF + slot * (2 * D), LEVEL)
    else:
        prefetch_lines(base + P0_OFF + slot * (D * P0_W // 8), LEVEL)
        if P1_W > 0:
            prefetch_lines(base + P1_OFF + slot * (D * P1_W // 8), LEVEL)
        if P2_W > 0:
            prefetch_lines(base + P2_OFF + slot * (D * P2_W // 8), LEVEL)
        prefetch_lines(base + NORM_OFF + slot * (2 if NORM_F16 else 4), LEVEL)
