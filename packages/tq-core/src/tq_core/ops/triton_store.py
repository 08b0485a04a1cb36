"""Triton ``store``: rotate, normalize, quantize, pack and scatter new K and V in one launch.

Per (token, KV head) row: the norm comes from x itself (the rotation is orthonormal); the
rotation of the unit vector x / ||x|| (every entry in [-1, 1], so fp16 cannot overflow) is a
tensor-core product with the exact +-1 matrix (triton_layout.sign_hadamard) over fp16 parts of
it (2 parts carry 22 mantissa bits for half inputs, 3 parts for fp32), done in column chunks so
head_dim 256 fits in shared memory; half-precision inputs skip the parts and the normalization
before the product (raw_dot: x itself times the matrix, scaled by 1 / ||x|| after). 4-bit
Lloyd-Max and companded codes come from arithmetic (the ceiling of an odd polynomial through
the cell edges, _quantize_companded), uniform ones from a division, other widths from a
branchless binary search over the boundaries; each chunk's planes are packed and written
before the next is computed; the (corrected) norm is written last. Grid axis 1 picks K (0) or
V (1).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from tq_core.errors import TQInputError
from tq_core.layout import CacheLayout
from tq_core.ops import triton_layout, validation
from tq_core.ops.triton_common import INTERPRETED, prefetch_lines, walsh_hadamard_stages
from tq_core.rotation import hadamard_signs

_X_PARTS = {torch.bfloat16: 2, torch.float16: 2, torch.float32: 3}
# Launch settings from the tune suites on an H200 (benchmarks/results/kernels-tune-h200*.json;
# loading the rotation matrix once for several row blocks measured slower, 0.91 vs 0.73 ms).
# chunk: rotated columns per tensor-core product (a [head_dim, chunk] slice of the sign matrix
# in registers at a time). Every program reads the whole sign matrix through L1 (32 KB at
# head_dim 128, 8x its 16 rows of bf16 input), and ncu found the kernel L1-bound (L1/TEX 72% of
# its peak, DRAM 8%; decode-levers/ncu-store-65536-h200-19d1ffa.txt), so 64 rows per program
# (4 warps, 32 columns per product: 156 registers, static-cost-sm90a-c5ea5ce's store rows):
# 0.5729 ms for 65,536 tokens
# against 0.6510 for 16 rows / 2 warps / 64 columns, 0.0253 against 0.0247 for 2,048
# (kernels-tune-store-h200-19d1ffa).
# fwht 1: rotate with butterflies in registers instead of the matrix
# (triton_common.walsh_hadamard_stages), then quantize and pack whole rows: compiled for sm_90a it
# reads no matrix but takes 1.5-1.7x the matrix path's instructions per row at the same rows and
# warps (168 registers at 16-32 rows; static-cost-sm90a-c5ea5ce's store rows). Timed on an H200,
# slower at every setting tried: 65,536 tokens 0.6385-0.8349 ms against the matrix path's 0.5705,
# 2,048 tokens 0.0253-0.0403 against 0.0250 (kernels-tune-store-h200-b3d9045), so opt-in: the L1
# traffic it saves comes back as instructions.
# fwht 2 (c7a452a, removed): H = H_(D/32) (x) H_32, a 32 x 32 tile built in registers and two
# fp32 butterfly stages, compiled to more warp-instructions per row than the matrix path at each
# of 4 rows/warps settings (372 against 298 at 64 rows / 4 warps;
# store/static-cost-sm90a-store-kronecker-c7a452a.txt).
# raw_dot 1: half inputs rotate in their own type, one product per column chunk instead of
# two over fp16 parts of the unit vector: 92 registers instead of 156 and 7% fewer
# instructions per row at 64 rows / 4 warps (sm_90a, static-cost-sm90a-9003da6); 1.23-1.24x
# faster at 65,536 tokens (H100 0.455 against 0.563 ms, H200 0.462 against 0.570) and
# 1.26-1.32x at 2,048 (store/kernels-tune-store-*-09e2276, -9003da6). With its freed registers,
# K and V of the same rows in one program (one read of each matrix chunk for both) was slower:
# 0.505 ms at 65,536 tokens and 0.0217 at 2,048 on the H200, removed; so were 128-row blocks
# and 64-column chunks at 65,536 tokens (0.520-0.532 ms).
# binary_search 1 (the magnitude's index among the positive boundaries in 3 compares at 4 bits
# instead of 7), byte_squares 1 (the norm correction's squares read per packed byte, not per
# code) and native_matrix 1 (the sign matrix in bf16 for bf16 K/V): 4,720 instructions against
# 7,064 (sm_90a, 64 rows / 4 warps); on an H100 0.3515 ms against 0.3947 at 65,536 tokens and
# 0.0155 against 0.0182 at 2,048, each faster alone (store/kernels-tune-store-h100-24c0084).
# searched_squares 1 (3-4 bits: the squares selected in registers by the search's decisions,
# no table gather whose layout crossed shared memory every chunk): 0.3294 ms against 0.3498 at
# 65,536 tokens, equal at 2,048. maxnreg: a register cap; 80 (6 programs per multiprocessor
# instead of 4) was 7% faster at 65,536 tokens and 6% slower at 2,048, so none
# (store/kernels-tune-store-h100-3ae28b7, -f68c684).
# prefetch_ahead 0: with N, each program starts the input rows of the program N x (the
# multiprocessors) later on their way into L2 (a prefetch per 128-byte line, no registers), so
# that program's loads, a wave of programs later, wait on L2 rather than DRAM: ncu at 65,536
# tokens found 1.1 of 3.9 warps eligible and the DRAM 26% busy (latency-bound). Timed on an
# H100 (store/kernels-tune-store-h100-0ecd4cf): slower, 0.3369-0.3399 ms against 0.3315 at
# 65,536 tokens, so opt-in.
# Tried and removed: loading each chunk's slice of the sign matrix during the previous chunk's
# encode (no faster at 64 columns, 0.2746 against 0.2722 ms; slower at 32,
# store/kernels-tune-store-h100-0ecd4cf), and the 4-bit search, codes and squares in FMA-pipe
# arithmetic (saturated differences, multilinear thresholds and squares: 6 ALU instructions a
# value instead of 21, but 36 in all instead of 32 and 255 registers at 64 columns; 0.3236-0.6693
# ms against 0.2702, store/kernels-tune-store-h100-e3474ad).
# chunk 64 (60b44ae; 32 before): after the quantizer's levers the kernel is bound by the ALU
# pipe (ncu at 65,536 tokens: 73% of its peak, 65% of the instructions; FMA pipe 14%,
# store/ncu-store-65536-chunk64-pipes-h100-60b44ae.txt), and two 64-column products take 13%
# fewer instructions a row than four of 32 (260 against 298 warp-instructions at 125
# registers, still 4 programs per multiprocessor): on an H100 0.2691 ms (42% of the copy
# bandwidth) against 0.3310 at 65,536 tokens, 0.0136 against 0.0153 at 2,048; 128 columns
# 0.2894 / 0.0143, 128 rows 0.2872 / 0.0160 (store/kernels-tune-store-h100-60b44ae).
# uniform_arithmetic 1: an evenly spaced codebook's codes by arithmetic, not the search
# (_quantize_uniform; compiled for sm_90a 170 warp-instructions a row against 259, 94 registers).
# companded_arithmetic 1: the 4-bit companded codebook's codes and squares by arithmetic
# (floor(g(t)) + 8 and a polynomial, _quantize_companded); 2: its squares from the per-byte
# table instead. Compiled for sm_90a at 64 columns: Lloyd-Max's search 4,144 instructions
# (2,658 on the ALU pipe, which issues a warp-instruction every other cycle), the companded
# codebook 3,744 (1,030 ALU, 2,214 FMA pipes) with the polynomial, 3,624 with the table
# (store/static-cost-sm90a-store-codebooks-d383929); on an H100 0.2336-0.2345 ms at 65,536
# tokens with the polynomial, 0.2739-0.2753 with the table, Lloyd-Max 0.2675-0.2685
# (store/kernels-tune-store-h100-d383929).
# lloyd_max_arithmetic 1: Lloyd-Max's 4-bit codes the same way, through the odd degree-13
# polynomial through its edges (compiled: 4,560 instructions, 1,044 on the ALU pipe, 102
# registers; store/static-cost-sm90a-store-codebooks-98afe26). H100, two runs at 6531303
# against the search: 0.0129 / 0.0129 ms against 0.0136 / 0.0135 at 2,048 tokens, 0.0705 /
# 0.0701 against 0.0731 / 0.0727 at 16,384, 0.2544 / 0.2614 against 0.2636 / 0.2642 at
# 65,536 (1.01-1.05x); 2 (squares from the byte table), 128 rows or 32 rows were slower
# (store/kernels-tune-store-run1/2-h100-6531303).
# Both polynomial codebooks' quantizer in 19 instructions a value instead of 23 (a1221d2:
# _quantize_companded's saturating clamp, rounding inside one multiply-add, squares in
# (n - 8)(n - 7) folded into the row sum): compiled 4,056 / 3,392 instructions, 98 / 100
# registers (store/static-cost-sm90a-store-codebooks-8770f26); H100, three runs: Lloyd-Max
# 0.2514-0.2525 ms at 65,536 tokens against its search's 0.2719-0.2727 (1.08x, 45% of the copy
# bandwidth), companded 0.2266-0.2273 (50%); 128 rows 0.2419-0.2430 and 0.2071-0.2082 there but
# slower at 2,048 tokens, Lloyd-Max's also at 16,384; 128 rows on 8 warps, an 80-register cap
# and 128-column products no faster (store/kernels-tune-store-run1/2-h100-8770f26,
# -levers-h100-1230c14).
# lloyd_max_arithmetic / companded_arithmetic 3 and chunk 128 (0c1ec49): the squares as
# fixed-point integers permuted from registers and summed by dp4a (_permuted_squares), and the
# whole row in one 128-column product whose squares give the norm (product_norm): compiled
# 3,200 / 2,544 instructions against 4,056 / 3,392 (store/static-cost-sm90a-store-codebooks-
# 00eea77). Permuted squares on 64-column products compiled to 4,112 (the compiler then moved
# the rows through shared memory into the sums' layout for the norm) and were slower; so were
# 128-column products with the polynomial squares or without the product's norm. H100, two
# runs: Lloyd-Max 0.2141-0.2144 ms at 65,536 tokens (53% of the copy bandwidth) against
# 0.2497, 0.0577-0.0582 at 16,384 against 0.0686-0.0688, 0.0105 at 2,048 against 0.0126-0.0127;
# companded 0.1932-0.1938 (58%), uniform 0.1791-0.1795 (63%); 128 rows on 8 warps slower
# (store/kernels-tune-store-run1/2-h100-32ec2c4). Under these defaults a 112-register cap was
# 2% faster at 16,384 tokens in two runs and equal elsewhere; 96 and 104, and 32-row programs,
# slower (store/kernels-tune-store-run1/2-h100-12bd139): no cap.
TUNING = {
    "block_rows": 64, "num_warps": 4, "chunk": 128, "wide_chunk": 64, "fwht": 0, "raw_dot": 1,
    "binary_search": 1, "byte_squares": 1, "native_matrix": 1, "searched_squares": 1,
    "maxnreg": 0, "prefetch_ahead": 0, "uniform_arithmetic": 1, "companded_arithmetic": 3,
    "lloyd_max_arithmetic": 3, "product_norm": 1,
}  # fmt: skip


@triton.jit
def _pack_and_store(
    codes, cache_ptr, page_base, vector, keep, CHUNK_INDEX, D: tl.constexpr, CHUNK: tl.constexpr,
    OFF: tl.constexpr, W: tl.constexpr, SHIFT: tl.constexpr,
):  # fmt: skip
    """Write the bytes of one plane for the dimensions of one chunk; returns them (int32)."""
    PER_BYTE: tl.constexpr = 8 // W
    CHUNK_BYTES: tl.constexpr = CHUNK * W // 8
    ROWS: tl.constexpr = codes.shape[0]
    part = (codes >> SHIFT) & ((1 << W) - 1)
    grouped = part.reshape(ROWS, CHUNK_BYTES, PER_BYTE)
    shifts = tl.arange(0, PER_BYTE) * W
    packed = tl.sum(grouped << shifts[None, None, :], axis=2)
    cols = CHUNK_INDEX * CHUNK_BYTES + tl.arange(0, CHUNK_BYTES)
    row_off = page_base + vector * (D * W // 8)
    ptr = cache_ptr + OFF + row_off[:, None] + cols[None, :]
    tl.store(ptr, packed.to(tl.uint8), mask=keep[:, None])
    return packed


@triton.jit
def _magnitude_index(magnitude, bound_ptr, HALF: tl.constexpr, BITS: tl.constexpr):
    """How many of the positive boundaries (bound[HALF..2 HALF - 2], sorted) lie below each
    magnitude, by a binary search whose thresholds stay in registers: 3 compares and 4
    selects per value at 4 bits instead of 7 compares, 7 selects and their sums. Returns the
    index and the search's three decisions (its bits, high to low; at 3 bits the first is
    False)."""
    if BITS == 4:
        upper = magnitude > tl.load(bound_ptr + HALF + 3)
        middle = magnitude > tl.where(
            upper, tl.load(bound_ptr + HALF + 5), tl.load(bound_ptr + HALF + 1)
        )
        high = tl.where(middle, tl.load(bound_ptr + HALF + 6), tl.load(bound_ptr + HALF + 4))
        low = tl.where(middle, tl.load(bound_ptr + HALF + 2), tl.load(bound_ptr + HALF))
        lowest = magnitude > tl.where(upper, high, low)
        above = upper.to(tl.int32) * 4 + middle.to(tl.int32) * 2 + lowest.to(tl.int32)
    else:  # 3 bits
        middle = magnitude > tl.load(bound_ptr + HALF + 1)
        lowest = magnitude > tl.where(
            middle, tl.load(bound_ptr + HALF + 2), tl.load(bound_ptr + HALF)
        )
        upper = magnitude < 0.0
        above = middle.to(tl.int32) * 2 + lowest.to(tl.int32)
    return above, upper, middle, lowest


@triton.jit
def _searched_square(upper, middle, lowest, cent_ptr, HALF: tl.constexpr, BITS: tl.constexpr):
    """The squared centroid of each searched magnitude, selected by the search's decisions
    from scalars in registers (the codebook is symmetric: +-c have one square)."""
    c0 = tl.load(cent_ptr + HALF)
    c1 = tl.load(cent_ptr + HALF + 1)
    c2 = tl.load(cent_ptr + HALF + 2)
    c3 = tl.load(cent_ptr + HALF + 3)
    low = tl.where(middle, tl.where(lowest, c3 * c3, c2 * c2), tl.where(lowest, c1 * c1, c0 * c0))
    if BITS == 4:
        c4 = tl.load(cent_ptr + HALF + 4)
        c5 = tl.load(cent_ptr + HALF + 5)
        c6 = tl.load(cent_ptr + HALF + 6)
        c7 = tl.load(cent_ptr + HALF + 7)
        high = tl.where(
            middle, tl.where(lowest, c7 * c7, c6 * c6), tl.where(lowest, c5 * c5, c4 * c4)
        )
        low = tl.where(upper, high, low)
    return low


# Adding 2^23 to a float in [0, 2^23) rounds it to an integer held in its low mantissa bits;
# 2^-19 below v - 0.5 breaks floor's tie the reference's way (exact in [0, 16)).
_TO_INTEGER_BITS = tl.constexpr(2.0**23)
_TIE = tl.constexpr(2.0**-19)


@triton.jit
def _quantize_uniform(unit, bound_ptr, BITS: tl.constexpr):
    """Codes and squared levels of an evenly spaced codebook (level n = step (n - top / 2),
    top = 2^bits - 1; boundary HALF is the step, boundary HALF - 1 zero) by arithmetic: the
    code is floor(unit / step + 2^(bits-1)), clamped, rounded by adding 2^23 (its integer then
    sits in the low mantissa bits: no float-to-int conversion), and the squared level is
    step^2 (code - top / 2)^2. No compare against a boundary, so a value within float32
    rounding of one may take the neighbour, as with the search. About 8 instructions a value
    against the search's 20 on the ALU pipe, which bound the Lloyd-Max store."""
    HALF: tl.constexpr = 1 << (BITS - 1)
    TOP: tl.constexpr = (1 << BITS) - 1
    step = tl.load(bound_ptr + HALF)
    # floor(v) is round-to-nearest(v - 0.5) but for a tie, v on a boundary (0 is one), where
    # the reference's strict comparison takes the lower code: _TIE lower breaks the tie (it
    # moves values 2e-6 steps above a boundary down).
    level = unit * (1.0 / step) + (HALF - 0.5 - _TIE)
    level = tl.minimum(tl.maximum(level, 0.0), TOP * 1.0)
    rounded = level + _TO_INTEGER_BITS
    codes = rounded.to(tl.int32, bitcast=True) & TOP
    offset = (rounded - _TO_INTEGER_BITS) - TOP * 0.5
    return codes, offset * offset * (step * step)


