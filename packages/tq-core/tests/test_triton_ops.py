"""The Triton kernels against the PyTorch reference, on fresh random inputs.

On a CUDA machine the kernels are compiled; elsewhere (CI) they run in Triton's interpreter at
small shapes (conftest.py sets TRITON_INTERPRET=1). The reference reads the same cache bytes, so
attention differences come only from the kernels' fp16 tensor-core operands (about 5e-4
relative) and the output dtype's rounding.
"""

from __future__ import annotations

import math

import pytest
import torch

from paged_scenario import build_paged_batch, relative_error
from tq_core import TQCodec, ops
from tq_core.codebook import codebook_tensors, compander
from tq_core.errors import TQConfigError, TQInputError
from tq_core.ops import reference
from tq_core.rotation import rotate, walsh_hadamard

pytest.importorskip("triton")
import triton
import triton.language as tl

from tq_core.ops import triton_attention, triton_common, triton_layout, triton_store

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
# Output tolerance per output dtype: fp16 dot operands, then the output's own rounding.
TOLERANCE = {torch.float32: 2e-3, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}

# (head_dim, k_bits, v_bits, norm_dtype): every plane split (1..8 bits), raw bf16 layers, fp16
# norms, and each supported head_dim.
CODECS = [
    (64, 4, 4, "float32"),
    (128, 3, 5, "float32"),
    (64, 8, 2, "float16"),
    (64, 6, 7, "float32"),
    (64, 1, 16, "float32"),
    (64, 16, 4, "float32"),
    (256, 4, 8, "float32"),
]
# With the uniform or Lloyd-Max grid codebook (a fifth and sixth entry: K's and V's): 4-bit
# fields then take the kernels' integer path (nibbles as 1024 + code, no fp16 table); wider ones
# read their table.
UNIFORM_CODECS = [
    (64, 4, 4, "float32", "uniform", "uniform"),
    (128, 4, 4, "float16", "lloyd-max", "uniform"),
    (128, 4, 8, "float32", "uniform", "lloyd-max"),
    (64, 3, 5, "float32", "uniform", "uniform"),
    (128, 4, 4, "float32", "lloyd-max-grid", "lloyd-max-grid"),
    (128, 4, 4, "float16", "lloyd-max-grid", "uniform"),
    (64, 4, 6, "float32", "lloyd-max-grid", "lloyd-max-grid"),
    (128, 4, 4, "float32", "companded", "companded"),
    (64, 4, 4, "float16", "companded", "lloyd-max"),
    (128, 4, 8, "float32", "companded", "uniform"),
]


def _codec(codec_spec) -> TQCodec:
    head_dim, k_bits, v_bits, norm_dtype = codec_spec[:4]
    key_codebook, value_codebook = codec_spec[4:] or ("lloyd-max", "lloyd-max")
    return TQCodec(
        head_dim, k_bits, v_bits, norm_dtype=norm_dtype, key_codebook=key_codebook,
        value_codebook=value_codebook,
    )  # fmt: skip


def _batch(codec_spec, seq_lens, num_kv_heads, block_size, generator):
    codec = _codec(codec_spec)
    batch = build_paged_batch(codec, seq_lens, num_kv_heads, block_size, generator)
    on_device = {
        name: getattr(batch, name).to(DEVICE) for name in ("kv_cache", "block_table", "seq_lens")
    }
    return batch, on_device


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("codec_spec", CODECS + UNIFORM_CODECS)
def test_store_writes_the_reference_bytes(codec_spec, dtype, generator):
    _check_store_against_the_reference(codec_spec, dtype, generator)


# The store's other paths (triton_store.TUNING), each held to the reference's bytes: the rotation
# as Walsh-Hadamard butterflies in fp32 (fwht 1: head_dim 64, 128, 256, a raw bf16 layer); fp16
# parts of the unit vector on tensor cores (raw_dot 0, the path before raw_dot, half inputs
# included); the norm correction's squares from the per-byte table (searched_squares 0); every
# positive boundary compared and the squares read per code (the quantizer before the binary
# search); 32- and 64-column products (the defaults before 128); evenly spaced codebooks, whose
# codes come from arithmetic (uniform_arithmetic, 2-8 bits, K and V each) or, with it off, from the
# search; the companded codebook's 4-bit codes by arithmetic with their squares by a polynomial
# (companded_arithmetic 1), from the byte table (2; with byte_squares 0 a load per code) or
# permuted from fixed-point digits (3, the default), or by the search (0), its 3 bits
# Lloyd-Max's; Lloyd-Max's 4-bit codes through its degree-13 polynomial (the default), with
# the squares the same three ways (lloyd_max_arithmetic 1-3, 3 the default), 3 and 5 bits
# still searched, or by the search (0, the default before; the search's own levers turn the
# polynomial off to reach it); the norm from the rows as loaded where a 128-column product
# (the whole row up to head_dim 128) would give it from its squares (product_norm 0).
SEARCH = {"lloyd_max_arithmetic": 0}
LINEAR_QUANTIZER = {**SEARCH, "binary_search": 0, "byte_squares": 0}
STORE_SETTINGS = [
    ({"fwht": 1}, (128, 4, 4, "float32"), torch.bfloat16),
    ({"fwht": 1}, (64, 8, 2, "float16"), torch.float32),
    ({"fwht": 1}, (64, 16, 4, "float32"), torch.float16),
    ({"fwht": 1}, (256, 3, 5, "float32"), torch.bfloat16),
    ({"raw_dot": 0}, (128, 4, 4, "float32"), torch.bfloat16),
    ({"raw_dot": 0}, (64, 3, 5, "float16"), torch.float16),
    ({"raw_dot": 0}, (128, 4, 4, "float32", "uniform", "lloyd-max-grid"), torch.bfloat16),
    ({"raw_dot": 0}, (64, 16, 4, "float32"), torch.float16),
    ({**SEARCH, "searched_squares": 0}, (128, 4, 4, "float32"), torch.bfloat16),
    ({"searched_squares": 0}, (64, 3, 5, "float16"), torch.float16),
    (LINEAR_QUANTIZER, (128, 4, 4, "float32"), torch.bfloat16),
    (LINEAR_QUANTIZER, (64, 3, 5, "float16"), torch.float16),
    (LINEAR_QUANTIZER, (64, 8, 2, "float32"), torch.float32),
    (LINEAR_QUANTIZER, (128, 4, 4, "float32", "uniform", "lloyd-max-grid"), torch.bfloat16),
    ({"chunk": 32}, (128, 4, 4, "float32"), torch.bfloat16),
    ({}, (128, 4, 4, "float32", "uniform", "uniform"), torch.bfloat16),
    ({}, (64, 3, 2, "float16", "uniform", "uniform"), torch.float16),
    ({}, (256, 8, 4, "float32", "uniform", "lloyd-max"), torch.float32),
    ({"raw_dot": 0}, (128, 4, 5, "float16", "lloyd-max", "uniform"), torch.bfloat16),
    ({"uniform_arithmetic": 0}, (128, 4, 4, "float32", "uniform", "uniform"), torch.bfloat16),
    ({}, (128, 4, 4, "float32", "companded", "companded"), torch.bfloat16),
    ({}, (64, 4, 3, "float16", "companded", "companded"), torch.float16),
    ({}, (256, 4, 4, "float32", "companded", "lloyd-max"), torch.float32),
    ({"byte_squares": 0}, (128, 4, 4, "float32", "companded", "uniform"), torch.bfloat16),
    ({"companded_arithmetic": 2}, (64, 4, 4, "float32", "companded", "companded"), torch.float16),
    (
        {"companded_arithmetic": 2, "byte_squares": 0},
        (128, 4, 4, "float16", "companded", "lloyd-max"),
        torch.bfloat16,
    ),
    ({"companded_arithmetic": 0}, (128, 4, 4, "float32", "companded", "companded"), torch.bfloat16),
    (SEARCH, (128, 4, 4, "float32"), torch.bfloat16),
    (SEARCH, (64, 4, 3, "float16"), torch.float16),
    ({"lloyd_max_arithmetic": 1}, (64, 4, 3, "float16"), torch.float16),
    ({"lloyd_max_arithmetic": 1}, (256, 5, 4, "float32", "lloyd-max", "companded"), torch.float32),
    ({"lloyd_max_arithmetic": 1}, (256, 4, 2, "float32"), torch.bfloat16),
    ({"lloyd_max_arithmetic": 2}, (128, 4, 4, "float16"), torch.bfloat16),
    ({"chunk": 64}, (128, 4, 4, "float32"), torch.bfloat16),
    ({"chunk": 64}, (128, 4, 4, "float16", "companded", "lloyd-max"), torch.float16),
    ({"lloyd_max_arithmetic": 1}, (64, 4, 3, "float16", "lloyd-max", "companded"), torch.float16),
    ({}, (256, 4, 4, "float32"), torch.float32),
    ({"companded_arithmetic": 1}, (128, 4, 4, "float32", "companded", "companded"), torch.bfloat16),
    ({"product_norm": 0}, (128, 4, 4, "float32"), torch.bfloat16),
    ({"chunk": 64}, (128, 4, 8, "float32", "uniform", "uniform"), torch.bfloat16),
    ({}, (64, 16, 4, "float32"), torch.bfloat16),
    (
        {"lloyd_max_arithmetic": 2, "byte_squares": 0},
        (64, 4, 4, "float32", "lloyd-max", "uniform"),
        torch.float16,
    ),
]


