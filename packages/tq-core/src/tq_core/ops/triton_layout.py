"""What the Triton kernels need to know about a CacheLayout, as compile-time constants.

A kernel is specialized per layout: the region offsets, plane widths and norm dtype of K and V
are ``tl.constexpr`` arguments, so every address is a constant plus a per-token offset and the
unpacking code is straight-line. This module is plain Python (no Triton import) so the reference
side and the tests can use it too.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from tq_core.codebook import codebook_tensors, compander, grid_codes
from tq_core.errors import TQConfigError
from tq_core.layout import CacheLayout, VectorFormat
from tq_core.packing import plane_shifts, plane_widths
from tq_core.rotation import rotation_matrix

MAX_PLANES = 3


def supported(layout: CacheLayout) -> bool:
    """Whether the kernels handle this layout (the QJL key residual stays on the reference)."""
    return not layout.key_format.qjl


def field_constants(layout: CacheLayout, tensor: str, prefix: str) -> dict[str, int]:
    """Constexpr kwargs describing K ("key") or V ("value") of ``layout``, names prefixed.

    ``{prefix}BITS`` is the code width (16 = raw bf16), ``{prefix}P{i}_OFF/_W/_SHIFT`` the region
    offset, width and bit shift of plane i (width 0 = absent), ``{prefix}NORM_OFF`` and
    ``{prefix}NORM_F16`` the norm field.
    """
    fmt: VectorFormat = layout.key_format if tensor == "key" else layout.value_format
    if fmt.qjl:
        raise TQConfigError("the Triton kernels do not implement the QJL key residual")
    offsets = {region.field: region.offset for region in layout.regions_of(tensor)}
    constants = {f"{prefix}BITS": fmt.bits, f"{prefix}NORM_F16": int(fmt.norm_dtype == "float16")}
    widths = plane_widths(fmt.mse_bits) if fmt.compressed else ()
    shifts = plane_shifts(fmt.mse_bits) if fmt.compressed else ()
    for i in range(MAX_PLANES):
        present = i < len(widths)
        constants[f"{prefix}P{i}_W"] = widths[i] if present else 0
        constants[f"{prefix}P{i}_SHIFT"] = shifts[i] if present else 0
        constants[f"{prefix}P{i}_OFF"] = offsets[f"plane{widths[i]}"] if present else 0
    constants[f"{prefix}NORM_OFF"] = offsets.get("norm", offsets.get("raw", 0))
    return constants


def _tables(layout: CacheLayout, tensor: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids, boundaries) float32 of K or V; for a raw bf16 layer, which reads no table,
    the 1-bit tables stand in (cached like every table: nothing is allocated per call)."""
    fmt = layout.key_format if tensor == "key" else layout.value_format
    bits = fmt.mse_bits if fmt.compressed else 1
    return codebook_tensors(layout.head_dim, bits, device, fmt.codebook)


def centroids(layout: CacheLayout, tensor: str, device: torch.device) -> torch.Tensor:
    """float32 centroid table of K or V."""
    return _tables(layout, tensor, device)[0]


_PAIR_TABLES: dict[tuple[int, str, torch.device], torch.Tensor] = {}
#: 4-bit codebooks whose levels are step * (integer code - offset) (codebook.grid_codes).
GRID_CODEBOOKS = ("uniform", "lloyd-max-grid")