# The quantizer's PTX (tests/test_store_ptx.py runs this text on the CPU): a multiply-add
# clamped to [0, 1] with 0.5 added, and one rounding toward +inf with 2^23 + 7 added.
SATURATED_FMA_ASM = tl.constexpr("fma.rn.sat.f32 $0, $1, $2, 0f3F000000;")
ROUNDED_UP_FMA_ASM = tl.constexpr("fma.rp.f32 $0, $1, $2, 0f4B000007;")


@triton.jit
def _ptx_fma(a, b, ASM_TEXT: tl.constexpr):
    """One of the quantizer's PTX multiply-adds (its addend in the text) on float32 a and b."""
    return tl.inline_asm_elementwise(
        ASM_TEXT, "=f,f,f", [a, b], dtype=tl.float32, is_pure=True, pack=1
    )


@triton.jit
def _saturated_unit(product, scale, ASM: tl.constexpr):
    """clamp(product scale + 0.5, 0, 1): one multiply-add with PTX's .sat on the GPU (the
    clamp's two min/max instructions come free)."""
    if ASM:
        v = _ptx_fma(product, scale, SATURATED_FMA_ASM)
    else:
        v = tl.minimum(tl.maximum(product * scale + 0.5, 0.0), 1.0)
    return v


@triton.jit
def _rounded_up(w, slope, ASM: tl.constexpr):
    """2^23 + ceil(w slope + 7): one multiply-add rounding toward +inf on the GPU (the
    product is exact inside it, so no tie breaks the wrong way), whose low bits hold the
    integer."""
    if ASM:
        r = _ptx_fma(w, slope, ROUNDED_UP_FMA_ASM)
    else:
        r = tl.ceil(w * slope + 7.0) + _TO_INTEGER_BITS
    return r