@pytest.mark.parametrize(
    ("settings", "codec_spec", "dtype"),
    STORE_SETTINGS,
    ids=[f"{'-'.join(f'{k}{v}' for k, v in s.items())}-{c}-{d}" for s, c, d in STORE_SETTINGS],
)
def test_store_under_each_setting_writes_the_reference_bytes(
    settings, codec_spec, dtype, generator, monkeypatch
):
    for name, value in settings.items():
        monkeypatch.setitem(triton_store.TUNING, name, value)
    _check_store_against_the_reference(codec_spec, dtype, generator)


@pytest.mark.parametrize(
    ("codebook", "settings"),
    [("lloyd-max", {}), ("lloyd-max", SEARCH), ("uniform", {}),
     ("companded", {})],
)  # fmt: skip
def test_store_of_zero_rows_writes_the_reference_bytes(codebook, settings, monkeypatch):
    """An all-zero K or V row has norm 0 and the code of 0 in every coordinate, exactly as
    the reference writes it (its inverse norm is huge: 0 times it must stay 0)."""
    for name, value in settings.items():
        monkeypatch.setitem(triton_store.TUNING, name, value)
    codec = TQCodec(128, 4, 4, key_codebook=codebook, value_codebook=codebook)
    layout = codec.cache_layout(num_kv_heads=2, block_size=16)
    key = torch.zeros(5, 2, 128, dtype=torch.bfloat16)
    value = torch.zeros(5, 2, 128, dtype=torch.bfloat16)
    slots = torch.tensor([3, 17, 0, -1, 30])
    cache = torch.full((2, layout.page_bytes), 0xA5, dtype=torch.uint8)
    expected = cache.clone()
    reference.store(key, value, expected, slots, layout)
    actual = cache.to(DEVICE)
    triton_store.store(key.to(DEVICE), value.to(DEVICE), actual, slots.to(DEVICE), layout)
    assert torch.equal(actual.cpu(), expected)


@pytest.mark.parametrize(
    ("head_dim", "bits", "codebook"),
    [
        (128, 4, "lloyd-max"),
        (64, 2, "lloyd-max"),
        (64, 8, "lloyd-max"),
        (128, 4, "uniform"),
        (64, 1, "lloyd-max"),
    ],
)
def test_byte_square_sums_add_the_squared_centroids_of_each_packed_code(head_dim, bits, codebook):
    """Entry b of the store's norm-correction table is the sum, in float64, of the squared
    centroids of the 8 / bits codes byte b packs (low code in the low bits)."""
    codec = TQCodec(head_dim, bits, bits, key_codebook=codebook, value_codebook=codebook)
    layout = codec.cache_layout(num_kv_heads=1, block_size=16)
    table = triton_layout.byte_square_sums(layout, "key", "cpu")
    centroids = codebook_tensors(head_dim, bits, "cpu", codebook)[0].double().tolist()
    for byte in range(256):
        codes = [(byte >> shift) & ((1 << bits) - 1) for shift in range(0, 8, bits)]
        expected = math.fsum(centroids[code] ** 2 for code in codes)
        assert table[byte].item() == pytest.approx(expected, rel=1e-6)