def nibble_pair_table(
    head_dim: int, device: torch.device, codebook: str = "lloyd-max"
) -> torch.Tensor:
    """int32 [277]: entry b < 256 packs the fp16 centroids of both 4-bit codes of byte b (low
    nibble in the low half), so a kernel dequantizes two coordinates with one table load.

    Entries 256-259 hold the same codebook for register lookups (``prmt``): the codebook is
    symmetric (c[15 - i] = -c[i]), so the eight magnitudes m[j] = c[8 + j] are enough; 256 and
    257 hold their low bytes (m0-m3, m4-m7), 258 and 259 their high bytes; 260 is 0x8000.
    Entries 261-276 are the integer grid codes of the 16 levels (codebook.grid_codes; zeros for
    the exact Lloyd-Max and companded codebooks, which have none), which the attention kernel's
    integer path reads here where inline PTX cannot run.
    """
    key = (head_dim, codebook, torch.device(device))
    if key not in _PAIR_TABLES:
        half = codebook_tensors(head_dim, 4, "cpu", codebook)[0].to(torch.float16)
        if not torch.equal(half, -half.flip(0)):
            raise TQConfigError(f"the 4-bit codebook for head_dim {head_dim} is not symmetric")
        bits = half.view(torch.int16).to(torch.int32) & 0xFFFF
        byte = torch.arange(256)
        pairs = bits[byte & 15] | (bits[byte >> 4] << 16)
        magnitude = bits[8:]
        words = [
            sum(int(part[4 * word + i]) << (8 * i) for i in range(4))
            for part in (magnitude & 0xFF, magnitude >> 8)
            for word in range(2)
        ]
        words.append(0x8000)  # byte 1 = the fp16 sign bit's byte, for the sign permute
        words += grid_codes(head_dim, codebook)[0] if codebook in GRID_CODEBOOKS else [0] * 16
        table = torch.cat([pairs.to(torch.int64), torch.tensor(words, dtype=torch.int64)])
        # int32 storage of the unsigned words (two's complement), exact bit patterns.
        table = torch.where(table >= 2**31, table - 2**32, table)
        _PAIR_TABLES[key] = table.to(torch.int32).to(device)
    return _PAIR_TABLES[key]


@functools.cache
def nibble_asm(head_dim: int, high: bool, codebook: str = "lloyd-max") -> str:
    """Inline PTX for triton_common.nibble_centroids: the fp16 centroids of the low (or high)
    nibbles of 4 bytes ($2) into two fp16x2 registers ($0: bytes 0-1, $1: bytes 2-3).

    The 4-bit codebook is symmetric (c[15 - i] = -c[i]): code n >= 8 is +m[n - 8], code n < 8
    is -m[7 - n], with m the 8 magnitudes. So: flip the low 3 bits of negative codes, pick the
    low and high bytes of 4 magnitudes with one ``prmt`` each from words holding all 8 (the
    words are immediates: the codebook is fixed per head_dim), set the sign bit of negative
    codes, and interleave low and high bytes of the wanted nibbles into fp16 pairs.
    """
    select = 0x7351 if high else 0x6240
    epilogue = f"prmt.b32 $0, lb, hb, {select:#06x};\nprmt.b32 $1, lb2, hb2, {select:#06x};\n"
    return "{" + _nibble_prologue(head_dim, "$2", "", codebook) + epilogue + "}"


