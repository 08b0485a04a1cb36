"""The store quantizer's inline PTX, run on the CPU with the documented semantics.

Triton's interpreter cannot run inline PTX, so CI runs the store's quantizer with plain
arithmetic instead (triton_store._saturated_unit and _rounded_up without ASM). This parses the
asm text the GPU kernel compiles (its rounding mode, saturation and immediate operands) and
executes it exactly: fma computes a * b + c without intermediate rounding and rounds once to
float32 in the instruction's mode (exact rationals here), .sat clamps the result to [0, 1].
Then it quantizes unit coordinates as the kernel does and compares with torch.bucketize over
the codebook's float32 edges.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from tq_core import TQCodec
from tq_core.codebook import codebook_tensors
from tq_core.ops import triton_layout

pytest.importorskip("triton")
from tq_core.ops import triton_store

_FMA = re.compile(
    r"^fma\.(rn|rp|rm|rz)(\.sat)?\.f32 \$0, \$1, \$2, 0f([0-9A-Fa-f]{8});$"
)  # fmt: skip


def _float32(bits: int) -> np.float32:
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


def _round_to_float32(exact: Fraction, mode: str) -> np.float32:
    """The float32 that ``mode`` (rn: nearest, ties to even; rp: toward +inf; rm: toward -inf;
    rz: toward zero) rounds the rational ``exact`` to (finite results only)."""
    below = np.float32(float(exact))  # close; then step to the float32s around exact
    while Fraction(float(below)) > exact:
        below = np.nextafter(below, np.float32(-np.inf))
    while Fraction(float(np.nextafter(below, np.float32(np.inf)))) <= exact:
        below = np.nextafter(below, np.float32(np.inf))
    if Fraction(float(below)) == exact:
        return below
    above = np.nextafter(below, np.float32(np.inf))
    if mode == "rp" or (mode == "rz" and exact < 0):
        return above
    if mode in ("rm", "rz"):
        return below
    low_gap, high_gap = exact - Fraction(float(below)), Fraction(float(above)) - exact
    if low_gap != high_gap:
        return below if low_gap < high_gap else above
    return below if int(below.view(np.uint32)) % 2 == 0 else above


def run_fma(asm: str, a: float, b: float) -> np.float32:
    """Execute the one-instruction asm ``fma.MODE[.sat].f32 $0, $1, $2, 0fXXXXXXXX;`` with
    $1 = a and $2 = b (float32 values); refuses any other text."""
    match = _FMA.match(asm.strip())
    assert match, f"not a modelled fma: {asm!r}"
    mode, saturate, immediate = match.groups()
    c = _float32(int(immediate, 16))
    exact = Fraction(float(np.float32(a))) * Fraction(float(np.float32(b))) + Fraction(float(c))
    result = _round_to_float32(exact, mode)
    if saturate:
        result = np.float32(min(max(float(result), 0.0), 1.0))
    return result


def _horner32(coefficients: np.ndarray, x: np.float32) -> np.float32:
    value = np.float32(coefficients[0])
    for coefficient in coefficients[1:]:
        value = np.float32(value * x + np.float32(coefficient))
    return value


def _kernel_code(table: np.ndarray, unit: float, row_scale: float = 1.0) -> int:
    """triton_store._quantize_companded's code for one value, through its asm."""
    scale = np.float32(np.float32(row_scale) * table[0])
    w = np.float32(run_fma(triton_store.SATURATED_FMA_ASM.value, unit, scale) - np.float32(0.5))
    slope = _horner32(table[1:8], np.float32(w * w))
    rounded = run_fma(triton_store.ROUNDED_UP_FMA_ASM.value, w, slope)
    return int(rounded.view(np.uint32)) & 15


def test_the_fma_model_rounds_as_documented():
    """The interpreter itself, on cases whose answers are known: exact results stay, 1 + 2^-30
    rounds to 1 (nearest) or to 1 + 2^-23 (up), 1 - 2^-30 down to 1 - 2^-24, .sat clamps."""
    assert run_fma("fma.rn.f32 $0, $1, $2, 0f00000000;", 3.0, 0.5) == np.float32(1.5)
    assert run_fma("fma.rp.f32 $0, $1, $2, 0f3F800000;", 2.0**-15, 2.0**-15) == np.float32(
        1 + 2.0**-23
    )
    assert run_fma("fma.rn.f32 $0, $1, $2, 0f3F800000;", 2.0**-15, 2.0**-15) == np.float32(1.0)
    assert run_fma("fma.rm.f32 $0, $1, $2, 0f3F800000;", -(2.0**-15), 2.0**-15) == np.float32(
        1 - 2.0**-24
    )
    assert run_fma("fma.rn.sat.f32 $0, $1, $2, 0f3F000000;", 4.0, 1.0) == np.float32(1.0)
    assert run_fma("fma.rn.sat.f32 $0, $1, $2, 0f3F000000;", -4.0, 1.0) == np.float32(0.0)
    with pytest.raises(AssertionError):
        run_fma("fma.rn.ftz.f32 $0, $1, $2, 0f3F000000;", 1.0, 1.0)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("codebook", ["lloyd-max", "companded"])
def test_the_store_asm_codes_like_bucketize(head_dim, codebook):
    """Through the asm: 0 takes code 7 (bucketize's lower code on the middle edge), values
    past the outermost edges up to +-1 take 0 and 15, and random coordinates at the
    codebook's scale (some with a row scale that is not 1) take bucketize's code except
    within float32 rounding of an edge."""
    layout = TQCodec(head_dim, 4, 4, key_codebook=codebook).cache_layout(1, 16)
    table = triton_layout.compander_table(layout, "key", "cpu").numpy()
    edges = codebook_tensors(head_dim, 4, "cpu", codebook)[1]
    assert _kernel_code(table, 0.0) == 7
    assert _kernel_code(table, -0.0) == 7
    for far in (1.0, 0.9, 0.5, float(edges[-1]) * 1.5):
        assert _kernel_code(table, far) == 15
        assert _kernel_code(table, -far) == 0
    generator = torch.Generator().manual_seed(head_dim)
    sigma = 1 / math.sqrt(head_dim)
    t = (torch.randn(4_000, generator=generator) * sigma).numpy().astype(np.float32)
    expected = torch.bucketize(torch.from_numpy(t), edges).numpy()
    codes = np.array([_kernel_code(table, float(v)) for v in t])
    assert (codes != expected).sum() <= 1
    # The row's scale enters the same multiply-add: product 3 t with row_scale 1/3.
    third = np.float32(1 / 3)
    scaled = np.array([_kernel_code(table, float(np.float32(3) * v), third) for v in t[:500]])
    assert (scaled != expected[:500]).sum() <= 1