def _horner(coefficients: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The polynomial with ``coefficients`` (highest first) at ``x``, by Horner in x's dtype."""
    value = torch.zeros_like(x) + coefficients[0].to(x.dtype)
    for coefficient in coefficients[1:]:
        value = value * x + coefficient.to(x.dtype)
    return value


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("codebook", ["companded", "lloyd-max"])
def test_compander_table_holds_the_clamp_g_and_the_squares(head_dim, codebook):
    """The store's 4-bit arithmetic table: w = t s clamped to [-0.5, 0.5], s = 1 / (2 T) for
    T just below g's turning point; g(w) = w P(w^2) from entries 1-7 is the companded
    codebook's cubic (codebook.compander) in w or passes through Lloyd-Max's 15 float32
    edges, scaled by s, at k - 7 (fp64, within 1e-5: its float32 coefficients); g rises on
    [0, 0.5] to a value in (7, 8); ceil(g(w) + 7) evaluated in float32 as the kernel does is
    the edges' bucket of all but a few of a million t; the squares' polynomial in
    q = (n - 8)(n - 7), in float32 by Horner, is within 1e-6 of the largest squared level
    of each code's (fp64 from the float32 levels), so the norm correction's sums move by
    less than float32 rounding's share."""
    codec = TQCodec(head_dim, 4, 4, key_codebook=codebook, value_codebook="uniform")
    layout = codec.cache_layout(num_kv_heads=1, block_size=16)
    table = triton_layout.compander_table(layout, "key", "cpu")
    scale, slope, squares = table[0].double(), table[1:8].double(), table[8:16]
    levels, edges = (t.double() for t in codebook_tensors(head_dim, 4, "cpu", codebook))
    if codebook == "companded":
        a, b = compander(head_dim)
        assert scale.item() == pytest.approx(1 / (2 * math.sqrt(-a / (3 * b))), rel=1e-3)
        expected = [0, 0, 0, 0, 0, b / scale.item() ** 3, a / scale.item()]
        torch.testing.assert_close(slope, torch.tensor(expected).double(), rtol=1e-7, atol=0)
    else:
        edges_w = edges * scale
        at_edges = edges_w * _horner(slope, edges_w**2)
        torch.testing.assert_close(at_edges, torch.arange(-7.0, 8.0).double(), atol=1e-5, rtol=0)
        # T lies past the outermost edge.
        assert edges_w[-1].item() < 0.5
    grid = torch.linspace(0, 0.5, 100_001, dtype=torch.float64)
    rising = grid * _horner(slope, grid**2)
    assert (rising.diff() > 0).all() and 7 < rising[-1].item() < 8
    t = torch.rand(1_000_000, generator=torch.Generator().manual_seed(0)) * 0.8 - 0.4
    w = (t * table[0] + 0.5).clamp(0, 1) - 0.5
    codes = torch.ceil(w * _horner(table[1:8], w * w) + 7)
    assert codes.min() >= 0 and codes.max() <= 15
    assert (codes != torch.bucketize(t, edges.float())).sum().item() <= 20
    # Exactly on the middle edge (0) the code is the lower one, as bucketize's.
    assert torch.ceil(torch.zeros(1) * _horner(table[1:8], torch.zeros(1)) + 7).item() == 7
    for code in range(16):
        below = torch.tensor(code - 8.0)
        square = _horner(squares, below * below + below)
        assert abs(square.item() - levels[code].item() ** 2) < 1e-6 * levels[0].item() ** 2
    assert not triton_layout.compander_table(layout, "value", "cpu").any()


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("codebook", ["companded", "lloyd-max"])
def test_fixed_point_squares_are_the_squared_levels_to_half_a_unit(head_dim, codebook):
    """The permuted squares' integers (compander table entries 16-31, unit in 32): each
    code's integer times the unit is its squared float32 level (fp64) within half a unit, the
    unit a power of two that puts the largest square above 2^23 (so within 6e-8 of it), and
    256 of the largest still sum below 2^32 (the kernel's uint32 row sums); entries 33-38 are
    the 16-bit halves of digit words 0, 2, 4, whose digits rebuild each magnitude's integer."""
    codec = TQCodec(head_dim, 4, 4, key_codebook=codebook, value_codebook="uniform")
    layout = codec.cache_layout(num_kv_heads=1, block_size=16)
    table = triton_layout.compander_table(layout, "key", "cpu").double()
    integers, unit = table[16:32], table[32].item()
    levels = codebook_tensors(head_dim, 4, "cpu", codebook)[0].double()
    assert math.log2(unit) == round(math.log2(unit))
    assert (integers == integers.round()).all()
    assert ((integers * unit - levels**2).abs() <= unit / 2).all()
    assert integers.max().item() >= 2**23 and 256 * integers.max().item() < 2**32
    words = triton_layout.square_digit_words(head_dim, codebook)
    halves = table[33:39].long().tolist()
    assert [halves[i] | halves[i + 1] << 16 for i in (0, 2, 4)] == list(words[0::2])
    for magnitude in range(8):
        d0, d1, d2 = (
            (words[2 * k + magnitude // 4] >> (8 * (magnitude % 4))) & 255 for k in range(3)
        )
        assert d0 + 256 * (d1 + 255 * d2) == integers[8 + magnitude].item()


@pytest.mark.parametrize("codebook", ["lloyd-max", "companded"])
def test_the_squares_are_permuted_only_where_one_product_holds_the_row(codebook, monkeypatch):
    """The permuted squares (ARITHMETIC 4 / 7, with their asm) up to head_dim 128, whose row
    is one 128-column product; the polynomial (2 / 5, no asm) at head_dim 256 or with
    64-column products, where the permuted sums were slower."""
    permuted, polynomial = (4, 2) if codebook == "companded" else (7, 5)

    def chosen(head_dim):
        fmt = TQCodec(head_dim, 4, 4, key_codebook=codebook).cache_layout(1, 16).key_format
        return triton_store._arithmetic_codes(fmt), bool(triton_store._square_asm(fmt))

    assert chosen(64) == chosen(128) == (permuted, True)
    assert chosen(256) == (polynomial, False)
    monkeypatch.setitem(triton_store.TUNING, "chunk", 64)
    assert chosen(128) == (polynomial, False)
    assert chosen(64) == (permuted, True)


def test_the_bf16_sign_matrix_holds_the_same_signs_as_the_fp16_one():
    fp16 = triton_layout.sign_hadamard(128, 7, "cpu")
    bf16 = triton_layout.sign_hadamard(128, 7, "cpu", torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(bf16.float(), fp16.float())
    assert set(fp16.unique().tolist()) == {-1.0, 1.0}


def _check_store_against_the_reference(codec_spec, dtype, generator):
    head_dim, norm_dtype = codec_spec[0], codec_spec[3]
    codec = _codec(codec_spec)
    layout = codec.cache_layout(num_kv_heads=3, block_size=16)
    num_tokens, num_blocks = 45, 5
    key = (torch.randn(num_tokens, 3, head_dim, generator=generator) * 3 + 0.5).to(dtype)
    value = torch.randn(num_tokens, 3, head_dim, generator=generator).to(dtype)
    # Scattered slots in shuffled blocks, some tokens skipped with -1.
    slots = torch.randperm(num_blocks * 16, generator=generator)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=generator)[:7]] = -1
    # Random bytes, rows longer than a page: untouched bytes must stay as they were.
    cache = torch.randint(
        0, 256, (num_blocks, layout.page_bytes + 48), dtype=torch.uint8, generator=generator
    )
    expected = cache.clone()
    reference.store(key, value, expected, slots, layout)
    actual = cache.to(DEVICE)
    triton_store.store(key.to(DEVICE), value.to(DEVICE), actual, slots.to(DEVICE), layout)
    actual = actual.cpu()

    def vectors(cache_bytes, region):
        span = slice(region.offset, region.offset + region.nbytes)
        return cache_bytes[:, span].reshape(-1, region.bytes_per_vector)

    for tensor in ("key", "value"):
        regions = layout.regions_of(tensor)
        planes = [region for region in regions if region.field.startswith("plane")]
        # Codes: a coordinate within float32 rounding of a codebook boundary may take the
        # neighbour (and with norm correction that moves the stored norm); beyond a stray
        # vector it is a bug.
        same_codes = torch.ones(vectors(actual, regions[0]).shape[0], dtype=torch.bool)
        for region in planes:
            same_codes &= (vectors(actual, region) == vectors(expected, region)).all(dim=1)
        assert (~same_codes).float().mean().item() <= 0.01, f"{tensor}: codes differ"
        for region in regions:
            got, want = vectors(actual, region)[same_codes], vectors(expected, region)[same_codes]
            if region.field == "norm":
                # float32 sums round differently: a norm may move by an ulp of its dtype.
                stored = torch.float16 if norm_dtype == "float16" else torch.float32
                rtol = 1e-3 if norm_dtype == "float16" else 1e-5
                torch.testing.assert_close(
                    got.view(stored), want.view(stored), rtol=rtol, atol=0, equal_nan=True
                )
            elif region.field == "raw":
                # The rotated vector in bf16: within one bf16 rounding of the reference.
                torch.testing.assert_close(
                    got.view(torch.bfloat16).float(),
                    want.view(torch.bfloat16).float(),
                    rtol=8e-3,
                    atol=1e-6,
                    equal_nan=True,
                )
    # Nothing outside the written slots changed (padding slots, spare bytes of each row).
    written = torch.zeros(num_blocks * 16, dtype=torch.bool)
    written[slots[slots >= 0]] = True
    for region in layout.regions:
        for block_offset in (~written).nonzero().flatten().tolist():
            block, offset = divmod(block_offset, 16)
            for head in range(3):
                start = region.offset + (head * 16 + offset) * region.bytes_per_vector
                span = slice(start, start + region.bytes_per_vector)
                assert torch.equal(actual[block, span], cache[block, span])
    assert torch.equal(actual[:, layout.page_bytes :], cache[:, layout.page_bytes :])


@pytest.mark.parametrize(
    ("num_q_heads", "num_kv_heads", "num_query_tokens", "num_splits"),
    [(4, 2, 1, 1), (4, 2, 1, 3), (9, 3, 3, 2), (8, 8, 1, 4), (4, 1, 8, 2)],
)
@pytest.mark.parametrize("codec_spec", CODECS + UNIFORM_CODECS)
def test_decode_matches_the_reference(
    codec_spec, num_q_heads, num_kv_heads, num_query_tokens, num_splits, generator
):
    seq_lens = [37, 70, 0, 9]  # 0: a padding sequence of a fixed-size batch
    seq_lens = [max(n, num_query_tokens) if n else 0 for n in seq_lens]
    batch, dev = _batch(codec_spec, seq_lens, num_kv_heads, 16, generator)
    head_dim = codec_spec[0]
    query = torch.randn(4, num_query_tokens, num_q_heads, head_dim, generator=generator)
    scale = 1 / math.sqrt(head_dim)
    expected = reference.decode_attention(
        query, batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, scale
    )
    out = torch.full(query.shape, float("nan"), device=DEVICE)
    triton_attention.decode_attention(
        query.to(DEVICE), dev["kv_cache"], dev["block_table"], dev["seq_lens"], batch.layout,
        scale, out=out, num_splits=num_splits,
    )  # fmt: skip
    assert not out.isnan().any()
    assert relative_error(out.cpu(), expected) < TOLERANCE[torch.float32]
    assert torch.equal(out[2].cpu(), torch.zeros_like(out[2].cpu()))


@pytest.mark.parametrize("codec_spec", [CODECS[0], CODECS[4], UNIFORM_CODECS[1]])
def test_per_key_mask_equals_the_per_score_mask(codec_spec, generator, monkeypatch):
    """One query token: masking keys past the end per key (a -inf bias, loads clamped to the
    last key: key_mask 1, the default) gives the per-score mask's output bit for bit, over
    partial last tiles and splits, on a cache of random bytes (a key read past the end would
    not be finite)."""
    seq_lens = [37, 200, 0, 9]
    batch, dev = _batch(codec_spec, seq_lens, 2, 16, generator)
    query = torch.randn(4, 1, 4, codec_spec[0], generator=generator).to(DEVICE)
    outputs = []
    for key_mask in (0, 1):
        monkeypatch.setitem(triton_attention.TUNING["decode"], "key_mask", key_mask)
        out = torch.full(query.shape, float("nan"), device=DEVICE)
        triton_attention.decode_attention(
            query, dev["kv_cache"], dev["block_table"], dev["seq_lens"], batch.layout, 0.125,
            out=out, num_splits=3,
        )  # fmt: skip
        outputs.append(out.cpu())
    assert torch.equal(outputs[1], outputs[0])
    expected = reference.decode_attention(
        query.cpu(), batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 0.125
    )
    assert relative_error(outputs[1], expected) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("rotate", [False, True])
def test_merge_launch_over_many_splits_matches_the_reference(rotate, generator, monkeypatch):
    """The merge launch over 19 splits of one key tile each (8 x 16K merges 17): the short
    sequence leaves splits empty, and a padding sequence (length 0) has none."""
    monkeypatch.setitem(triton_attention.TUNING["decode"], "merge_in_kernel", 0)
    seq_lens = [2400, 300, 0, 1333]  # 2400: 19 splits of one 128-token tile each
    batch, dev = _batch(CODECS[0], seq_lens, 2, 16, generator)
    query = torch.randn(4, 1, 8, 64, generator=generator)
    expected = reference.decode_attention(
        query, batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 0.125,
        rotate=rotate,
    )  # fmt: skip
    out = torch.full(query.shape, float("nan"), device=DEVICE)
    triton_attention.decode_attention(
        query.to(DEVICE), dev["kv_cache"], dev["block_table"], dev["seq_lens"], batch.layout,
        0.125, out=out, num_splits=19, rotate=rotate,
    )  # fmt: skip
    assert relative_error(out.cpu(), expected) < TOLERANCE[torch.float32]
    assert torch.equal(out[2].cpu(), torch.zeros_like(out[2].cpu()))


@pytest.mark.parametrize(("head_dim", "heads"), [(64, 9), (128, 32), (256, 16)])
def test_query_rotation_launch_rotates_every_head_like_fp64(head_dim, heads, generator):
    """rotate=True's first launch: R q of every query row and head (a head count short of a
    power of two included, so the padded heads stay masked; head_dim 256 in column slices), in
    float32, against fp64."""
    codec = TQCodec(head_dim, 4, 4)
    layout = codec.cache_layout(2, 16)
    query = torch.randn(3, heads, head_dim, generator=generator, dtype=torch.float64) * 3
    rotated = triton_attention._rotated_queries(query.to(DEVICE, torch.float32), layout)
    expected = rotate(query, codec.seed)
    assert rotated.shape == expected.shape
    assert relative_error(rotated.double().cpu(), expected) < 1e-6


@pytest.mark.parametrize("head_dim", [64, 128])
def test_sign_matrix_halves_are_the_rotations_even_then_odd_columns(head_dim, generator):
    """The matrix a decode program rotates its own query with (4-bit keys): x @ halves /
    sqrt(D) is R x's even dimensions, then its odd ones, against fp64."""
    codec = TQCodec(head_dim, 4, 4)
    halves = triton_layout.sign_hadamard_halves(head_dim, codec.seed, DEVICE).double().cpu()
    x = torch.randn(5, head_dim, generator=generator, dtype=torch.float64)
    rotated = rotate(x, codec.seed)
    expected = torch.cat((rotated[:, 0::2], rotated[:, 1::2]), dim=1)
    assert torch.allclose(x @ halves / math.sqrt(head_dim), expected, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("codec_spec", [CODECS[0], CODECS[1], UNIFORM_CODECS[4]])
def test_decode_programs_rotate_their_own_query_like_the_rotation_launch(
    codec_spec, num_splits, dtype, generator, monkeypatch
):
    """rotate=True with the query rotated by each attention program (short splits) and by the
    launch before it: both match the reference, and each other far inside its tolerance (the
    same products; a wrong column of the matrix would be off by the whole score). 4-bit keys
    (both halves of the query, Lloyd-Max and on the grid) and 3-bit keys (the whole row); fp32
    queries in two fp16 parts, bf16 ones in one."""
    batch, dev = _batch(codec_spec, [70, 33, 0], 2, 16, generator)
    query = torch.randn(3, 1, 8, codec_spec[0], generator=generator) * 3
    expected = reference.decode_attention(
        query, batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 0.1, rotate=True
    )
    outputs = {}
    for in_kernel in (0, 1 << 20):
        monkeypatch.setitem(
            triton_attention.TUNING["decode"], "query_rotation_in_kernel", in_kernel
        )
        if in_kernel:
            # The programs must rotate the query themselves: no rotation launch.
            monkeypatch.setattr(triton_attention, "_rotated_queries", None)
        out = torch.full(query.shape, float("nan"), device=DEVICE, dtype=dtype)
        triton_attention.decode_attention(
            query.to(DEVICE, dtype), dev["kv_cache"], dev["block_table"], dev["seq_lens"],
            batch.layout, 0.1, out=out, rotate=True, num_splits=num_splits,
        )  # fmt: skip
        outputs[in_kernel] = out.float().cpu()
        assert relative_error(outputs[in_kernel], expected) < TOLERANCE[dtype]
    assert relative_error(outputs[1 << 20], outputs[0]) < 1e-4
    assert torch.equal(outputs[1 << 20][2], torch.zeros_like(outputs[1 << 20][2]))


@triton.jit
def _kronecker_hadamard_kernel(x_ptr, out_ptr, M: tl.constexpr, D: tl.constexpr):
    offsets = tl.arange(0, M)[:, None] * D + tl.arange(0, D)[None, :]
    product = triton_common.kronecker_hadamard(tl.load(x_ptr + offsets), D)
    tl.store(out_ptr + offsets, product)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_kronecker_hadamard_is_the_walsh_hadamard_matrix_product(head_dim, dtype, generator):
    """x @ H from a 32 x 32 tile built in registers and butterflies over the high index bits,
    against fp64 x @ H (H from the reference rotation's transform): fp32 x in two fp16 parts
    keeps about 22 bits, bf16 x is exact in one fp16 part."""
    x = (torch.randn(16, head_dim, generator=generator, dtype=torch.float64) * 3).to(dtype)
    out = torch.full((16, head_dim), float("nan"), device=DEVICE)
    _kronecker_hadamard_kernel[(1,)](x.to(DEVICE), out, M=16, D=head_dim)
    hadamard = walsh_hadamard(torch.eye(head_dim, dtype=torch.float64)) * math.sqrt(head_dim)
    expected = x.double() @ hadamard
    assert relative_error(out.double().cpu(), expected) < 1e-6


@pytest.mark.parametrize("merge", ["in the kernel", "a launch"])
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize(
    "codec_spec", [CODECS[0], CODECS[1], CODECS[6], UNIFORM_CODECS[4], UNIFORM_CODECS[1]]
)
def test_decode_rotates_with_kronecker_hadamard_like_the_sign_matrix(
    codec_spec, num_splits, merge, generator, monkeypatch
):
    """kronecker_rotation 1: the query rotated by each program and the output rotated back
    (by the unsplit program, the last split or the merge launch) with H from registers and the
    sign vector, against the reference and against the sign matrix's products (the same sums
    but for fp32 rounding; a wrong sign or index would be off by the whole output). 4-bit keys
    (both halves of the query), 3-bit keys, 4-bit values in pairs and in quads (the grid),
    8-bit values; head_dim 256 rotates its query in a launch and its output in the kernel."""
    decode = triton_attention.TUNING["decode"]
    monkeypatch.setitem(decode, "query_rotation_in_kernel", 1 << 20)
    if merge == "a launch":
        monkeypatch.setitem(decode, "merge_in_kernel", 0)
        monkeypatch.setitem(decode, "merge_in_kernel_few_pairs", 0)
    batch, dev = _batch(codec_spec, [70, 33, 0], 2, 16, generator)
    query = torch.randn(3, 1, 8, codec_spec[0], generator=generator) * 3
    expected = reference.decode_attention(
        query, batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 0.1, rotate=True
    )
    outputs = {}
    for kronecker in (0, 1):
        monkeypatch.setitem(decode, "kronecker_rotation", kronecker)
        out = torch.full(query.shape, float("nan"), device=DEVICE)
        triton_attention.decode_attention(
            query.to(DEVICE), dev["kv_cache"], dev["block_table"], dev["seq_lens"],
            batch.layout, 0.1, out=out, rotate=True, num_splits=num_splits,
        )  # fmt: skip
        outputs[kronecker] = out.cpu()
        assert relative_error(outputs[kronecker], expected) < TOLERANCE[torch.float32]
    assert relative_error(outputs[1], outputs[0]) < 1e-4
    assert torch.equal(outputs[1][2], torch.zeros_like(outputs[1][2]))


def test_queries_rotate_in_the_kernel_only_in_one_wave_of_programs(monkeypatch):
    """The shape rule: at most query_rotation_in_kernel programs per multiprocessor (1 x 1K's
    64 and 1 x 16K's 512 on 132 multiprocessors, not 8 x 4K's 1,024), head_dim 64-128 only,
    never with the setting 0."""
    monkeypatch.setattr(triton_attention, "_multiprocessors", lambda device: 132)
    decode = dict(triton_attention.TUNING["decode"], query_rotation_in_kernel=4)

    def in_kernel(head_dim, num_seqs, num_splits, **settings):
        layout = TQCodec(head_dim, 4, 4).cache_layout(8, 16)
        tuning = {**decode, **settings}
        return triton_attention._rotates_query_in_kernel(
            tuning, layout, num_seqs, num_splits, torch.device("cpu")
        )

    assert in_kernel(128, 1, 8)  # 1 x 1K: 64 programs
    assert in_kernel(128, 1, 64)  # 1 x 16K: 512
    assert in_kernel(64, 8, 8)
    assert not in_kernel(128, 8, 16)  # 8 x 4K: 1,024
    assert not in_kernel(128, 8, 17)  # 8 x 16K
    assert not in_kernel(256, 1, 8)
    assert not in_kernel(128, 1, 8, query_rotation_in_kernel=0)


def test_long_splits_merge_in_the_kernel_only_where_pairs_are_fewer_than_multiprocessors(
    monkeypatch,
):
    """The in-kernel merge's shape rule: short splits always; long splits only where the
    (sequence, KV head) pairs are fewer than the multiprocessors (merge_in_kernel_few_pairs);
    merge_in_kernel 0 means a merge launch everywhere."""
    layout = TQCodec(128, 4, 4).cache_layout(8, 16)
    block_table = torch.zeros(1, 1024, dtype=torch.int32)  # 16K tokens: 128 tiles of 128
    monkeypatch.setattr(triton_attention, "_multiprocessors", lambda device: 132)
    decode = dict(triton_attention.TUNING["decode"], merge_in_kernel=4)

    def in_kernel(num_seqs, num_splits, **settings):
        tuning = {**decode, **settings}
        return triton_attention._merges_in_kernel(
            tuning, block_table, layout, num_splits, num_seqs, torch.device("cpu")
        )

    assert in_kernel(8, 17, merge_in_kernel_few_pairs=1)  # 64 pairs: 8-tile splits in kernel
    assert not in_kernel(8, 17, merge_in_kernel_few_pairs=0)
    assert not in_kernel(17, 17, merge_in_kernel_few_pairs=1)  # 136 pairs: a launch
    assert in_kernel(17, 32, merge_in_kernel_few_pairs=0)  # 4-tile splits: in kernel
    assert not in_kernel(8, 32, merge_in_kernel=0, merge_in_kernel_few_pairs=1)


def test_short_splits_compile_with_fewer_stages_only_when_asked():
    """short_split_num_stages caps the pipeline depth where a split spans at most
    short_split_tiles key tiles, and never deepens it (wide fields keep their 1 stage); 0
    turns it off."""
    layout = TQCodec(128, 4, 4).cache_layout(8, 16)
    wide = TQCodec(128, 8, 4).cache_layout(8, 16)
    decode = dict(triton_attention.TUNING["decode"], num_stages=3, block_n=128)
    short_keys = torch.zeros(1, 64, dtype=torch.int32)  # 1K tokens: 8 tiles of 128
    long_keys = torch.zeros(1, 1024, dtype=torch.int32)  # 16K tokens: 128 tiles

    def stages(block_table, num_splits, fields=layout, **settings):
        tuning = {**decode, **settings}
        return triton_attention._num_stages(tuning, fields, block_table, num_splits)

    assert stages(short_keys, 8, short_split_num_stages=0) == 3  # off
    assert stages(short_keys, 8, short_split_num_stages=2, short_split_tiles=2) == 2
    assert stages(short_keys, 4, short_split_num_stages=2, short_split_tiles=2) == 2
    assert stages(short_keys, 2, short_split_num_stages=2, short_split_tiles=2) == 3  # 4 tiles
    assert stages(long_keys, 8, short_split_num_stages=2, short_split_tiles=2) == 3
    assert stages(short_keys, 8, fields=wide, short_split_num_stages=2, short_split_tiles=2) == 1


@pytest.mark.parametrize("rotate", [False, True])
def test_in_kernel_merge_equals_the_merge_launch_and_resets_its_counts(
    rotate, generator, monkeypatch
):
    """The last split of each (sequence, KV head) merges in the attention kernel (the default
    for short splits) exactly as the separate merge launch does, and leaves every split count
    at 0, so the next call (or a CUDA-graph replay) starts clean; a padding sequence (length 0)
    takes part too."""
    batch, dev = _batch(CODECS[0], [70, 0, 33], 2, 16, generator)
    query = torch.randn(3, 1, 4, 64, generator=generator).to(DEVICE)
    args = (query, dev["kv_cache"], dev["block_table"], dev["seq_lens"], batch.layout, 0.125)
    decode = triton_attention.TUNING["decode"]
    outputs = {}
    for merge_in_kernel in (0, 4, 4):  # 4: splits of up to 4 tiles (here 1) merge in kernel
        monkeypatch.setitem(
            triton_attention.TUNING, "decode", {**decode, "merge_in_kernel": merge_in_kernel}
        )
        out = torch.full(query.shape, float("nan"), device=DEVICE)
        triton_attention.decode_attention(*args, out=out, num_splits=3, rotate=rotate)
        outputs.setdefault(merge_in_kernel, []).append(out.cpu())
    assert torch.equal(outputs[4][0], outputs[0][0])
    assert torch.equal(outputs[4][1], outputs[0][0])
    counts = triton_attention._BUFFERS[("split counts", query.device, torch.int32)]
    assert torch.count_nonzero(counts).item() == 0
    expected = reference.decode_attention(
        query.cpu(), batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 0.125,
        rotate=rotate,
    )  # fmt: skip
    assert relative_error(outputs[4][0], expected) < TOLERANCE[torch.float32]


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="inline PTX: Triton's interpreter cannot run it")
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_register_lookup_dequantizes_4_bit_codes_like_the_table(head_dim, generator, monkeypatch):
    """The ways the kernels turn 4-bit codes into centroids (a table read through L1, byte
    permutes over magnitudes held in registers, before or after the bytes are staged for the
    dot, for K and V or K only, V as 16-bit words, the codebook as immediates or loaded) give
    the same attention up to the order of the fp32 sums (the tensor-core operand grouping
    differs), and the reference's within the usual tolerance."""
    batch, dev = _batch((head_dim, 4, 4, "float32"), [300, 17, 64], 2, 16, generator)
    query = torch.randn(3, 2, 8, head_dim, generator=generator)
    args = (dev["kv_cache"], dev["block_table"], dev["seq_lens"], batch.layout, 0.1)
    outputs = []
    for lookup in (0, 2, 3, 4, 5, 6):
        tuning = {**triton_attention.TUNING["decode"], "lookup": lookup, "maxnreg": None}
        monkeypatch.setitem(triton_attention.TUNING, "decode", tuning)
        out = torch.full(query.shape, float("nan"), device=DEVICE)
        triton_attention.decode_attention(query.to(DEVICE), *args, out=out, num_splits=3)
        outputs.append(out.cpu())
    for other in outputs[1:]:
        assert relative_error(other, outputs[0]) < 1e-4
    expected = reference.decode_attention(
        query, batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 0.1
    )
    assert relative_error(outputs[1], expected) < TOLERANCE[torch.float32]


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="inline PTX: Triton's interpreter cannot run it")
@pytest.mark.parametrize("codec_spec", [(128, 4, 4, "float16"), (64, 8, 3, "float32")])
@pytest.mark.parametrize("sliding_window", [None, 40])
def test_prefetch_changes_no_result(codec_spec, sliding_window, generator, monkeypatch):
    """Prefetching the next key tile into L2 or L1 only moves data earlier: the decode output
    is bit-identical to the kernel without it (ragged lengths, split-K, a tail tile, an
    empty sequence)."""
    batch, dev = _batch(codec_spec, [300, 17, 129, 0], 2, 16, generator)
    head_dim = codec_spec[0]
    query = torch.randn(4, 2, 8, head_dim, generator=generator).to(DEVICE)
    args = (dev["kv_cache"], dev["block_table"], dev["seq_lens"], batch.layout, 0.1)
    outputs = []
    for prefetch in (0, 1, 2):
        tuning = {**triton_attention.TUNING["decode"]}
        tuning.update({k: prefetch for k in tuning if k.endswith("prefetch")})
        monkeypatch.setitem(triton_attention.TUNING, "decode", tuning)
        out = torch.full(query.shape, float("nan"), device=DEVICE)
        triton_attention.decode_attention(
            query, *args, out=out, num_splits=3, sliding_window=sliding_window
        )
        outputs.append(out.cpu())
    assert not outputs[0].isnan().any()
    for other in outputs[1:]:
        assert torch.equal(other, outputs[0])


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="programmatic dependent launch: a CUDA GPU")
@pytest.mark.parametrize("rotate", [True, False])
@pytest.mark.parametrize("merge_in_kernel", [0, 1 << 20])
def test_programmatic_launches_change_no_result_eager_or_in_a_graph(
    rotate, merge_in_kernel, generator, monkeypatch
):
    """The attention launched programmatically after the query rotation, and the merge after
    the attention (``pdl`` 1), give bit-identical output to ordinary launches, eagerly and
    replayed from a CUDA graph on new queries (a padding sequence, split-K, both merges)."""
    batch, dev = _batch((128, 4, 4, "float32"), [700, 0, 129, 33], 2, 16, generator)
    first_query = torch.randn(4, 1, 8, 128, generator=generator).to(DEVICE, torch.bfloat16)
    query = first_query.clone()
    args = (dev["kv_cache"], dev["block_table"], dev["seq_lens"], batch.layout, 0.1)
    outputs = {}
    for pdl in (0, 1):
        query.copy_(first_query)
        tuning = {**triton_attention.TUNING["decode"], "pdl": pdl}
        tuning["merge_in_kernel"] = merge_in_kernel
        monkeypatch.setitem(triton_attention.TUNING, "decode", tuning)
        out = torch.full(query.shape, float("nan"), device=DEVICE, dtype=query.dtype)

        def call(out=out):
            triton_attention.decode_attention(query, *args, out=out, num_splits=5, rotate=rotate)

        call()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
        outputs[pdl] = out.clone()
        query.copy_(torch.randn_like(query))
        graph.replay()
        torch.cuda.synchronize()
        replayed = out.clone()
        call()
        assert torch.equal(replayed, out)
    assert not outputs[1].isnan().any()
    assert torch.equal(outputs[1], outputs[0])