# The immediate-codebook lookups (3-5; nibble_asm says how the permutes work), lookup 5 with
# every output in one pure asm and the codebook as immediates (a register operand would stop
# Triton from moving tl.dot's layout change above the lookup: its operands must trace back to
# loads or constants). The words: l0, l1 (low bytes of the 8 magnitudes), h0, h1 (high bytes)
# as immediates here, as operands in lookup 6; c08 (0x0080) the sign byte's word, an immediate
# here, nibble_pair_table's 0x8000 shifted down in lookup 6.
_NIBBLE_REGS = ".reg .b32 pos, flip, idx, lb, hb, lb2, hb2, sg, c08, x;"
_NIBBLE_IMMEDIATES = """
.reg .b32 l0, l1, h0, h1;
mov.b32 l0, {l0:#010x};
mov.b32 l1, {l1:#010x};
mov.b32 h0, {h0:#010x};
mov.b32 h1, {h1:#010x};
mov.b32 c08, 0x0080;"""
# The permutes: for the 8 codes of {src}, pos nibble = 1 for codes >= 8, idx = the magnitude
# index (code - 8, or 7 - code below 8: the low 3 bits xor the complement of pos * 7, one
# lop3); then the low and high bytes of codes 0-3 (lb, hb) and 4-7 (lb2, hb2), the sign
# byte 0x80 of negative codes (byte 0 of c08 where pos is 0, its byte 1, 0, elsewhere) or'd
# into hb. Testing pos, not its complement, spares a not per 8 codes.
_NIBBLE_PERMUTES = """
shr.u32 pos, {src}, 3;
and.b32 pos, pos, 0x11111111;
mul.lo.u32 flip, pos, 7;
lop3.b32 idx, {src}, flip, 0x77777777, 0x82;
prmt.b32 lb, {l0}, {l1}, idx;
prmt.b32 hb, {h0}, {h1}, idx;
prmt.b32 sg, c08, c08, pos;
or.b32 hb, hb, sg;
shr.u32 idx, idx, 16;
shr.u32 pos, pos, 16;
prmt.b32 lb2, {l0}, {l1}, idx;
prmt.b32 hb2, {h0}, {h1}, idx;
prmt.b32 sg, c08, c08, pos;
or.b32 hb2, hb2, sg;
"""
_WORD_NAMES = ("l0", "l1", "h0", "h1")
# Pairs: 4 bytes ($4) -> low nibbles as fp16x2 of bytes (0, 1), (2, 3) ($0, $1) and high ($2, $3).
_PAIRS_EPILOGUE = """
prmt.b32 $0, lb, hb, 0x6240;
prmt.b32 $2, lb, hb, 0x7351;
prmt.b32 $1, lb2, hb2, 0x6240;
prmt.b32 $3, lb2, hb2, 0x7351;
"""
# Quads: two 16-bit words ($4: w0 low half, w1 high) -> nibble p of (w0, w1) as fp16x2 in $p.
# The bytes of $4 are first reordered (w0's low byte, w1's low byte, w0's high, w1's high), so
# codes 0-3 of the lookup are nibbles 0, 1 of w0 and of w1 and codes 4-7 nibbles 2, 3 of each:
# then each output is one permute of (lb, hb) or (lb2, hb2), as for pairs (5 permutes, not 8).
_QUADS_SOURCE = "prmt.b32 x, $4, $4, 0x3120;"
_QUADS_EPILOGUE = """
prmt.b32 $0, lb, hb, 0x6240;
prmt.b32 $1, lb, hb, 0x7351;
prmt.b32 $2, lb2, hb2, 0x6240;
prmt.b32 $3, lb2, hb2, 0x7351;
"""


def _nibble_prologue(head_dim: int, src: str, source: str = "", codebook: str = "lloyd-max") -> str:
    """The permutes every immediate-codebook lookup starts with, on the 8 codes of ``src``
    (after the ``source`` instruction that writes it, if any), ``codebook``'s magnitudes as
    the immediates."""
    words = [w & 0xFFFFFFFF for w in nibble_pair_table(head_dim, "cpu", codebook)[256:].tolist()]
    immediates = _NIBBLE_IMMEDIATES.format(l0=words[0], l1=words[1], h0=words[2], h1=words[3])
    permutes = _NIBBLE_PERMUTES.format(src=src, **{n: n for n in _WORD_NAMES})
    return "\n" + _NIBBLE_REGS + immediates + "\n" + source + permutes


def nibble_group_operand_asm(quads: bool) -> str:
    """:func:`nibble_group_asm` with the codebook words as operands instead of immediates
    (lookup 6): l0, l1, h0, h1 and 0x8000 (nibble_pair_table's entries 256-260) arrive in
    registers, each 32-bit operand as ``pack`` copies after the packed bytes or words ($4).
    ptxas rematerializes an immediate table word before every ``prmt`` that reads it (a copy
    from a uniform register: ~150 per thread and tile for lookup 5, static-cost JSON); a loaded
    word stays in one register, as lookup 2's do."""
    pack = 2 if quads else 4
    operands = {name: f"${5 + pack * i}" for i, name in enumerate(_WORD_NAMES)}
    # The fifth word is 0x8000 (nibble_pair_table's entry 260, which lookup 2 reads as is);
    # these permutes want its byte 1 in byte 0.
    sign_word = f"shr.u32 c08, ${5 + pack * 4}, 8;"
    source, src, epilogue = _group_parts(quads)
    permutes = _NIBBLE_PERMUTES.format(src=src, **operands)
    return "{\n" + _NIBBLE_REGS + "\n" + source + "\n" + sign_word + permutes + epilogue + "}"


def _group_parts(quads: bool) -> tuple[str, str, str]:
    """(the source's reordering, the register the permutes read, the epilogue) of a pair or
    quad lookup."""
    if quads:
        return _QUADS_SOURCE, "x", _QUADS_EPILOGUE
    return "", "$4", _PAIRS_EPILOGUE


