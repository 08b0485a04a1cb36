"""The inline PTX of the GPU's register lookup, run instruction by instruction on the CPU.

Triton's interpreter cannot run inline PTX, so CI would otherwise never execute the asm the GPU
kernels use to turn 4-bit codes into centroids (or, for the uniform codebook, into fp16
1024 + n). This interprets the asm text itself (the few
PTX instructions it uses, with their documented semantics) for every byte value in every byte
position, and compares its fp16 outputs with the codebook.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tq_core.codebook import codebook_tensors, grid_codes
from tq_core.ops import triton_layout

pytest.importorskip("triton")
from tq_core.ops import triton_common

MASK = 0xFFFFFFFF


def _prmt(a: int, b: int, selector: int) -> int:
    """PTX prmt.b32 (default mode): result byte i is byte (s & 7) of {b, a}, or that byte's
    sign replicated when bit 3 of the selector nibble s is set."""
    source = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    result = 0
    for i in range(4):
        nibble = (selector >> (4 * i)) & 0xF
        byte = source[nibble & 7]
        if nibble & 8:
            byte = 0xFF if byte & 0x80 else 0
        result |= byte << (8 * i)
    return result


def _lop3(a: int, b: int, c: int, table: int) -> int:
    """PTX lop3.b32: each result bit is bit (4 a_i + 2 b_i + c_i) of the 8-bit ``table``."""
    result = 0
    for i in range(32):
        index = 4 * ((a >> i) & 1) + 2 * ((b >> i) & 1) + ((c >> i) & 1)
        result |= ((table >> index) & 1) << i
    return result


def run_ptx(asm: str, registers: dict[str, int]) -> dict[str, int]:
    """Execute the straight-line PTX of ``asm`` over 32-bit ``registers`` ($n operands and
    named .reg values); refuses any instruction it does not model."""
    regs = dict(registers)

    def value(token: str) -> int:
        token = token.strip()
        if token in regs:
            return regs[token]
        return int(token, 0) & MASK

    for line in asm.splitlines():
        line = line.strip()
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.rstrip(";").split(None, 1)
        dest, *args = [part.strip() for part in rest.split(",")]
        x = [value(arg) for arg in args]
        if op == "mov.b32":
            out = x[0]
        elif op == "and.b32":
            out = x[0] & x[1]
        elif op == "or.b32":
            out = x[0] | x[1]
        elif op == "xor.b32":
            out = x[0] ^ x[1]
        elif op == "not.b32":
            out = ~x[0]
        elif op == "shr.u32":
            out = x[0] >> x[1]
        elif op == "sub.u32":
            out = x[0] - x[1]
        elif op == "add.u32":
            out = x[0] + x[1]
        elif op == "shl.b32":
            out = x[0] << x[1]
        elif op == "dp4a.u32.u32":
            out = x[2] + sum(((x[0] >> s) & 0xFF) * ((x[1] >> s) & 0xFF) for s in (0, 8, 16, 24))
        elif op == "mul.lo.u32":
            out = x[0] * x[1]
        elif op == "mul.hi.u32":
            out = (x[0] * x[1]) >> 32
        elif op == "prmt.b32":
            out = _prmt(*x)
        elif op == "lop3.b32":
            out = _lop3(*x)
        else:
            raise AssertionError(f"PTX instruction not modelled here: {line}")
        regs[dest] = out & MASK
    return regs


def _words() -> list[int]:
    """Every byte value in every byte position, and random words."""
    rng = np.random.default_rng(0)
    return [b * 0x01010101 for b in range(256)] + [int(w) for w in rng.integers(0, 2**32, 256)]


def _fp16_bits(head_dim: int, codebook: str = "lloyd-max") -> list[int]:
    centroids = codebook_tensors(head_dim, 4, "cpu", codebook)[0].to(torch.float16)
    return [int(v) & 0xFFFF for v in centroids.view(torch.int16).tolist()]


def _nibbles(word: int) -> list[int]:
    return [(word >> (4 * k)) & 15 for k in range(8)]


def _formatted(asm: str) -> str:
    """The asm, once no template field is left unformatted in it."""
    assert not re.search(r"\{[a-z0-9_]+(:[^}]*)?\}", asm), "unformatted template field"
    return asm


def _halves(*registers: int) -> list[int]:
    return [half for r in registers for half in (r & 0xFFFF, r >> 16)]


@pytest.mark.parametrize("kind", ["lloyd-max", "uniform"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_pair_asm_gives_the_codebook_for_both_nibbles_of_every_byte(head_dim, kind):
    """Lookup 2's permutes over the register words of either codebook (a uniform field below
    lookup 5 reads its own table's words)."""
    asm = triton_common._PRMT_PAIRS.value
    words = triton_layout.nibble_pair_table(head_dim, "cpu", kind)[256:].tolist()
    table = [w & MASK for w in words]
    codebook = _fp16_bits(head_dim, kind)
    # Each table argument arrives as 4 packed copies: $5-$8, $9-$12, ... (arg-major).
    words = {f"${5 + 4 * arg + copy}": table[arg] for arg in range(5) for copy in range(4)}
    for word in _words():
        out = run_ptx(asm, {"$4": word, **words})
        nibbles = _nibbles(word)
        assert _halves(out["$0"], out["$1"]) == [codebook[n] for n in nibbles[0::2]], hex(word)
        assert _halves(out["$2"], out["$3"]) == [codebook[n] for n in nibbles[1::2]], hex(word)