@triton.jit
def _quantize_companded(
    product, row_scale, compand_ptr, SQUARES: tl.constexpr, TERMS: tl.constexpr,
    ASM: tl.constexpr,
):  # fmt: skip
    """4-bit codes, and the rows' sums of squared levels, by arithmetic, for a codebook whose
    edge k is where an odd polynomial g crosses k - 7 (triton_layout.compander_table holds
    the clamp's scale s, g(w) / w's coefficients in w^2 and the squares' polynomial): the
    companded codebook (g its cubic compander, TERMS 2) or Lloyd-Max's (g of degree 13
    through its edges, TERMS 7). The unit coordinate is product * row_scale.

    g turns down past the outermost edge, so the unit coordinate is clamped first:
    w = clamp(unit s + 0.5, 0, 1) - 0.5 (one saturating multiply-add), where g(0.5) is in
    (7, 8) (compander_table checks it), so every value keeps its cell. The code n is
    ceil(g(w) + 7), the number of edges strictly below (torch.bucketize's convention, ties
    included), rounded up inside one multiply-add into the low bits of 2^23 + n. The squared
    level is a degree-7 polynomial in q = (n - 8) (n - 7) (one multiply-add from n - 8;
    symmetric, as the levels are) through the 8 squared magnitudes (Horner on the FMA pipe;
    within 1e-7 of the largest square), its last step folded into the row's sum. A value
    within float32 rounding of an edge may take the neighbour, as with the search. Without
    SQUARES the sums are zeros (the caller reads a table). No compare, select or table load
    per value: 19 FMA-pipe instructions a value for Lloyd-Max's g, 14 for the cubic."""
    w = _saturated_unit(product, (row_scale * tl.load(compand_ptr))[:, None], ASM) - 0.5
    w_squared = w * w
    slope = tl.load(compand_ptr + 8 - TERMS)  # TERMS >= 2: a tensor after the first step
    for i in tl.static_range(9 - TERMS, 8):
        slope = slope * w_squared + tl.load(compand_ptr + i)
    rounded = _rounded_up(w, slope, ASM)
    codes = rounded.to(tl.int32, bitcast=True) & 15
    row_sums = tl.zeros([product.shape[0]], dtype=tl.float32)
    if SQUARES:
        below = rounded - (_TO_INTEGER_BITS + 8.0)  # n - 8, exact
        q = below * below + below
        partial = tl.load(compand_ptr + 8) + tl.zeros(q.shape, dtype=tl.float32)
        for i in tl.static_range(9, 15):
            partial = partial * q + tl.load(compand_ptr + i)
        # The last Horner step, summed: each multiply-add lands in the row's sum.
        row_sums = tl.sum(partial * q, axis=1) + product.shape[1] * tl.load(compand_ptr + 15)
    return codes, row_sums