def test_programmatic_launches_only_on_a_compiled_hopper_launch(monkeypatch):
    """Only a compiled launch on a CUDA device of compute capability 9 or more launches
    programmatically, and only when ``pdl`` asks for it."""
    wanted = {**triton_attention.TUNING["decode"], "pdl": 1}
    cuda = torch.device("cuda")
    monkeypatch.setattr(triton_attention, "_compute_capability", lambda device: (9, 0))
    monkeypatch.setattr(triton_attention, "_INTERPRETED", False)
    assert triton_attention._programmatic_launches(wanted, cuda)
    assert not triton_attention._programmatic_launches({**wanted, "pdl": 0}, cuda)
    assert not triton_attention._programmatic_launches(wanted, torch.device("cpu"))
    monkeypatch.setattr(triton_attention, "_compute_capability", lambda device: (8, 9))
    assert not triton_attention._programmatic_launches(wanted, cuda)
    monkeypatch.setattr(triton_attention, "_compute_capability", lambda device: (9, 0))
    monkeypatch.setattr(triton_attention, "_INTERPRETED", True)
    assert not triton_attention._programmatic_launches(wanted, cuda)
    assert triton_attention._pdl_option(True) == {"launch_pdl": True}
    assert triton_attention._pdl_option(False) == {}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("sliding_window", "logit_softcap", "num_splits"),
    [(None, 30.0, 1), (20, None, 3), (33, 5.0, 2)],
)
def test_decode_window_softcap_and_half_queries(
    sliding_window, logit_softcap, num_splits, dtype, generator
):
    batch, dev = _batch((128, 4, 4, "float32"), [150, 40, 2], 2, 32, generator)
    query = torch.randn(3, 2, 8, 128, generator=generator)
    expected = reference.decode_attention(
        query, batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 0.09,
        sliding_window=sliding_window, logit_softcap=logit_softcap,
    )  # fmt: skip
    actual = triton_attention.decode_attention(
        query.to(DEVICE, dtype), dev["kv_cache"], dev["block_table"], dev["seq_lens"],
        batch.layout, 0.09, sliding_window=sliding_window, logit_softcap=logit_softcap,
        num_splits=num_splits,
    )  # fmt: skip
    assert actual.dtype == dtype
    assert relative_error(actual.float().cpu(), expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize(
    "codec_spec", [CODECS[0], CODECS[1], CODECS[5], CODECS[6], UNIFORM_CODECS[1]]
)
def test_decode_rotates_query_and_output_inside_the_kernel(codec_spec, num_splits, generator):
    """rotate=True takes the query in the original domain and returns the output there: the
    same as rotating outside and calling the reference (the ops' contract)."""
    batch, dev = _batch(codec_spec, [70, 33], 2, 16, generator)
    head_dim = codec_spec[0]
    query = torch.randn(2, 2, 8, head_dim, generator=generator) * 3
    expected = reference.decode_attention(
        query, batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 0.1, rotate=True
    )
    actual = triton_attention.decode_attention(
        query.to(DEVICE, torch.bfloat16), dev["kv_cache"], dev["block_table"], dev["seq_lens"],
        batch.layout, 0.1, rotate=True, num_splits=num_splits,
    )  # fmt: skip
    assert relative_error(actual.float().cpu(), expected) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize(
    ("method", "block_m"), [("inline", 16), ("inline", 64), ("decompress", None)]
)
@pytest.mark.parametrize(
    ("codec_spec", "num_q_heads", "num_kv_heads", "sliding_window", "logit_softcap"),
    [
        (CODECS[0], 4, 2, None, None),
        (CODECS[1], 9, 3, 25, None),
        (CODECS[2], 2, 2, None, 20.0),
        (CODECS[5], 4, 1, 40, 30.0),
        (CODECS[6], 8, 4, None, None),
        (UNIFORM_CODECS[0], 4, 2, None, 20.0),
        (UNIFORM_CODECS[1], 8, 2, 25, None),
    ],
)
def test_prefill_matches_the_reference(
    codec_spec, num_q_heads, num_kv_heads, sliding_window, logit_softcap, method, block_m, generator
):
    seq_lens = [60, 13, 90]
    query_lens = [60, 5, 31]  # a whole prompt, then chunks after cached context
    batch, dev = _batch(codec_spec, seq_lens, num_kv_heads, 16, generator)
    head_dim = codec_spec[0]
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    num_rows = int(starts[-1]) + 4  # 4 padding rows past the last sequence
    query = torch.randn(num_rows, num_q_heads, head_dim, generator=generator)
    scale = 1 / math.sqrt(head_dim)
    kwargs = {"sliding_window": sliding_window, "logit_softcap": logit_softcap}
    expected = reference.prefill_attention(
        query, batch.kv_cache, batch.block_table, starts, batch.seq_lens, batch.layout, scale,
        **kwargs,
    )  # fmt: skip
    out = torch.full(query.shape, float("nan"), device=DEVICE)
    args = (
        query.to(DEVICE), dev["kv_cache"], dev["block_table"], starts.to(DEVICE),
        dev["seq_lens"], batch.layout, scale,
    )  # fmt: skip
    if method == "decompress" and (sliding_window or logit_softcap):
        with pytest.raises(TQInputError, match="no sliding window or soft-cap"):
            triton_attention.prefill_attention(*args, out=out, method=method, **kwargs)
        return
    triton_attention.prefill_attention(*args, out=out, method=method, block_m=block_m, **kwargs)
    assert not out.isnan().any()
    assert relative_error(out.cpu(), expected) < TOLERANCE[torch.float32]
    assert torch.equal(out[-4:].cpu(), torch.zeros(4, num_q_heads, head_dim))


def _varlen_sdpa(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, out):
    """A dense_attention in the flash-attn varlen convention, from torch SDPA per sequence,
    recording what it was handed."""
    handed = (cu_seqlens_q.tolist(), cu_seqlens_k.tolist(), max_seqlen_q, max_seqlen_k)
    _varlen_sdpa.calls.append(handed)
    for i in range(cu_seqlens_q.shape[0] - 1):
        q0, q1 = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        k0, k1 = int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1])
        if q1 == q0:
            continue
        group = q.shape[1] // k.shape[1]
        keys = k[k0:k1].repeat_interleave(group, dim=1).transpose(0, 1).float()
        values = v[k0:k1].repeat_interleave(group, dim=1).transpose(0, 1).float()
        scores = q[q0:q1].transpose(0, 1).float() @ keys.transpose(1, 2) * scale
        # Query j is the sequence's token (keys - queries + j): it sees keys up to that one.
        last_seen = (k1 - k0) - (q1 - q0) + torch.arange(q1 - q0, device=q.device)
        hidden = torch.arange(k1 - k0, device=q.device)[None, :] > last_seen[:, None]
        scores = scores.masked_fill(hidden, float("-inf"))
        out[q0:q1] = (scores.softmax(-1) @ values).transpose(0, 1).to(out.dtype)