@pytest.mark.parametrize("high", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_single_nibble_asm_gives_the_codebook(head_dim, high):
    asm = _formatted(triton_layout.nibble_asm(head_dim, high=high))
    codebook = _fp16_bits(head_dim)
    for word in _words():
        out = run_ptx(asm, {"$2": word})
        nibbles = _nibbles(word)[1 if high else 0 :: 2]
        assert _halves(out["$0"], out["$1"]) == [codebook[n] for n in nibbles], hex(word)


def _group_asm(head_dim: int, quads: bool, words: str) -> tuple[str, dict[str, int]]:
    """Lookup 5's asm (the codebook as immediates) or lookup 6's (the codebook words as
    operands: nibble_pair_table's entries 256-260, each of the five 32-bit arguments as
    ``pack`` copies after the packed input $4, arg-major), and the operands it reads."""
    if words == "immediates":
        return _formatted(triton_layout.nibble_group_asm(head_dim, quads=quads)), {}
    pack = 2 if quads else 4
    table = [w & MASK for w in triton_layout.nibble_pair_table(head_dim, "cpu")[256:].tolist()]
    operands = {f"${5 + pack * arg + copy}": table[arg] for arg in range(5) for copy in range(pack)}
    return triton_layout.nibble_group_operand_asm(quads=quads), operands


@pytest.mark.parametrize("words", ["immediates", "operands"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_group_pair_asm_gives_the_codebook(head_dim, words):
    """Lookups 5 and 6's K lookup: both nibbles of 4 bytes."""
    asm, operands = _group_asm(head_dim, False, words)
    codebook = _fp16_bits(head_dim)
    for word in _words():
        out = run_ptx(asm, {"$4": word, **operands})
        nibbles = _nibbles(word)
        assert _halves(out["$0"], out["$1"]) == [codebook[n] for n in nibbles[0::2]], hex(word)
        assert _halves(out["$2"], out["$3"]) == [codebook[n] for n in nibbles[1::2]], hex(word)


@pytest.mark.parametrize("words", ["immediates", "operands"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_quad_asm_gives_nibble_p_of_both_16_bit_words(head_dim, words):
    """Lookups 5 and 6's V lookup: $4 holds two 16-bit words (dimensions 4j .. 4j + 3 each);
    output p is the centroid of nibble p of the low word and of the high word."""
    asm, operands = _group_asm(head_dim, True, words)
    codebook = _fp16_bits(head_dim)
    for word in _words():
        out = run_ptx(asm, {"$4": word, **operands})
        nibbles = _nibbles(word)
        for p in range(4):
            expected = [codebook[nibbles[p]], codebook[nibbles[4 + p]]]
            assert _halves(out[f"${p}"]) == expected, (hex(word), p)


@pytest.mark.parametrize("codebook", ["uniform", "lloyd-max-grid"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_grid_pair_asm_gives_1024_plus_the_code_of_both_nibbles_of_every_byte(head_dim, codebook):
    """The integer path's K conversion: 4 bytes in $4 -> low nibbles of bytes (0, 1), (2, 3)
    as fp16 1024 + code[n] in $0, $1, high nibbles in $2, $3 (1024 is 0x6400; a code below
    1024 fills the mantissa's low bits exactly)."""
    codes = grid_codes(head_dim, codebook)[0]
    asm = _formatted(triton_layout.grid_asm(head_dim, codebook, False))
    for word in _words():
        out = run_ptx(asm, {"$4": word})
        nibbles = _nibbles(word)
        low, high = nibbles[0::2], nibbles[1::2]
        assert _halves(out["$0"], out["$1"]) == [0x6400 | codes[n] for n in low], hex(word)
        assert _halves(out["$2"], out["$3"]) == [0x6400 | codes[n] for n in high], hex(word)


@pytest.mark.parametrize("codebook", ["uniform", "lloyd-max-grid"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_grid_quad_asm_gives_1024_plus_the_code_of_nibble_p_of_both_16_bit_words(
    head_dim, codebook
):
    """The integer path's V conversion: output p is 1024 + code[nibble p] of the low word and
    of the high word of $4."""
    codes = grid_codes(head_dim, codebook)[0]
    asm = _formatted(triton_layout.grid_asm(head_dim, codebook, True))
    for word in _words():
        out = run_ptx(asm, {"$4": word})
        nibbles = _nibbles(word)
        for p in range(4):
            expected = [0x6400 | codes[nibbles[p]], 0x6400 | codes[nibbles[4 + p]]]
            assert _halves(out[f"${p}"]) == expected, (hex(word), p)


@pytest.mark.parametrize("codebook", ["uniform", "lloyd-max-grid"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_the_fp16_grid_values_less_the_offset_are_the_levels(head_dim, codebook):
    """What the kernel computes from 1024 + code: (fp16 value - (1024 + offset)) * step, in
    fp64, is the codebook's float32 level."""
    codes = grid_codes(head_dim, codebook)[0]
    fp16 = torch.tensor([0x6400 | c for c in codes], dtype=torch.int16).view(torch.float16)
    offset, step = triton_layout._grid_offset_step(head_dim, codebook)
    levels = codebook_tensors(head_dim, 4, "cpu", codebook)[0].double()
    torch.testing.assert_close((fp16.double() - offset) * step, levels, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("codebook", ["lloyd-max", "companded"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_square_sum_asm_adds_the_fixed_point_squares_of_8_codes(head_dim, codebook):
    """The store's permuted squares: $1 holds 8 codes (nibbles), $2-$4 digit words 0, 2, 4;
    $0 is the sum of the 8 codes' square_fixed_point integers, exactly (every byte value in
    every position, and random words)."""
    asm = triton_layout.square_sum_asm(head_dim, codebook)
    integers, _ = triton_layout.square_fixed_point(head_dim, codebook)
    words = triton_layout.square_digit_words(head_dim, codebook)
    registers = {"$2": words[0], "$3": words[2], "$4": words[4]}
    for word in _words():
        out = run_ptx(asm, {"$1": word, **registers})
        assert out["$0"] == sum(integers[n] for n in _nibbles(word)), hex(word)