def nibble_group_asm(head_dim: int, quads: bool, codebook: str = "lloyd-max") -> str:
    """Inline PTX for triton_common.nibble_pairs_pure / nibble_quads: the 4-bit ``codebook``
    of ``head_dim`` as immediates (see :func:`nibble_asm` for the sign-and-magnitude
    permutes)."""
    source, src, epilogue = _group_parts(quads)
    return "{" + _nibble_prologue(head_dim, src, source, codebook) + epilogue + "}"


def attention_table(layout: CacheLayout, tensor: str, device: torch.device) -> torch.Tensor:
    """The table the attention kernel reads for K or V: nibble pairs for a 4-bit field,
    centroids otherwise."""
    fmt = layout.key_format if tensor == "key" else layout.value_format
    if fmt.compressed and fmt.mse_bits == 4:
        return nibble_pair_table(layout.head_dim, device, fmt.codebook)
    return centroids(layout, tensor, device)


# 4-bit codes as integers (GPU: inline PTX). The uniform and Lloyd-Max grid codebooks are
# step * (code[n] - offset) with integer codes (codebook.grid_codes); the kernels feed tl.dot the
# fp16 value 1024 + code[n] (exact: fp16 steps by 1 from 1024 to 2048) and remove the offset per
# row after the product (the query's sum for scores, the weights' sum for the output) with the
# step on the norms.
# Same operands and outputs as the Lloyd-Max permutes (triton_common.nibble_pairs_pure and
# nibble_quads), so the packed bytes still reach shared memory for tl.dot. Pairs: the low
# nibbles of bytes (0, 1) and (2, 3) of $4 into $0, $1, their high nibbles into $2, $3. Quads:
# nibble p of both 16-bit words of $4 into $p.
#
# Uniform codes are n: an OR into 1024's bit pattern, two codes per instruction; bytes (0, 1)
# and (2, 3) first spread to 16-bit lanes (pairs).
AFFINE_PAIRS_ASM = """{
.reg .b32 t, u;
prmt.b32 t, $4, 0, 0x4140;
prmt.b32 u, $4, 0, 0x4342;
lop3.b32 $0, t, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 $1, u, 0x000F000F, 0x64006400, 0xEA;
shr.u32 t, t, 4;
shr.u32 u, u, 4;
lop3.b32 $2, t, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 $3, u, 0x000F000F, 0x64006400, 0xEA;
}"""
AFFINE_QUADS_ASM = """{
.reg .b32 t;
lop3.b32 $0, $4, 0x000F000F, 0x64006400, 0xEA;
shr.u32 t, $4, 4;
lop3.b32 $1, t, 0x000F000F, 0x64006400, 0xEA;
shr.u32 t, $4, 8;
lop3.b32 $2, t, 0x000F000F, 0x64006400, 0xEA;
shr.u32 t, $4, 12;
lop3.b32 $3, t, 0x000F000F, 0x64006400, 0xEA;
}"""
# Lloyd-Max grid codes (0-127, the lloyd-max-grid codebook) by byte permutes: the codes of
# levels 0-7 are the bytes of
# words l0, l1, those of levels 8-15 the bytes of h0, h1. ``prmt`` reads a selector nibble's
# low 3 bits as a byte index and, when bit 3 is set, gives that byte's sign replicated, 0 here
# (every code is below 128). So with the codes themselves as selectors, prmt(l0, l1) gives the
# code of every nibble below 8 and 0 for the others; with bit 3 flipped, prmt(h0, h1) the
# reverse; their OR is every nibble's code: 4 codes per pair of permutes, no index arithmetic
# (lookup 5's permutes to exact Lloyd-Max centroids take 20-24 instructions per 8 codes, these
# 13-15).
# Then each code byte goes under the byte 0x64 of c (1024's high byte).
_GRID_PERMUTES = """
.reg .b32 x, s, xs, lo, hi, v, v2, c, e, f, l0, l1, h0, h1;
mov.b32 l0, {l0:#010x};
mov.b32 l1, {l1:#010x};
mov.b32 h0, {h0:#010x};
mov.b32 h1, {h1:#010x};
mov.b32 c, 0x64646464;
xor.b32 x, $4, 0x88888888;
prmt.b32 lo, l0, l1, $4;
prmt.b32 hi, h0, h1, x;
or.b32 v, lo, hi;
shr.u32 s, $4, 16;
shr.u32 xs, x, 16;
prmt.b32 lo, l0, l1, s;
prmt.b32 hi, h0, h1, xs;
or.b32 v2, lo, hi;
"""
# v: the codes of nibbles 0-3 of $4 (bits 0-15) as bytes, v2 those of nibbles 4-7.
_GRID_PAIRS_EPILOGUE = """
prmt.b32 $0, v, c, 0x4240;
prmt.b32 $2, v, c, 0x4341;
prmt.b32 $1, v2, c, 0x4240;
prmt.b32 $3, v2, c, 0x4341;
"""
_GRID_QUADS_EPILOGUE = """
prmt.b32 e, v, v2, 0x5140;
prmt.b32 f, v, v2, 0x7362;
prmt.b32 $0, e, c, 0x4140;
prmt.b32 $1, e, c, 0x4342;
prmt.b32 $2, f, c, 0x4140;
prmt.b32 $3, f, c, 0x4342;
"""