@pytest.mark.parametrize("codec_spec", [(64, 4, 4, "float32"), (128, 3, 5, "float32")])
def test_prefill_hands_the_batch_to_a_dense_attention_kernel(codec_spec, generator):
    """The decompress method with an engine's dense kernel (flash-attn varlen convention):
    one call for the batch, keys packed per sequence (none for a sequence without new tokens),
    and the reference's result; padding rows zeroed."""
    seq_lens = [60, 13, 7, 90]
    query_lens = [60, 5, 0, 31]  # a whole prompt, a chunk after cached context, no new tokens
    batch, dev = _batch(codec_spec, seq_lens, 2, 16, generator)
    head_dim = codec_spec[0]
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(int(starts[-1]) + 3, 4, head_dim, generator=generator)
    scale = 1 / math.sqrt(head_dim)
    expected = reference.prefill_attention(
        query, batch.kv_cache, batch.block_table, starts, batch.seq_lens, batch.layout, scale
    )
    out = torch.full(query.shape, float("nan"), device=DEVICE)
    _varlen_sdpa.calls = []
    triton_attention.prefill_attention(
        query.to(DEVICE), dev["kv_cache"], dev["block_table"], starts.to(DEVICE),
        dev["seq_lens"], batch.layout, scale, out=out, method="decompress",
        dense_attention=_varlen_sdpa,
    )  # fmt: skip
    assert _varlen_sdpa.calls == [([0, 60, 65, 65, 96], [0, 60, 73, 73, 163], 60, 90)]
    assert not out.isnan().any()
    assert relative_error(out.cpu(), expected) < TOLERANCE[torch.float32]
    assert torch.equal(out[-3:].cpu(), torch.zeros(3, 4, head_dim))