@triton.jit
def _digit_words(compand_ptr):
    """square_digit_words 0, 2 and 4 from the compander table's 16-bit halves, read once per
    program as a vector and picked out with reductions: values the compiler cannot prove
    uniform, so a permute's register source stays in an ordinary register instead of a copy
    from a uniform one before every use."""
    lanes = tl.arange(0, 8)
    halves = tl.load(compand_ptr + 33 + lanes, mask=lanes < 6, other=0.0).to(tl.int32)
    d0 = tl.sum(tl.where(lanes == 0, halves, 0)) | (tl.sum(tl.where(lanes == 1, halves, 0)) << 16)
    d1 = tl.sum(tl.where(lanes == 2, halves, 0)) | (tl.sum(tl.where(lanes == 3, halves, 0)) << 16)
    d2 = tl.sum(tl.where(lanes == 4, halves, 0)) | (tl.sum(tl.where(lanes == 5, halves, 0)) << 16)
    return d0, d1, d2


@triton.jit
def _permuted_squares(
    packed, codes, compand_ptr, digit_words, ASM: tl.constexpr, SQUARE_ASM: tl.constexpr
):  # fmt: skip
    """The rows' sums of squared levels of a symmetric 4-bit codebook, in the fixed point of
    triton_layout.square_fixed_point (entries 16-32 of the compander table): integer sums are
    exact, so the only rounding is the float32 conversion of each row's chunk sum. On the GPU
    each thread joins 4 of its packed bytes (8 codes of one row) into a word, and
    SQUARE_ASM picks and adds their integers with byte permutes and dp4a (18 instructions for
    8 codes, no table load, no layout change: the joined bytes sit in one thread); the
    interpreter, which cannot run PTX, reads the same integers per code."""
    if ASM:
        ROWS: tl.constexpr = packed.shape[0]
        WORDS: tl.constexpr = packed.shape[1] // 4
        grouped = packed.reshape(ROWS, 4, WORDS)
        words = tl.sum(grouped << (tl.arange(0, 4) * 8)[None, :, None], axis=1)
        sums = tl.inline_asm_elementwise(
            SQUARE_ASM,
            "=r,r,r,r,r",
            [words, digit_words[0], digit_words[1], digit_words[2]],
            dtype=tl.uint32,
            is_pure=True,
            pack=1,
        )
    else:
        sums = tl.load(compand_ptr + 16 + codes).to(tl.uint32)
    # uint32: 256 codes of the largest square stay below 2^32.
    return tl.sum(sums, axis=1).to(tl.float32) * tl.load(compand_ptr + 32)


@triton.jit
def _quantize(
    unit, bound_ptr, cent_ptr, BITS: tl.constexpr, BINARY: tl.constexpr,
    SEARCHED_SQUARES: tl.constexpr,
):  # fmt: skip
    """Codes = number of boundaries below each value (torch.bucketize's convention).

    Up to 4 bits the codebook is symmetric (boundary 2^(b-1) - 1 is 0), so the magnitude is
    compared with the positive boundaries only, held in registers (at most 7 compares, no
    memory traffic); wider codes use a branchless binary search over the table. The two
    agree except for a value exactly on a boundary. (Selecting the norm correction's centroids
    with the same compares instead of a table load per value was slower: 0.797 against 0.563 ms
    at 65,536 tokens on an H100, store/kernels-tune-store-h100-09e2276.) Returns the codes and,
    with SEARCHED_SQUARES (3-4 bits, binary search), each value's squared centroid selected by
    the search's decisions (else zeros, unused).
    """
    square = tl.zeros(unit.shape, dtype=tl.float32)
    if BITS <= 4:
        HALF: tl.constexpr = 1 << (BITS - 1)
        magnitude = tl.abs(unit)
        if BINARY and BITS >= 3:
            above, upper, middle, lowest = _magnitude_index(magnitude, bound_ptr, HALF, BITS)
            if SEARCHED_SQUARES:
                square = _searched_square(upper, middle, lowest, cent_ptr, HALF, BITS)
        else:
            above = tl.zeros(unit.shape, dtype=tl.int32)
            for j in tl.static_range(HALF, 2 * HALF - 1):
                above += (magnitude > tl.load(bound_ptr + j)).to(tl.int32)
        codes = tl.where(unit > 0, HALF + above, HALF - 1 - above)
    else:
        codes = tl.zeros(unit.shape, dtype=tl.int32)
        for level in tl.static_range(BITS):
            candidate = codes + (1 << (BITS - 1 - level))
            boundary = tl.load(bound_ptr + candidate - 1)
            codes = tl.where(boundary < unit, candidate, codes)
    return codes, square