@functools.cache
def grid_asm(head_dim: int, codebook: str, quads: bool) -> str:
    """The inline PTX turning 4-bit codes of ``codebook`` into fp16 1024 + code (pairs for
    K's bytes, quads for V's 16-bit words)."""
    if codebook == "uniform":
        return AFFINE_QUADS_ASM if quads else AFFINE_PAIRS_ASM
    codes = grid_codes(head_dim, codebook)[0]
    if max(codes) >= 128:
        raise TQConfigError(f"grid codes {codes} do not fit the 7-bit permutes")
    words = [sum(codes[4 * word + i] << (8 * i) for i in range(4)) for word in range(4)]
    prologue = _GRID_PERMUTES.format(l0=words[0], l1=words[1], h0=words[2], h1=words[3])
    return "{" + prologue + (_GRID_QUADS_EPILOGUE if quads else _GRID_PAIRS_EPILOGUE) + "}"


def field_codebook(layout: CacheLayout, tensor: str) -> str:
    """The codebook name of K or V."""
    fmt = layout.key_format if tensor == "key" else layout.value_format
    return fmt.codebook


def grid_nibbles(layout: CacheLayout, tensor: str, codebooks=GRID_CODEBOOKS) -> bool:
    """Whether K or V is a 4-bit field whose codebook is one of ``codebooks`` (by default those
    with an integer grid): the kernels can read its codes as the integers 1024 + code[n]."""
    fmt = layout.key_format if tensor == "key" else layout.value_format
    return fmt.compressed and fmt.mse_bits == 4 and fmt.codebook in codebooks


def grid_offset_step(layout: CacheLayout, tensor: str) -> tuple[float, float]:
    """(1024 + offset, step) of a 4-bit field's grid: what the kernel takes off each product
    row per unit of the query's or weights' sum, and what rides on the norms. (0.0, 1.0) for
    any other field."""
    if not grid_nibbles(layout, tensor):
        return 0.0, 1.0
    return _grid_offset_step(layout.head_dim, field_codebook(layout, tensor))


@functools.cache
def _grid_offset_step(head_dim: int, codebook: str) -> tuple[float, float]:
    """Read once per (head_dim, codebook): every decode launch asks."""
    _, offset, step = grid_codes(head_dim, codebook)
    return 1024.0 + offset, float(step)


def boundaries(layout: CacheLayout, tensor: str, device: torch.device) -> torch.Tensor:
    """float32 quantization boundaries of K or V (what store's quantizer compares against)."""
    return _tables(layout, tensor, device)[1]


_ROTATION_ON_DEVICE: dict[tuple[int, int, torch.device, torch.dtype | str], torch.Tensor] = {}