@pytest.mark.parametrize("method", ["inline", "decompress", "dense"])
@pytest.mark.parametrize("codec_spec", [CODECS[0], CODECS[1], CODECS[5]])
def test_prefill_takes_and_returns_the_original_domain(codec_spec, method, generator):
    """rotate=True: query and output in the original domain, as the reference's rotate=True
    (rotate the query, attend, rotate the output back). The dense paths never rotate the query:
    they decompress the keys and values back to the original domain instead."""
    seq_lens, query_lens = [60, 13, 90], [60, 5, 31]
    batch, dev = _batch(codec_spec, seq_lens, 2, 16, generator)
    head_dim = codec_spec[0]
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(int(starts[-1]) + 2, 4, head_dim, generator=generator) * 2
    scale = 1 / math.sqrt(head_dim)
    expected = reference.prefill_attention(
        query, batch.kv_cache, batch.block_table, starts, batch.seq_lens, batch.layout, scale,
        rotate=True,
    )  # fmt: skip
    out = torch.full(query.shape, float("nan"), device=DEVICE)
    extra = {"dense_attention": _varlen_sdpa} if method == "dense" else {}
    _varlen_sdpa.calls = []
    triton_attention.prefill_attention(
        query.to(DEVICE), dev["kv_cache"], dev["block_table"], starts.to(DEVICE),
        dev["seq_lens"], batch.layout, scale, out=out, rotate=True,
        method="inline" if method == "inline" else "decompress", **extra,
    )  # fmt: skip
    assert not out.isnan().any()
    assert relative_error(out.cpu(), expected) < TOLERANCE[torch.float32]
    assert torch.equal(out[-2:].cpu(), torch.zeros(2, 4, head_dim))