@triton.jit
def _prefetch_rows_ahead(
    x_ptr, stride_xt, stride_xh, num_rows, AHEAD, H: tl.constexpr, D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):  # fmt: skip
    """Prefetch into L2 the input rows of the program AHEAD programs after this one along grid
    axis 0 (clamped to the last row: a prefetch needs a valid address)."""
    PER_LINE: tl.constexpr = 1024 // x_ptr.dtype.element_ty.primitive_bitwidth  # 128 bytes
    LINES: tl.constexpr = D // PER_LINE if D > PER_LINE else 1
    rows = (tl.program_id(0) + AHEAD) * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = tl.minimum(rows, num_rows - 1)
    offsets = (rows // H).to(tl.int64) * stride_xt + (rows % H) * stride_xh
    prefetch_lines(x_ptr + offsets[:, None] + (tl.arange(0, LINES) * PER_LINE)[None, :], 1)


@triton.jit
def _row_targets(
    slot_ptr, num_rows, stride_page, H: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_T: tl.constexpr,
):  # fmt: skip
    """This program's rows (token x KV head): token, head, whether it is written (in range,
    slot not -1), its page's byte offset, and its vector index inside a region."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    in_range = rows < num_rows
    token = rows // H
    head = rows % H
    slot_id = tl.load(slot_ptr + token, mask=in_range, other=-1).to(tl.int64)
    keep = in_range & (slot_id >= 0)
    slot_id = tl.where(keep, slot_id, 0)
    page_base = (slot_id // BLOCK_SIZE) * stride_page
    # Index of this vector inside a region, in vectors: [kv_head, block_size] row-major.
    vector = head * BLOCK_SIZE + slot_id % BLOCK_SIZE
    return token, head, keep, page_base, vector


@triton.jit
def _load_rows(x_ptr, stride_xt, stride_xh, token, head, keep, D: tl.constexpr):
    """The rows as stored (x_in), in fp32, their norms and the norms' inverses."""
    dims = tl.arange(0, D)
    x_off = token.to(tl.int64) * stride_xt + head * stride_xh
    x_in = tl.load(x_ptr + x_off[:, None] + dims[None, :], mask=keep[:, None], other=0.0)
    x = x_in.to(tl.float32)
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    inv_norm = 1.0 / tl.maximum(norm, 1.1754943508222875e-38)
    return x_in, x, norm, inv_norm


@triton.jit
def _raw_product(x_in, x, matrix, RAW_DOT: tl.constexpr):
    """x @ matrix for half inputs as they are: their products with +-1 are exact in the
    input's own type, fp32 sums. RAW_DOT 2 multiplies in fp32 instead (the interpreter, whose
    bf16 products are wrong)."""
    if RAW_DOT == 2:
        y = tl.dot(x, matrix.to(tl.float32), input_precision="ieee")
    else:
        y = tl.dot(x_in, matrix.to(x_in.dtype))
    return y


@triton.jit
def _encode_chunk(
    product, row_scale, norm, chunk, cache_ptr, page_base, vector, keep, cent_ptr, bound_ptr,
    square_ptr, D: tl.constexpr, COLS: tl.constexpr, BITS: tl.constexpr, BINARY: tl.constexpr,
    BYTE_SQUARES: tl.constexpr, SEARCHED_SQUARES: tl.constexpr,
    P0_OFF: tl.constexpr, P0_W: tl.constexpr, P0_SHIFT: tl.constexpr,
    P1_OFF: tl.constexpr, P1_W: tl.constexpr, P1_SHIFT: tl.constexpr,
    P2_OFF: tl.constexpr, P2_W: tl.constexpr, P2_SHIFT: tl.constexpr,
    NORM_OFF: tl.constexpr, ARITHMETIC: tl.constexpr, compand_ptr, digit_words,
    ASM: tl.constexpr, SQUARE_ASM: tl.constexpr,
):  # fmt: skip
    """Quantize and pack one chunk of rotated unit columns, product * row_scale (raw bf16
    values for a 16-bit field); returns the rows' sums of squared centroids over the chunk
    (the norm correction's).
    ARITHMETIC (_arithmetic_codes): 0 the boundary search, 1 an evenly spaced codebook's codes
    and squares by arithmetic, 2 the companded codebook's, 3 its codes by arithmetic and its
    squares from the per-byte table, 4 the same with its squares permuted from fixed-point
    digits (_permuted_squares, SQUARE_ASM), 5-7 the same three for Lloyd-Max's 4-bit
    codebook."""
    quantized_sq = tl.zeros([product.shape[0]], dtype=tl.float32)
    if BITS == 16:
        unit = product * row_scale[:, None]
        cols = chunk * COLS + tl.arange(0, COLS)
        raw_ptr = (cache_ptr + NORM_OFF + page_base + vector * (2 * D)).to(
            tl.pointer_type(tl.bfloat16)
        )
        y = unit * norm[:, None]
        tl.store(raw_ptr[:, None] + cols[None, :], y.to(tl.bfloat16), mask=keep[:, None])
    else:
        # Both constexpr (a plain chain of and/or here compiled to a runtime value, and the
        # squares' branch below then to code for a path without them).
        searched: tl.constexpr = (
            SEARCHED_SQUARES and BINARY and (BITS == 3 or BITS == 4) and ARITHMETIC == 0
        )
        # 2 and 5 take the squares' polynomial, 3 and 6 the per-byte table, 4 and 7 the
        # permuted digits (_arithmetic_codes).
        polynomial_squares: tl.constexpr = ARITHMETIC == 2 or ARITHMETIC == 5
        permuted_squares: tl.constexpr = ARITHMETIC == 4 or ARITHMETIC == 7
        squares_in_registers: tl.constexpr = searched or ARITHMETIC == 1
        if ARITHMETIC >= 2:
            codes, row_sums = _quantize_companded(
                product, row_scale, compand_ptr, polynomial_squares, 7 if ARITHMETIC >= 5 else 2,
                ASM,
            )  # fmt: skip
        else:
            unit = product * row_scale[:, None]
            if ARITHMETIC == 1:
                codes, square = _quantize_uniform(unit, bound_ptr, BITS)
            else:
                codes, square = _quantize(unit, bound_ptr, cent_ptr, BITS, BINARY, searched)
        packed = _pack_and_store(codes, cache_ptr, page_base, vector, keep, chunk, D, COLS,
                                 P0_OFF, P0_W, P0_SHIFT)  # fmt: skip
        if polynomial_squares:
            quantized_sq = row_sums
        elif permuted_squares:
            quantized_sq = _permuted_squares(
                packed, codes, compand_ptr, digit_words, ASM, SQUARE_ASM
            )  # fmt: skip
        elif squares_in_registers:
            # In the product's layout, from registers: no table load, no layout change.
            quantized_sq = tl.sum(square, axis=1)
        elif BYTE_SQUARES and P0_W == BITS:
            # One plane: every packed byte holds whole codes, and one table entry sums their
            # squared centroids (a load per byte, in the layout the bytes are already in).
            quantized_sq = tl.sum(tl.load(square_ptr + packed), axis=1)
        else:
            centroid = tl.load(cent_ptr + codes)
            quantized_sq = tl.sum(centroid * centroid, axis=1)
        if P1_W > 0:
            _pack_and_store(codes, cache_ptr, page_base, vector, keep, chunk, D, COLS,
                            P1_OFF, P1_W, P1_SHIFT)  # fmt: skip
        if P2_W > 0:
            _pack_and_store(codes, cache_ptr, page_base, vector, keep, chunk, D, COLS,
                            P2_OFF, P2_W, P2_SHIFT)  # fmt: skip
    return quantized_sq


@triton.jit
def _store_norm(
    norm, quantized_sq, cache_ptr, page_base, vector, keep, NORM_CORRECTION: tl.constexpr,
    BITS: tl.constexpr, NORM_OFF: tl.constexpr, NORM_F16: tl.constexpr,
):  # fmt: skip
    """The (corrected) norm, last: a 16-bit field has none."""
    if BITS != 16:
        stored = norm
        if NORM_CORRECTION:
            stored = norm / tl.maximum(tl.sqrt(quantized_sq), 1.1754943508222875e-38)
        if NORM_F16:
            ptr = (cache_ptr + NORM_OFF + page_base + vector * 2).to(tl.pointer_type(tl.float16))
            tl.store(ptr, stored.to(tl.float16), mask=keep)
        else:
            ptr = (cache_ptr + NORM_OFF + page_base + vector * 4).to(tl.pointer_type(tl.float32))
            tl.store(ptr, stored, mask=keep)


@triton.jit
def _encode_rows(
    x_ptr, stride_xt, stride_xh, cache_ptr, slot_ptr, rot_ptr, signs_ptr, cent_ptr, bound_ptr,
    square_ptr, stride_page, num_rows, inv_sqrt_d, prefetch_ahead,
    H: tl.constexpr, BLOCK_SIZE: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_T: tl.constexpr, X_PARTS: tl.constexpr, NORM_CORRECTION: tl.constexpr,
    FWHT: tl.constexpr, LOG_D: tl.constexpr, RAW_DOT: tl.constexpr, BINARY: tl.constexpr,
    BYTE_SQUARES: tl.constexpr, SEARCHED_SQUARES: tl.constexpr, PREFETCH: tl.constexpr,
    BITS: tl.constexpr,
    P0_OFF: tl.constexpr, P0_W: tl.constexpr, P0_SHIFT: tl.constexpr,
    P1_OFF: tl.constexpr, P1_W: tl.constexpr, P1_SHIFT: tl.constexpr,
    P2_OFF: tl.constexpr, P2_W: tl.constexpr, P2_SHIFT: tl.constexpr,
    NORM_OFF: tl.constexpr, NORM_F16: tl.constexpr,
    ARITHMETIC: tl.constexpr, compand_ptr, ASM: tl.constexpr, SQUARE_ASM: tl.constexpr,
    PRODUCT_NORM: tl.constexpr,
):  # fmt: skip
    """K or V of this program's rows (ASM: the quantizer's PTX multiply-adds, off in the
    interpreter)."""
    if PREFETCH:
        _prefetch_rows_ahead(x_ptr, stride_xt, stride_xh, num_rows, prefetch_ahead, H, D, BLOCK_T)
    token, head, keep, page_base, vector = _row_targets(
        slot_ptr, num_rows, stride_page, H, BLOCK_SIZE, BLOCK_T
    )
    x_in, x, norm, inv_norm = _load_rows(x_ptr, stride_xt, stride_xh, token, head, keep, D)
    dims = tl.arange(0, D)
    quantized_sq = tl.zeros([BLOCK_T], dtype=tl.float32)
    if not RAW_DOT:
        unit_x = x * inv_norm[:, None]
    if FWHT:
        # The rotation H diag(signs) / sqrt(D) as butterflies in fp32: no [D, D] matrix read
        # per program (the matrix path is L1-bound on it), every column in one pass.
        signs = tl.load(signs_ptr + dims)
        rotated = walsh_hadamard_stages(unit_x * signs[None, :], BLOCK_T, D, LOG_D) * inv_sqrt_d
    elif not RAW_DOT:
        x_hi = unit_x.to(tl.float16)
        rest = unit_x - x_hi.to(tl.float32)
        x_mid = rest.to(tl.float16)
        x_lo = (rest - x_mid.to(tl.float32)).to(tl.float16)
    COLS: tl.constexpr = D if FWHT else CHUNK
    # With every column in one product, the norm from its squares (the sign matrix has
    # orthogonal +-1 columns: ||x M||^2 = D ||x||^2), in the product's own layout: no sum over
    # the rows as loaded, which the compiler otherwise computes twice, once after moving the
    # rows through shared memory into the product's layout.
    product_norm: tl.constexpr = PRODUCT_NORM and RAW_DOT and not FWHT and BITS != 16 and CHUNK == D
    digit_words = (0, 0, 0)
    if ASM and (ARITHMETIC == 4 or ARITHMETIC == 7):
        digit_words = _digit_words(compand_ptr)
    for chunk in tl.static_range(D // COLS):
        cols = chunk * COLS + tl.arange(0, COLS)
        if FWHT:
            product = rotated
            row_scale = tl.full([BLOCK_T], 1.0, tl.float32)
        else:
            matrix = tl.load(rot_ptr + dims[:, None] * D + cols[None, :])
            if RAW_DOT:
                # One product per chunk (fp16 parts of the unit vector took two); the norm
                # scales the result afterwards (inside the quantizer's first multiply-add).
                product = _raw_product(x_in, x, matrix, RAW_DOT)
                if product_norm:
                    norm = tl.sqrt(tl.sum(product * product, axis=1)) * inv_sqrt_d
                    inv_norm = 1.0 / tl.maximum(norm, 1.1754943508222875e-38)
                row_scale = inv_norm * inv_sqrt_d
            else:
                product = tl.dot(x_hi, matrix)
                if X_PARTS > 1:
                    product += tl.dot(x_mid, matrix)
                if X_PARTS > 2:
                    product += tl.dot(x_lo, matrix)
                row_scale = tl.zeros([BLOCK_T], dtype=tl.float32) + inv_sqrt_d
        quantized_sq += _encode_chunk(
            product, row_scale, norm, chunk, cache_ptr, page_base, vector, keep, cent_ptr,
            bound_ptr, square_ptr, D, COLS, BITS, BINARY, BYTE_SQUARES, SEARCHED_SQUARES,
            P0_OFF, P0_W, P0_SHIFT, P1_OFF, P1_W, P1_SHIFT, P2_OFF, P2_W, P2_SHIFT, NORM_OFF,
            ARITHMETIC, compand_ptr, digit_words, ASM, SQUARE_ASM,
        )  # fmt: skip
    _store_norm(
        norm, quantized_sq, cache_ptr, page_base, vector, keep, NORM_CORRECTION, BITS, NORM_OFF,
        NORM_F16,
    )  # fmt: skip


@triton.jit
def _store_kernel(
    key_ptr, value_ptr, stride_kt, stride_kh, stride_vt, stride_vh, cache_ptr, slot_ptr,
    rot_ptr, signs_ptr, k_cent_ptr, k_bound_ptr, k_square_ptr, v_cent_ptr, v_bound_ptr,
    v_square_ptr, k_compand_ptr, v_compand_ptr, stride_page, num_rows, inv_sqrt_d,
    prefetch_ahead,
    H: tl.constexpr, BLOCK_SIZE: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_T: tl.constexpr, X_PARTS: tl.constexpr, NORM_CORRECTION: tl.constexpr,
    FWHT: tl.constexpr, LOG_D: tl.constexpr, RAW_DOT: tl.constexpr, BINARY: tl.constexpr,
    BYTE_SQUARES: tl.constexpr, SEARCHED_SQUARES: tl.constexpr, PREFETCH: tl.constexpr,
    K_BITS: tl.constexpr,
    K_P0_OFF: tl.constexpr, K_P0_W: tl.constexpr, K_P0_SHIFT: tl.constexpr,
    K_P1_OFF: tl.constexpr, K_P1_W: tl.constexpr, K_P1_SHIFT: tl.constexpr,
    K_P2_OFF: tl.constexpr, K_P2_W: tl.constexpr, K_P2_SHIFT: tl.constexpr,
    K_NORM_OFF: tl.constexpr, K_NORM_F16: tl.constexpr, K_ARITHMETIC: tl.constexpr,
    V_BITS: tl.constexpr,
    V_P0_OFF: tl.constexpr, V_P0_W: tl.constexpr, V_P0_SHIFT: tl.constexpr,
    V_P1_OFF: tl.constexpr, V_P1_W: tl.constexpr, V_P1_SHIFT: tl.constexpr,
    V_P2_OFF: tl.constexpr, V_P2_W: tl.constexpr, V_P2_SHIFT: tl.constexpr,
    V_NORM_OFF: tl.constexpr, V_NORM_F16: tl.constexpr, V_ARITHMETIC: tl.constexpr,
    ASM: tl.constexpr, K_SQUARE_ASM: tl.constexpr, V_SQUARE_ASM: tl.constexpr,
    PRODUCT_NORM: tl.constexpr,
):  # fmt: skip
    if tl.program_id(1) == 0:
        _encode_rows(
            key_ptr, stride_kt, stride_kh, cache_ptr, slot_ptr, rot_ptr, signs_ptr, k_cent_ptr,
            k_bound_ptr, k_square_ptr, stride_page, num_rows, inv_sqrt_d, prefetch_ahead, H,
            BLOCK_SIZE, D, CHUNK, BLOCK_T, X_PARTS, NORM_CORRECTION, FWHT, LOG_D, RAW_DOT, BINARY,
            BYTE_SQUARES, SEARCHED_SQUARES, PREFETCH, K_BITS,
            K_P0_OFF, K_P0_W, K_P0_SHIFT,
            K_P1_OFF, K_P1_W, K_P1_SHIFT,
            K_P2_OFF, K_P2_W, K_P2_SHIFT, K_NORM_OFF, K_NORM_F16, K_ARITHMETIC,
            k_compand_ptr, ASM, K_SQUARE_ASM, PRODUCT_NORM,
        )  # fmt: skip
    else:
        _encode_rows(
            value_ptr, stride_vt, stride_vh, cache_ptr, slot_ptr, rot_ptr, signs_ptr, v_cent_ptr,
            v_bound_ptr, v_square_ptr, stride_page, num_rows, inv_sqrt_d, prefetch_ahead, H,
            BLOCK_SIZE, D, CHUNK, BLOCK_T, X_PARTS, NORM_CORRECTION, FWHT, LOG_D, RAW_DOT, BINARY,
            BYTE_SQUARES, SEARCHED_SQUARES, PREFETCH, V_BITS,
            V_P0_OFF, V_P0_W, V_P0_SHIFT,
            V_P1_OFF, V_P1_W, V_P1_SHIFT,
            V_P2_OFF, V_P2_W, V_P2_SHIFT, V_NORM_OFF, V_NORM_F16, V_ARITHMETIC,
            v_compand_ptr, ASM, V_SQUARE_ASM, PRODUCT_NORM,
        )  # fmt: skip


def _raw_dot(key_dtype: torch.dtype, value_dtype: torch.dtype, fwht: bool) -> int:
    """The kernel's RAW_DOT: 1 rotates half-precision K and V as they are, 2 the same in fp32
    (the interpreter), 0 through fp16 parts of the unit vector (fp32 inputs, or the setting
    off)."""
    half = {key_dtype, value_dtype} <= {torch.float16, torch.bfloat16}
    if fwht or not half or not TUNING["raw_dot"]:
        return 0
    return 2 if INTERPRETED else 1


def _arithmetic_codes(fmt) -> int:
    """How the store finds this field's codes (the kernel's ARITHMETIC): 1 by arithmetic for an
    evenly spaced codebook of 2-8 bits (uniform_arithmetic on), 2 by arithmetic for the 4-bit
    companded codebook with its squares by a polynomial (companded_arithmetic 1), 3 the same
    with its squares from the per-byte table (companded_arithmetic 2), 4 with its squares
    permuted from fixed-point digits (companded_arithmetic 3), 5-7 the same for Lloyd-Max's
    4-bit codebook through its degree-13 polynomial (lloyd_max_arithmetic 1-3), 0 by the
    boundary search."""
    if not fmt.compressed:
        return 0
    if fmt.codebook == "uniform" and 2 <= fmt.mse_bits <= 8 and TUNING["uniform_arithmetic"]:
        return 1
    if fmt.codebook == "companded" and fmt.mse_bits == 4 and TUNING["companded_arithmetic"]:
        return 1 + _squares_setting(fmt, TUNING["companded_arithmetic"])
    if fmt.codebook == "lloyd-max" and fmt.mse_bits == 4 and TUNING["lloyd_max_arithmetic"]:
        return 4 + _squares_setting(fmt, TUNING["lloyd_max_arithmetic"])
    return 0


def _squares_setting(fmt, setting: int) -> int:
    """The permuted squares (3) where one product holds the whole row; the polynomial (1)
    where the row takes several (head_dim 256): there the compiler moved the loaded rows into
    the permuted sums' layout to compute the norm, and the store was slower than with the
    polynomial (head_dim 128 at 64 columns, store/kernels-tune-store-run1/2-h100-32ec2c4)."""
    if setting == 3 and _columns_per_product(fmt.head_dim) < fmt.head_dim:
        return 1
    return setting


def _square_asm(fmt) -> str:
    """The kernel's K_/V_SQUARE_ASM: triton_layout.square_sum_asm where the field takes the
    permuted squares (ARITHMETIC 4 or 7), empty otherwise."""
    if _arithmetic_codes(fmt) in (4, 7):
        return triton_layout.square_sum_asm(fmt.head_dim, fmt.codebook)
    return ""


def _columns_per_product(head_dim: int) -> int:
    """The rotation's columns per product: ``chunk`` (the whole row up to head_dim 128, whose
    norm then comes from the product, product_norm), ``wide_chunk`` for wider rows (not timed
    with 128: a head_dim-256 row would hold two 128-column products for its norm)."""
    chunk = TUNING["chunk"] if head_dim <= 128 else TUNING["wide_chunk"]
    return min(chunk, head_dim)


def _matrix_dtype(key_dtype: torch.dtype, value_dtype: torch.dtype, raw_dot: int):
    """The sign matrix in K/V's own half type where both share one and multiply as they are
    (no conversion of each loaded chunk in the kernel), fp16 otherwise."""
    if raw_dot == 1 and key_dtype == value_dtype and TUNING["native_matrix"]:
        return key_dtype
    return torch.float16


def store(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    layout: CacheLayout,
    *,
    validate: bool = False,
) -> None:
    """The Triton twin of ``reference.store`` (same arguments and result).

    No host sync and no allocation, so it can be captured in a CUDA graph; ``validate=True``
    adds the reference's slot-range and duplicate checks (they read the slots on the host).
    Duplicate slots are the caller's bug: which write wins is then unspecified.
    """
    validation.check_store_inputs(key, value, kv_cache, slot_mapping, layout)
    if validate:
        validation.check_store_values(slot_mapping, kv_cache, layout)
    for name, x in (("key", key), ("value", value)):
        if x.stride(-1) != 1:
            raise TQInputError(f"{name} must have a contiguous last dimension")
    num_rows = key.shape[0] * layout.num_kv_heads
    if num_rows == 0:
        return
    head_dim = layout.head_dim
    device = key.device
    fwht = bool(TUNING.get("fwht"))
    raw_dot = _raw_dot(key.dtype, value.dtype, fwht)
    grid = (triton.cdiv(num_rows, TUNING["block_rows"]), 2)
    prefetch_ahead = 0
    if TUNING.get("prefetch_ahead") and not INTERPRETED and device.type == "cuda":
        multiprocessors = torch.cuda.get_device_properties(device).multi_processor_count
        prefetch_ahead = TUNING["prefetch_ahead"] * multiprocessors
    _store_kernel[grid](
        key, value, key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        kv_cache, slot_mapping,
        triton_layout.sign_hadamard(
            head_dim, layout.codec.seed, device, _matrix_dtype(key.dtype, value.dtype, raw_dot)
        ),
        hadamard_signs(head_dim, layout.codec.seed, device),
        triton_layout.centroids(layout, "key", device),
        triton_layout.boundaries(layout, "key", device),
        triton_layout.byte_square_sums(layout, "key", device),
        triton_layout.centroids(layout, "value", device),
        triton_layout.boundaries(layout, "value", device),
        triton_layout.byte_square_sums(layout, "value", device),
        triton_layout.compander_table(layout, "key", device),
        triton_layout.compander_table(layout, "value", device),
        kv_cache.stride(0), num_rows, 1.0 / math.sqrt(head_dim), prefetch_ahead,
        H=layout.num_kv_heads, BLOCK_SIZE=layout.block_size, D=head_dim,
        CHUNK=_columns_per_product(head_dim),
        BLOCK_T=TUNING["block_rows"], X_PARTS=max(_X_PARTS[key.dtype], _X_PARTS[value.dtype]),
        NORM_CORRECTION=int(layout.codec.norm_correction), FWHT=fwht,
        LOG_D=head_dim.bit_length() - 1, RAW_DOT=raw_dot, BINARY=TUNING["binary_search"],
        BYTE_SQUARES=TUNING["byte_squares"], SEARCHED_SQUARES=TUNING["searched_squares"],
        PREFETCH=prefetch_ahead > 0,
        **triton_layout.field_constants(layout, "key", "K_"),
        **triton_layout.field_constants(layout, "value", "V_"),
        K_ARITHMETIC=_arithmetic_codes(layout.key_format),
        V_ARITHMETIC=_arithmetic_codes(layout.value_format), ASM=int(not INTERPRETED),
        K_SQUARE_ASM=_square_asm(layout.key_format),
        V_SQUARE_ASM=_square_asm(layout.value_format), PRODUCT_NORM=TUNING["product_norm"],
        num_warps=TUNING["num_warps"],
        **({"maxnreg": TUNING["maxnreg"]} if TUNING["maxnreg"] else {}),
    )  # fmt: skip