def sign_hadamard(
    head_dim: int, seed: int, device: torch.device, dtype: torch.dtype = torch.float16
) -> torch.Tensor:
    """[head_dim, head_dim] matrix M of +-1 with x @ M / sqrt(head_dim) = rotate(x).

    The entries are exact in fp16 and bf16, so a tensor-core product with fp16 parts of x (or
    with bf16 x itself) loses nothing but the fp32 accumulation order. fp16 by default: Triton
    3.6's interpreter, which runs the kernels in CI, computes bf16 products wrongly; the store
    asks for bf16 on the GPU so a bf16 K/V product needs no conversion of the matrix.
    """
    key = (head_dim, seed, torch.device(device), dtype)
    if key not in _ROTATION_ON_DEVICE:
        exact = rotation_matrix(head_dim, seed, "cpu", torch.float64) * math.sqrt(head_dim)
        _ROTATION_ON_DEVICE[key] = exact.round().to(dtype).to(device).contiguous()
    return _ROTATION_ON_DEVICE[key]


def sign_hadamard_halves(head_dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """:func:`sign_hadamard` (fp16) with its even columns first, then its odd ones: the decode
    kernel that rotates its own query (4-bit keys, whose even and odd dimensions multiply
    separate halves of the query) reads each half as one contiguous [head_dim, head_dim / 2]
    tile instead of gathering every other column."""
    key = (head_dim, seed, torch.device(device), "halves")
    if key not in _ROTATION_ON_DEVICE:
        matrix = sign_hadamard(head_dim, seed, device)
        order = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
        _ROTATION_ON_DEVICE[key] = matrix[:, order.to(matrix.device)].contiguous()
    return _ROTATION_ON_DEVICE[key]


_BYTE_SQUARES: dict[tuple[int, int, str, torch.device], torch.Tensor] = {}


_COMPANDER_TABLES: dict[tuple[int, str | None, torch.device], torch.Tensor] = {}


#: compander_table's entries: the clamp's scale, g's 7 coefficients, the squares' 8, the
#: squares in fixed point for each of the 16 codes, and the fixed point's unit.
COMPANDER_TABLE_SIZE = 39
# The fixed-point squares' ceiling: square_fixed_point's digits (d0 + 256 (d1 + 255 d2), each
# in 0 .. 255) reach every integer below 256 * 255 * 256.
_FIXED_POINT_LIMIT = 256 * 255 * 256
# Margin below g's turning point for the clamp: the store's w reaches 0.5 exactly, where g
# must still rise (the turning point itself, rounded to float32, may lie just past the top).
_TURN_MARGIN = 1 - 1e-4


def compander_table(layout: CacheLayout, tensor: str, device: torch.device) -> torch.Tensor:
    """float32 [16] for the store's 4-bit quantizer by arithmetic
    (triton_store._quantize_companded). The store maps a unit coordinate t to
    w = clamp(t s + 0.5, 0, 1) - 0.5 (one saturating multiply-add), s = 1 / (2 T) with T just
    below g's turning point, so w is t / (2 T) clamped to [-0.5, 0.5]; the code is
    ceil(g(w) + 7) for an odd polynomial g with g(edge k / (2 T)) = k - 7, which counts the
    edges strictly below t as torch.bucketize does. Entry 0 holds s; 1-7 the coefficients of
    g(w) / w in w^2, highest first; 8-15 those, highest first, of the degree-7 polynomial in
    q = (n - 8) (n - 7) = f (f + 1), f in 0 .. 7 the code's cell counted from the middle
    (float32's Horner stays within 1e-7 of the largest square), through the squared float32
    levels of codes 8 + f (fp64 interpolation; the levels are symmetric, and so is q).
    Entries 16-31 hold square_fixed_point's integer square of each code (exact in float32),
    32 its unit, 33-38 the 16-bit halves of square_digit_words 0, 2 and 4.

    The companded codebook's g is its compander t (a + b t^2) (codebook.compander) in w:
    entries 1-5 zero. Lloyd-Max's is the degree-13 odd polynomial through its 15 float32
    edges, which rises up to T, past the outermost edge; evaluated in float32 it puts an edge
    within about 2e-6 of a cell (4e-8 in t) of where the search does, so a value that close
    to an edge may take the neighbour, as with the companded codebook. Zeros for any other
    field, which the store does not read it for."""
    fmt = layout.key_format if tensor == "key" else layout.value_format
    codebook = fmt.codebook if fmt.compressed and fmt.mse_bits == 4 else None
    if codebook not in ("companded", "lloyd-max"):
        codebook = None
    key = (layout.head_dim, codebook, torch.device(device))
    if key not in _COMPANDER_TABLES:
        table = np.zeros(COMPANDER_TABLE_SIZE)
        if codebook is not None:
            table[0], table[1:8] = _compander_polynomial(layout.head_dim, codebook)
            levels = codebook_tensors(layout.head_dim, 4, "cpu", codebook)[0].double().numpy()
            cells = np.arange(8.0)
            table[8:16] = np.polyfit(cells * (cells + 1), levels[8:] ** 2, 7)
            squares, unit = square_fixed_point(layout.head_dim, codebook)
            table[16:32], table[32] = squares, unit
            # square_digit_words 0, 2, 4 as 16-bit halves (exact in float32), low half first.
            words = square_digit_words(layout.head_dim, codebook)[0::2]
            table[33:39] = [half for w in words for half in (w & 0xFFFF, w >> 16)]
        _COMPANDER_TABLES[key] = torch.tensor(table, dtype=torch.float32, device=device)
    return _COMPANDER_TABLES[key]


@functools.cache
def square_fixed_point(head_dim: int, codebook: str) -> tuple[tuple[int, ...], float]:
    """(the 16 codes' squared float32 levels as integers, the unit): level n^2 = integer[n] *
    unit to within half a unit, unit = 2^-k with the largest square as close below
    _FIXED_POINT_LIMIT (about 2^24) as a power of two puts it, so within 6e-8 of it. Sums of
    these integers are exact, so a row's sum of squares is exact up to one float32 rounding
    (the store's permuted squares, square_sum_asm)."""
    levels = codebook_tensors(head_dim, 4, "cpu", codebook)[0].double().numpy()
    squares = levels**2
    exponent = math.floor(math.log2((_FIXED_POINT_LIMIT - 1) / squares.max()))
    integers = np.rint(squares * 2.0**exponent).astype(np.int64)
    if integers.max() >= _FIXED_POINT_LIMIT or any(integers != integers[::-1]):
        raise TQConfigError(f"the {codebook} codebook for head_dim {head_dim} has no symmetric "
                            f"fixed-point squares")  # fmt: skip
    return tuple(int(v) for v in integers), 2.0**-exponent


def square_digit_words(head_dim: int, codebook: str) -> tuple[int, ...]:
    """The 6 words square_sum_asm permutes: for digits d0, d1, d2 of the 8 magnitudes'
    square_fixed_point integers (each d0 + 256 (d1 + 255 d2), digits in 0 .. 255), the digit
    of magnitudes 0-3 (a byte each, magnitude 0 lowest), then of 4-7."""
    magnitudes = square_fixed_point(head_dim, codebook)[0][8:]
    digits = (
        [v & 255 for v in magnitudes],
        [(v >> 8) % 255 for v in magnitudes],
        [(v >> 8) // 255 for v in magnitudes],
    )
    return tuple(
        sum(v << (8 * i) for i, v in enumerate(values[half : half + 4]))
        for values in digits
        for half in (0, 4)
    )


@functools.cache
def square_sum_asm(head_dim: int, codebook: str) -> str:
    """Inline PTX for the store's norm correction: $1 holds 8 4-bit codes (a nibble each), $0
    gets the sum of their square_fixed_point integers; $2, $3, $4 hold square_digit_words 0,
    2, 4 (registers: a permute reads one source word from a register), words 1, 3, 5 are
    immediates here.

    The codebook is symmetric, so a code's square is that of its magnitude index f (code - 8,
    or 7 - code below 8; as in nibble_asm). One ``prmt`` picks a digit of 4 codes from the two
    words holding it for all 8 magnitudes, and one ``dp4a`` adds the 4 bytes into the sum with
    weight 1 (d0, d1) or 255 (d2). 18 instructions for 8 codes, no memory access.
    """
    words = square_digit_words(head_dim, codebook)
    lines = ["{", ".reg .b32 pos, idx, hi, p, m;"]
    lines += [
        # The magnitude index of each nibble: xor with 8 where bit 3 is set, 7 elsewhere.
        "shr.u32 pos, $1, 3;",
        "and.b32 pos, pos, 0x11111111;",
        "add.u32 pos, pos, 0x77777777;",
        "xor.b32 idx, $1, pos;",
        "shr.u32 hi, idx, 16;",
    ]
    steps = [(4, 5, "0xffffffff"), (3, 3, "0x01010101"), (2, 1, "0x01010101")]
    accumulator = "0"
    for register, word, weight in steps:
        for selector in ("idx", "hi"):
            lines.append(f"prmt.b32 p, ${register}, {words[word]:#010x}, {selector};")
            target = "$0" if (register, selector) == (2, "hi") else "m"
            lines.append(f"dp4a.u32.u32 {target}, p, {weight}, {accumulator};")
            accumulator = "m"
        if register == 3:
            lines.append("shl.b32 m, m, 8;")
    lines.append("}")
    return "\n".join(lines)


def _compander_polynomial(head_dim: int, codebook: str) -> tuple[float, np.ndarray]:
    """(s = 1 / (2 T) as a float32, the 7 coefficients of g(w) / w in w^2, highest first,
    each rounded to float32) for compander_table. The store clamps w to [-0.5, 0.5] and
    rounds g(w) + 7 with no clamp after: g must rise on [0, 0.5] (checked on a fine grid,
    fp64) with g(0.5) in (7, 8), so the outermost cells keep codes 0 and 15."""
    if codebook == "companded":
        a, b = compander(head_dim)
        turn = math.sqrt(-a / (3 * b)) * _TURN_MARGIN
        scale = float(np.float32(1 / (2 * turn)))
        # g(t) = t (a + b t^2) with t = w / s.
        coefficients = np.array([0, 0, 0, 0, 0, b / scale**3, a / scale], dtype=np.float64)
    else:
        edges = codebook_tensors(head_dim, 4, "cpu", codebook)[1].double().numpy()[8:]
        in_t = np.polyfit(edges**2, np.arange(1.0, 8.0) / edges, 6)
        # T: where g stops rising past the outermost edge (the polynomial turns soon after it).
        grid = np.linspace(edges[-1], edges[-1] * 2, 100_001)
        rising = np.diff(grid * np.polyval(in_t, grid**2)) > 0
        turn = (grid[np.argmin(rising)] if not rising.all() else grid[-1]) * _TURN_MARGIN
        scale = float(np.float32(1 / (2 * turn)))
        # Fitted again in w through the edges as the store scales them (float32 s).
        edges_w = edges * scale
        coefficients = np.polyfit(edges_w**2, np.arange(1.0, 8.0) / edges_w, 6)
    coefficients = coefficients.astype(np.float32).astype(np.float64)
    grid = np.linspace(0, 0.5, 100_001)
    values = grid * np.polyval(coefficients, grid**2)
    if not (np.diff(values) > 0).all() or not 7 < values[-1] < 8:
        raise TQConfigError(f"the {codebook} codebook's compander for head_dim {head_dim} "
                            f"does not rise to a value in (7, 8)")  # fmt: skip
    return scale, coefficients


def byte_square_sums(layout: CacheLayout, tensor: str, device: torch.device) -> torch.Tensor:
    """float32 [256]: entry b is the sum of the squared centroids of the codes packed in byte b,
    for a field stored as one plane of 1, 2, 4 or 8 bits (the store's norm correction then reads
    one entry per packed byte instead of one centroid per coordinate). Other fields, which the
    store does not read it for, get the 1-bit table."""
    fmt = layout.key_format if tensor == "key" else layout.value_format
    bits = fmt.mse_bits if fmt.compressed else 1
    if plane_widths(bits) != (bits,):
        bits = 1
    key = (layout.head_dim, bits, fmt.codebook, torch.device(device))
    if key not in _BYTE_SQUARES:
        table = codebook_tensors(layout.head_dim, bits, "cpu", fmt.codebook)[0].float()
        squares = table * table
        byte = torch.arange(256)
        total = torch.zeros(256, dtype=torch.float32)
        for shift in range(0, 8, bits):
            total += squares[(byte >> shift) & ((1 << bits) - 1)]
        _BYTE_SQUARES[key] = total.to(device)
    return _BYTE_SQUARES[key]