@pytest.mark.parametrize("dense", [False, True])
def test_prefill_with_host_copies_reads_nothing_back(dense, generator, monkeypatch):
    """Given the batch layout as host lists, the decompress paths use them and never read the
    device tensors back (each read would make the host wait for the GPU, once per layer)."""
    seq_lens, query_lens = [60, 13, 7, 90], [60, 5, 0, 31]
    batch, dev = _batch(CODECS[0], seq_lens, 2, 16, generator)
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(int(starts[-1]) + 2, 4, 64, generator=generator)
    expected = reference.prefill_attention(
        query, batch.kv_cache, batch.block_table, starts, batch.seq_lens, batch.layout, 0.125,
        rotate=True, query_start_loc_host=starts.tolist(), seq_lens_host=seq_lens,
    )  # fmt: skip
    host_starts = starts.tolist()
    device_starts, device_lens = starts.to(DEVICE).clone(), dev["seq_lens"].clone()
    reads, in_dense_kernel = [], [False]
    real_tolist = torch.Tensor.tolist

    def tolist(tensor):
        if not in_dense_kernel[0] and (tensor is device_starts or tensor is device_lens):
            reads.append(tensor)
        return real_tolist(tensor)

    def dense_kernel(*args):  # the engine's kernel may read what it likes
        in_dense_kernel[0] = True
        try:
            _varlen_sdpa(*args)
        finally:
            in_dense_kernel[0] = False

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    out = torch.full(query.shape, float("nan"), device=DEVICE)
    _varlen_sdpa.calls = []
    triton_attention.prefill_attention(
        query.to(DEVICE), dev["kv_cache"], dev["block_table"], device_starts, device_lens,
        batch.layout, 0.125, out=out, rotate=True, method="decompress",
        query_start_loc_host=host_starts, seq_lens_host=seq_lens,
        **({"dense_attention": dense_kernel} if dense else {}),
    )  # fmt: skip
    assert reads == []
    assert relative_error(out.cpu(), expected) < TOLERANCE[torch.float32]
    if dense:  # the key offsets built on the device: sequence 2 has no new tokens, no keys
        assert _varlen_sdpa.calls == [([0, 60, 65, 65, 96], [0, 60, 73, 73, 163], 60, 90)]


def _compiled_decompress_kernels() -> int:
    from tq_core.ops import triton_decompress

    caches = triton_decompress._decompress_kernel.device_caches.values()
    return sum(len(kernels) for kernels, *_ in caches)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="compiles kernels: a CUDA GPU")
@pytest.mark.parametrize("dense", [False, True])
def test_compile_prefill_leaves_no_kernel_for_prefills_to_compile(dense, generator):
    """After ops.compile_prefill (which launches nothing), decompress prefills of lengths 1, 16,
    17 and 90 with block-table rows at odd offsets find their kernels compiled (an engine's
    first requests would otherwise stop to JIT them) and match the reference. The layout (128
    dims, fp16 norms, 32-token blocks) is this test's own, so no other test compiled it."""
    seq_lens, query_lens = [1, 16, 17, 90], [1, 3, 17, 20]
    batch, dev = _batch((128, 4, 4, "float16"), seq_lens, 2, 32, generator)
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(int(starts[-1]), 8, 128, generator=generator)
    expected = reference.prefill_attention(
        query, batch.kv_cache, batch.block_table, starts, batch.seq_lens, batch.layout, 0.09,
        rotate=True,
    )  # fmt: skip
    cache_before = dev["kv_cache"].clone()
    ops.compile_prefill(dev["kv_cache"], batch.layout, torch.bfloat16, rotate=True)
    compiled = _compiled_decompress_kernels()
    assert torch.equal(dev["kv_cache"], cache_before)
    _varlen_sdpa.calls = []
    out = triton_attention.prefill_attention(
        query.to(DEVICE, torch.bfloat16), dev["kv_cache"], dev["block_table"],
        starts.to(DEVICE), dev["seq_lens"], batch.layout, 0.09, rotate=True, method="decompress",
        **({"dense_attention": _varlen_sdpa} if dense else {}),
    )  # fmt: skip
    assert _compiled_decompress_kernels() == compiled
    assert relative_error(out.float().cpu(), expected) < TOLERANCE[torch.bfloat16]


def test_reference_refuses_host_copies_that_disagree(generator):
    batch, _ = _batch(CODECS[0], [20, 9], 2, 16, generator)
    starts = torch.tensor([0, 20, 24], dtype=torch.int32)
    query = torch.randn(24, 4, 64, generator=generator)
    args = (query, batch.kv_cache, batch.block_table, starts, batch.seq_lens, batch.layout, 0.1)
    with pytest.raises(TQInputError, match="seq_lens_host"):
        reference.prefill_attention(*args, seq_lens_host=[20, 8])
    with pytest.raises(TQInputError, match="query_start_loc_host"):
        reference.prefill_attention(*args, query_start_loc_host=[0, 20, 23])


def test_dispatch_picks_the_reference_off_gpu_and_obeys_tq_kernels(monkeypatch):
    layout = TQCodec(64, 4, 4).cache_layout(2, 16)
    qjl_layout = TQCodec(64, 4, 4, key_qjl=True).cache_layout(2, 16)
    assert ops.implementation("cpu", layout) == "reference"
    assert ops.implementation("cuda", qjl_layout) == "reference"
    assert ops.implementation("cuda", layout) == "triton"
    monkeypatch.setenv("TQ_KERNELS", "reference")
    assert ops.implementation("cuda", layout) == "reference"
    monkeypatch.setenv("TQ_KERNELS", "triton")
    with pytest.raises(TQConfigError, match="not on a CUDA device"):
        ops.implementation("cpu", layout)
    with pytest.raises(TQConfigError, match="QJL"):
        ops.implementation("cuda", qjl_layout)
    monkeypatch.setenv("TQ_KERNELS", "fast")
    with pytest.raises(TQConfigError, match="TQ_KERNELS='fast'"):
        ops.implementation("cuda", layout)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA GPU")
def test_every_op_captures_in_a_cuda_graph_and_replays_like_eager(generator):
    """Capture store + decode + prefill once, then replay on new inputs copied into the captured
    buffers: the replay must equal eager calls on those inputs (no host sync, no allocation
    that a replay would miss, no shape-dependent host decision)."""
    batch, dev = _batch((128, 4, 4, "float32"), [300, 77, 5], 2, 16, generator)
    layout, cache = batch.layout, dev["kv_cache"]
    num_new = 6
    new_keys = torch.randn(num_new, 2, 128, device=DEVICE, dtype=torch.bfloat16)
    new_values = torch.randn_like(new_keys)
    free_slots = torch.arange(cache.shape[0] * 16, device=DEVICE)[-num_new:]
    decode_q = torch.randn(3, 2, 8, 128, device=DEVICE, dtype=torch.bfloat16)
    starts = torch.tensor([0, 5, 7, 12], dtype=torch.int32, device=DEVICE)
    prefill_q = torch.randn(16, 8, 128, device=DEVICE, dtype=torch.bfloat16)
    decode_out, prefill_out = torch.empty_like(decode_q), torch.empty_like(prefill_q)
    seq_lens, block_table = dev["seq_lens"], dev["block_table"]

    def step():
        triton_store.store(new_keys, new_values, cache, free_slots, layout)
        triton_attention.decode_attention(
            decode_q, cache, block_table, seq_lens, layout, 0.088, out=decode_out
        )
        triton_attention.prefill_attention(
            prefill_q,
            cache,
            block_table,
            starts,
            seq_lens,
            layout,
            0.088,
            out=prefill_out,
            method="inline",  # "auto" would decompress when eager, a different summation order
        )

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile and size the workspaces outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(2):
        for buffer in (new_keys, new_values, decode_q, prefill_q):
            buffer.copy_(torch.randn_like(buffer))
        cache_before = cache.clone()
        graph.replay()
        torch.cuda.synchronize()
        replayed = (cache.clone(), decode_out.clone(), prefill_out.clone())
        cache.copy_(cache_before)
        step()
        torch.cuda.synchronize()
        assert torch.equal(replayed[0], cache)
        assert torch.equal(replayed[1], decode_out)
        assert torch.equal(replayed[2], prefill_out)


@pytest.mark.parametrize("unrotate", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("codec_spec", CODECS + UNIFORM_CODECS)
def test_gather_kv_decompresses_like_the_reference(codec_spec, dtype, unrotate, generator):
    from tq_core.ops import triton_decompress

    batch, dev = _batch(codec_spec, [83, 20], 2, 16, generator)
    for seq in range(2):
        seq_len = int(batch.seq_lens[seq])
        want = reference.gather_kv(
            batch.kv_cache, batch.block_table[seq], seq_len, batch.layout, unrotate=unrotate
        )
        got = triton_decompress.gather_kv(
            dev["kv_cache"], dev["block_table"][seq], seq_len, batch.layout, dtype=dtype,
            unrotate=unrotate,
        )  # fmt: skip
        for actual, expected in zip(got, want, strict=True):
            assert actual.dtype == dtype
            assert relative_error(actual.float().cpu(), expected) < TOLERANCE[dtype]
            if not (ON_GPU and unrotate):
                torch.testing.assert_close(actual.float().cpu(), expected, rtol=8e-3, atol=1e-5)
            # On a GPU, 4-bit fields dequantize to fp16 centroids (the register lookup, as in
            # the attention kernels), whose rounding (2^-12 relative) mixes across dimensions
            # when rotated back: near-zero outputs then miss an elementwise tolerance, so that
            # case is held to the kernels' operand tolerance above (H200, 6be71bf: 1.3% of the
            # elements off by up to 1.6e-3 at unit scale).


@pytest.mark.parametrize("impl", [reference, triton_attention])
def test_both_implementations_refuse_bad_calls_with_one_clear_error(impl, generator):
    batch, _ = _batch(CODECS[0], [20], 2, 16, generator)
    args = (batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 0.1)
    with pytest.raises(TQInputError, match="1 to 8 query tokens"):
        impl.decode_attention(torch.randn(1, 9, 4, 64), *args)
    with pytest.raises(TQInputError, match="sliding_window=0"):
        impl.decode_attention(torch.randn(1, 1, 4, 64), *args, sliding_window=0)
    with pytest.raises(TQInputError, match="logit_softcap"):
        impl.decode_attention(torch.randn(1, 1, 4, 64), *args, logit_softcap=-1.0)
    with pytest.raises(TQInputError, match="does not split"):
        impl.prefill_attention(
            torch.randn(5, 4, 64), batch.kv_cache, batch.block_table,
            torch.tensor([0, 9], dtype=torch.int32), batch.seq_lens, batch.layout, 0.1,
            **({"validate": True} if impl is triton_attention else {}),
        )  # fmt: skip


def test_tuning_overrides_change_only_the_named_settings():
    default = triton_attention.TUNING
    tuned = triton_attention.apply_tuning_overrides(default, " decode.lookup=5, prefill.block_m=64")
    assert tuned["decode"] == {**default["decode"], "lookup": 5}
    assert tuned["prefill"] == {**default["prefill"], "block_m": 64}
    assert triton_attention.apply_tuning_overrides(default, "") == default
    assert default["prefill"]["block_m"] != 64, "the override must not edit the defaults"


@pytest.mark.parametrize("spec", ["decode.lookupp=5", "store.lookup=5", "decode.lookup=five"])
def test_tuning_overrides_refuse_what_they_cannot_apply(spec):
    with pytest.raises(TQInputError, match="TQ_TRITON_TUNING"):
        triton_attention.apply_tuning_overrides(triton_attention.TUNING, spec)


@pytest.mark.parametrize(
    "k_bits, v_bits, capped",
    [
        (4, 4, True), (16, 4, True), (8, 4, False), (4, 8, False), (6, 4, False), (3, 3, False),
        (2, 2, False), (4, 3, False),
    ],
)  # fmt: skip
def test_wide_fields_launch_with_their_own_cap_and_lookup(k_bits, v_bits, capped, monkeypatch):
    """Compressed fields of other than 4 bits (wider, or narrower: 1-3 bits) launch uncapped
    and with ``wide_lookup`` (the settings timed on them); a head_dim below 128 with
    ``small_head_*``, above it with ``large_head_*``; the rest with ``maxnreg`` and ``lookup``;
    the interpreter always compiles lookup 0."""
    from tq_core import CacheLayout

    layout = CacheLayout(TQCodec(128, k_bits, v_bits), num_kv_heads=8, block_size=16)
    tuning = {"maxnreg": 160, "wide_maxnreg": 0, "lookup": 5, "wide_lookup": 2}
    expected = {"maxnreg": 160} if capped else {}
    assert triton_attention._register_cap(tuning, layout) == expected
    assert triton_attention._register_cap({**tuning, "wide_maxnreg": 192}, layout) == (
        expected or {"maxnreg": 192}
    )
    monkeypatch.setattr(triton_attention, "_INTERPRETED", False)
    assert triton_attention._lookup(tuning, layout) == (5 if capped else 2)
    # A head_dim below 128 takes the small_head_* settings where its fields are 4-bit at most.
    small = CacheLayout(TQCodec(64, k_bits, v_bits), num_kv_heads=3, block_size=16)
    small_tuning = {**tuning, "small_head_lookup": 3, "small_head_maxnreg": 128}
    assert triton_attention._lookup(small_tuning, small) == (3 if capped else 2)
    assert triton_attention._register_cap(small_tuning, small) == (
        {"maxnreg": 128} if capped else {}
    )
    assert triton_attention._lookup(tuning, small) == (5 if capped else 2)  # falls back
    # Above 128 the large_head_* settings (Gemma-2's 256 goes uncapped by default).
    large = CacheLayout(TQCodec(256, k_bits, v_bits), num_kv_heads=8, block_size=16)
    large_tuning = {**tuning, "large_head_maxnreg": 0}
    assert triton_attention._register_cap(large_tuning, large) == {}
    assert triton_attention._register_cap(tuning, large) == expected  # falls back
    assert triton_attention._lookup(large_tuning, large) == (5 if capped else 2)
    assert triton_attention._register_cap(large_tuning, layout) == expected
    monkeypatch.setattr(triton_attention, "_INTERPRETED", True)
    assert triton_attention._lookup(tuning, layout) == 0


@pytest.mark.parametrize(
    ("head_dim", "k_bits", "codebooks", "lookup", "affine"),
    [
        (128, 4, ("uniform", "uniform"), 5, (True, True)),  # lookup 5: the grid path
        (128, 4, ("lloyd-max", "uniform"), 5, (False, True)),  # exact Lloyd-Max: permutes
        (128, 4, ("lloyd-max-grid", "lloyd-max"), 5, (True, False)),
        (256, 4, ("lloyd-max-grid", "lloyd-max-grid"), 5, (True, True)),
        (64, 4, ("lloyd-max-grid", "lloyd-max-grid"), 2, (False, False)),  # one codebook
        (64, 4, ("uniform", "uniform"), 2, (False, False)),  # small heads: lookup 2's words
        (64, 4, ("lloyd-max", "uniform"), 0, (False, False)),  # two codebooks: L1 tables
        (128, 8, ("lloyd-max", "uniform"), 2, (False, False)),  # wide: one 4-bit field
    ],
)
def test_grid_codebook_fields_take_the_integer_path_where_lookup_5_runs(
    head_dim, k_bits, codebooks, lookup, affine, monkeypatch
):
    monkeypatch.setattr(triton_attention, "_INTERPRETED", False)
    codec = TQCodec(head_dim, k_bits, 4, key_codebook=codebooks[0], value_codebook=codebooks[1])
    layout = codec.cache_layout(8, 16)
    tuning = triton_attention.TUNING["decode"]
    assert triton_attention._lookup(tuning, layout) == lookup
    setting = triton_attention._setting(tuning, layout, "lookup")
    constants = triton_attention._kernel_constants(layout, setting)
    assert (constants["K_AFFINE"], constants["V_AFFINE"]) == affine
