"""Where decode time goes: the K4V4 decode kernel under each lever, against bf16, on one GPU.

    python benchmarks/decode_levers.py --out benchmarks/results/decode-levers-h100
    python benchmarks/decode_levers.py --ncu-target 8x16384 --lookup 2   # one shape, for ncu

Levers: the centroid lookup (0: nibble-pair table through L1; 2: ``prmt`` byte permutes on
magnitudes in registers, fp16 tiles staged in shared memory for ``tl.dot``; 4: K's packed
bytes staged instead of its fp16 tile, V as 2; 5: K's bytes and V's 16-bit words staged; 6: 5
with the codebook words loaded into registers instead of immediates),
prefetching the
next key tile into L2 or L1 while the current one is computed, the split-K count, tile,
register cap and pipeline stages. Every variant
is checked against the default kernel's output on the same bytes before it is timed.
Timing, inputs and bf16 baselines are those of kernel_bench.py (CUDA-graph replays, inputs rotated
past L2, SDPA flash and cuDNN in the same process, and vLLM's FlashAttention 3 over paged KV
where vLLM is importable: the bf16 decode vLLM serves with). Writes ``<out>.json`` and
``<out>.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import kernel_bench as kernels

from tq_core import TQCodec
from tq_core.cli.provenance import environment_record
from tq_core.ops import triton_attention, triton_layout

SHAPES = [(1, 1024), (8, 1024), (8, 16384), (32, 16384), (32, 32768), (128, 32768)]


# (name, TUNING["decode"] overrides, factor on the split count)
VARIANTS = [
    # The default: K's packed bytes and V's 16-bit words staged for tl.dot, pure lookups with
    # the codebook as immediates (lookup 5), 160 registers, 3 pipeline stages; splits of at
    # most 4 key tiles merged by the last of them inside the attention kernel, longer ones by
    # a second launch.
    ("default (lookup 5)", {}, 1.0),
    # Either merge everywhere (decode-levers-h200-0e40444 timed both at every shape).
    ("lookup 5, merge launch always", {"merge_in_kernel": 0}, 1.0),
    ("lookup 5, merge in kernel always", {"merge_in_kernel": 1 << 20}, 1.0),
    # The merge in the kernel for short splits only, not also wherever pairs are fewer than
    # multiprocessors (the default since 8 x 16-64K ran 2.6-3.4% faster with it on an H100).
    ("lookup 5, merge in kernel for short splits only", {"merge_in_kernel_few_pairs": 0}, 1.0),
    # The fp16 tiles staged, magnitudes permuted from registers (lookup 2) at the 128 registers
    # it ran best at.
    ("prmt, fp16 tiles staged, 128 registers", {"lookup": 2, "maxnreg": 128}, 1.0),
    # lookup 5 with the codebook words loaded once instead of immediates: 1,236 loop
    # instructions uncapped (168 registers) against 1,403 (static-cost JSON), the same time
    # within 1% at 8-128 x 16-32K (decode-levers-h200-7b3c6b5).
    ("lookup 6 (words loaded), no register cap", {"lookup": 6, "maxnreg": 0}, 1.0),
    # At the 3-stage default's 128 registers: 1,388 loop instructions (12 bytes spilled)
    # against lookup 5's 1,453; ncu at 8 x 16K found the default waiting on the math pipe
    # (ncu-stalls-default-h200-3a72d06).
    ("lookup 6 (words loaded), 128 registers", {"lookup": 6}, 1.0),
    # With the in-kernel merge a split costs less: twice the splits.
    ("lookup 5, splits x2", {}, 2.0),
    # Batch 8's 17 splits are 2.06 waves of programs; half as many are one (8 x 16K 3% faster
    # with the one-split-per-trip merge at 0099f59).
    ("lookup 5, splits x0.5", {}, 0.5),
    # The split merge's rounds: one split per round (the reads of the merge before 8 splits a
    # round, one round trip to L2 each), or 16 a round (64 registers of partials a thread).
    ("merge one split per round", {"merge_rows": 1}, 1.0),
    ("merge 16 splits per round", {"merge_rows": 64}, 1.0),
    # With --rotate: the query rotation launch's output columns per program (0: whole rows; 32,
    # the default, was 0.6-1.4 us faster per call than whole rows at 1-32 x 1-4K:
    # decode-levers-rotate-h200-909d2ab). No effect without --rotate.
    ("query rotation, whole rows per program", {"query_rotation_cols": 0}, 1.0),
    ("query rotation, 64 columns per program", {"query_rotation_cols": 64}, 1.0),
    ("query rotation, 16 columns per program", {"query_rotation_cols": 16}, 1.0),
    # With --rotate: where the query is rotated. query_rotation_in_kernel 4 (the default): each
    # attention program rotates its own query rows where they number at most 4 per
    # multiprocessor, instead of the rotation launch before them (0: that launch everywhere).
    ("in-kernel query rotation off (a launch)", {"query_rotation_in_kernel": 0}, 1.0),
    (
        "in-kernel query rotation up to 8 programs a multiprocessor",
        {"query_rotation_in_kernel": 8},
        1.0,
    ),
    ("in-kernel query rotation, sign matrix prefetched", {"signs_prefetch": 1}, 1.0),
    ("in-kernel query rotation, first key tile prefetched", {"query_rotation_prefetch": 1}, 1.0),
    (
        "in-kernel query rotation, first key tile and sign matrix prefetched",
        {"query_rotation_prefetch": 1, "signs_prefetch": 1},
        1.0,
    ),
    ("in-kernel query rotation, programmatic launches elsewhere", {"pdl": 1}, 1.0),
    ("in-kernel query rotation always", {"query_rotation_in_kernel": 1 << 20}, 1.0),
    # kronecker_rotation 1: the query's and the output's rotations multiply by H = H_(D/32) (x)
    # H_32 with the 32 x 32 factor built in registers, reading the sign vector, not the matrix.
    ("in-kernel query rotation, H from registers", {"kronecker_rotation": 1}, 1.0),
    (
        "in-kernel query rotation, H from registers, first key tile prefetched",
        {"kronecker_rotation": 1, "query_rotation_prefetch": 1},
        1.0,
    ),
    (
        "in-kernel query rotation always, H from registers",
        {"kronecker_rotation": 1, "query_rotation_in_kernel": 1 << 20},
        1.0,
    ),
    (
        "in-kernel query rotation off, programmatic launches",
        {"query_rotation_in_kernel": 0, "pdl": 1},
        1.0,
    ),
    # Programmatic dependent launches (pdl 1, opt-in): the attention after rotate=True's query
    # rotation and the merge after the attention start while the launch before drains.
    ("programmatic launches", {"pdl": 1}, 1.0),
    ("programmatic launches, merge launch always", {"pdl": 1, "merge_in_kernel": 0}, 1.0),
    # Software pipelining: with lookup 5 the K bytes, V words and both norms cross shared
    # memory for tl.dot, so Triton 3.6's pipeliner turns their loads into cp.async copies
    # N - 1 tiles ahead, which bypass registers (compiled for sm_90a: 8 spilled bytes at 128
    # registers against 96 with one stage; static_cost.py). The default (3 stages at 128
    # registers, no prefetch) since it ran 2-11% faster at 16-32K than the one-stage,
    # prefetching launch at 160 registers before it (decode-levers-regs-h200-5fee6fa).
    (
        "1 stage, L2 prefetch, 160 registers (the launch before)",
        {"num_stages": 1, "prefetch": 1, "maxnreg": 160},
        1.0,
    ),
    ("1 stage, no prefetch, 160 registers", {"num_stages": 1, "maxnreg": 160}, 1.0),
    ("3 stages, 160 registers", {"maxnreg": 160}, 1.0),
    ("2 stages", {"num_stages": 2}, 1.0),
    ("4 stages", {"num_stages": 4}, 1.0),
    ("3 stages, L2 prefetch", {"prefetch": 1}, 1.0),
    ("3 stages, 64-token tiles", {"block_n": 64}, 1.0),
    ("3 stages, splits x1.33", {}, 4 / 3),
    # One query token: keys past the end masked per score (a compare and a select each) and
    # every load masked, as before 0bd3c9e; the default masks per key (static-cost JSON).
    ("per-score mask", {"key_mask": 0}, 1.0),
]
# A ceiling, not a kernel: the 4-bit lookup replaced by the cheapest conversion there is, each
# nibble n read as the fp16 value n (OR into 1024's exponent, subtract 1024; 11-12 instructions
# per 8 codes against the codebook permutes' 20-24 plus the immediates ptxas copies in). Its
# outputs are wrong on purpose (max |diff| says so); its time says what decode could gain if
# the codebook were affine in the code (a uniform quantizer, or centroids the query absorbs).
_SUBTRACT_1024 = """
.reg .b32 k;
mov.b32 k, 0x64006400;
sub.f16x2 $0, $0, k;
sub.f16x2 $1, $1, k;
sub.f16x2 $2, $2, k;
sub.f16x2 $3, $3, k;
}"""
# The uniform codebook's conversion (triton_layout.AFFINE_*_ASM, which the kernel runs for
# uniform 4-bit fields), then the 1024 taken off each value.
_AFFINE_PAIRS_PROBE = triton_layout.AFFINE_PAIRS_ASM.rstrip("}") + _SUBTRACT_1024
_AFFINE_QUADS_PROBE = triton_layout.AFFINE_QUADS_ASM.rstrip("}") + _SUBTRACT_1024
# Codes stored sign and magnitude (bit 3 the sign, bits 0-2 the magnitude's index) instead of
# in codebook order: lookup 5's permutes without the 5 instructions per 8 codes that find the
# magnitude's index of a negative code. Also a ceiling: the cache holds codebook order, so the
# values are wrong; its time says what that storage order would gain.
# The permutes of 35b2748 once idx (magnitude index) and neg (1 per negative code) are known.
_MAGNITUDES_35B2748 = """
prmt.b32 lb, l0, l1, idx;
prmt.b32 hb, h0, h1, idx;
prmt.b32 sg, c80, c80, neg;
or.b32 hb, hb, sg;
shr.u32 idx, idx, 16;
shr.u32 neg, neg, 16;
prmt.b32 lb2, l0, l1, idx;
prmt.b32 hb2, h0, h1, idx;
prmt.b32 sg, c80, c80, neg;
or.b32 hb2, hb2, sg;
"""
_SIGN_MAGNITUDE_PERMUTES = (
    """
and.b32 idx, $4, 0x77777777;
shr.u32 neg, $4, 3;
and.b32 neg, neg, 0x11111111;"""
    + _MAGNITUDES_35B2748
)


def _sign_magnitude_asm(head_dim: int, quads: bool) -> str:
    immediates = _immediates_35b2748(head_dim)
    epilogue = _QUADS_EPILOGUE_35B2748 if quads else triton_layout._PAIRS_EPILOGUE
    return "{" + immediates + _SIGN_MAGNITUDE_PERMUTES + epilogue + "}"


# Lookup 5's asm as it was at 35b2748, before the leaner permutes (no not per 8 codes, the V
# words' bytes reordered so each output is one permute):
# correct values, to time the change against the old code in one process.
_IMMEDIATES_35B2748 = """
.reg .b32 neg, flip, idx, lb, hb, lb2, hb2, sg, l0, l1, h0, h1, c80, e, f, e2, f2;
mov.b32 l0, {l0:#010x};
mov.b32 l1, {l1:#010x};
mov.b32 h0, {h0:#010x};
mov.b32 h1, {h1:#010x};
mov.b32 c80, 0x8000;"""
_PERMUTES_35B2748 = (
    """
not.b32 neg, $4;
shr.u32 neg, neg, 3;
and.b32 neg, neg, 0x11111111;
mul.lo.u32 flip, neg, 7;
xor.b32 idx, $4, flip;
and.b32 idx, idx, 0x77777777;"""
    + _MAGNITUDES_35B2748
)
_QUADS_EPILOGUE_35B2748 = """
prmt.b32 e, lb, hb, 0x5140;
prmt.b32 f, lb, hb, 0x7362;
prmt.b32 e2, lb2, hb2, 0x5140;
prmt.b32 f2, lb2, hb2, 0x7362;
prmt.b32 $0, e, e2, 0x5410;
prmt.b32 $1, e, e2, 0x7632;
prmt.b32 $2, f, f2, 0x5410;
prmt.b32 $3, f, f2, 0x7632;
"""


def _immediates_35b2748(head_dim: int) -> str:
    table = triton_layout.nibble_pair_table(head_dim, "cpu")
    words = [w & 0xFFFFFFFF for w in table[256:260].tolist()]
    return _IMMEDIATES_35B2748.format(l0=words[0], l1=words[1], h0=words[2], h1=words[3])


def _permutes_35b2748(head_dim: int, quads: bool) -> str:
    immediates = _immediates_35b2748(head_dim)
    epilogue = _QUADS_EPILOGUE_35B2748 if quads else triton_layout._PAIRS_EPILOGUE
    return "{" + immediates + _PERMUTES_35B2748 + epilogue + "}"


def _shifts_as_mul_hi(head_dim: int, quads: bool) -> str:
    """Today's permutes with the three shifts per 8 codes as mul.hi by a power of two, which
    ptxas keeps as IMAD.HI on the FMA pipe (10b3c47's default; slower by 1.5-2.5% on an H100
    than shr on the integer pipe, decode-levers-permutes-mask-merge-h100-10b3c47)."""
    asm = triton_layout.nibble_group_asm(head_dim, quads)
    for old, new in (
        ("shr.u32 pos, x, 3;", "mul.hi.u32 pos, x, 0x20000000;"),
        ("shr.u32 pos, $4, 3;", "mul.hi.u32 pos, $4, 0x20000000;"),
        ("shr.u32 idx, idx, 16;", "mul.hi.u32 idx, idx, 0x10000;"),
        ("shr.u32 pos, pos, 16;", "mul.hi.u32 pos, pos, 0x10000;"),
    ):
        if old in asm:
            asm = asm.replace(old, new)
    if "shr.u32" in asm:
        raise AssertionError("a shr left in the mul.hi variant")
    return asm


# The affine probes without the subtractions: each nibble n read as the fp16 value 1024 + n and
# fed to tl.dot as is (one OR per two codes). The uniform codebook decodes this way (measured
# here at 26b6983, before it existed): the offset is a per-row correction after the product and
# the step folds into the norms.
_RAW_PAIRS_PROBE = triton_layout.AFFINE_PAIRS_ASM
_RAW_QUADS_PROBE = triton_layout.AFFINE_QUADS_ASM

# name: (K's byte-pair asm, V's 16-bit-word asm); None keeps lookup 5's.
PROBES = {
    "probe: affine nibbles (wrong values, lookup cost only)": (
        _AFFINE_PAIRS_PROBE,
        _AFFINE_QUADS_PROBE,
    ),
    "probe: affine nibbles as 1024 + n (wrong values)": (_RAW_PAIRS_PROBE, _RAW_QUADS_PROBE),
    "probe: affine key nibbles only (wrong values)": (_AFFINE_PAIRS_PROBE, None),
    "probe: affine value nibbles only (wrong values)": (None, _AFFINE_QUADS_PROBE),
    "probe: sign-magnitude code order (wrong values)": (_sign_magnitude_asm, _sign_magnitude_asm),
    # Not probes: the same values as the default, other asm (timed against it in one process).
    "permutes at 35b2748": (_permutes_35b2748, _permutes_35b2748),
    "permutes, shifts as mul.hi": (_shifts_as_mul_hi, _shifts_as_mul_hi),
    "permutes at 35b2748, per-score mask (the loop at 35b2748)": (
        _permutes_35b2748,
        _permutes_35b2748,
    ),
}
# With --rotate: rotate=True's two extra pieces of work, each left out in turn (wrong values):
# what is left of the call's time says what the other costs.
ROTATION_PROBES = (
    "probe: rotate=True without the output's rotation back (wrong values)",
    "probe: rotate=True without the query's rotation (wrong values)",
    "probe: the rotated-domain call, rotate=False (other values)",
)
# Launch settings a PROBES row runs with (none by default).
PROBE_TUNING = {"permutes at 35b2748, per-score mask (the loop at 35b2748)": {"key_mask": 0}}


@contextlib.contextmanager
def _probed(name: str):
    """The attention kernel given probe ``name``'s asm in place of lookup 5's, if it is one."""
    saved = triton_attention._nibble_constants
    saved_launch = triton_attention._launch
    saved_rule = triton_attention._rotates_query_in_kernel
    saved_rotation = triton_attention._rotated_queries
    global ROTATE
    saved_rotate = ROTATE
    if name == ROTATION_PROBES[2]:
        ROTATE = False
    if name == ROTATION_PROBES[0]:
        triton_attention._launch = lambda *args, **kw: saved_launch(
            *args, **{**kw, "unrotate": False}
        )
    elif name == ROTATION_PROBES[1]:
        triton_attention._rotates_query_in_kernel = lambda *args: False
        triton_attention._rotated_queries = lambda query_rows, layout: query_rows
    if name in PROBES:
        pairs, quads_asm = PROBES[name]

        def probe_constants(layout, lookup):
            constants = saved(layout, lookup)
            if lookup == 5:
                for key, asm, quads in (
                    ("NIBBLE_PAIRS", pairs, False),
                    ("NIBBLE_QUADS", quads_asm, True),
                ):
                    if callable(asm):
                        asm = asm(layout.head_dim, quads)
                    if asm is not None:
                        constants[key] = asm
            return constants

        triton_attention._nibble_constants = probe_constants
    try:
        yield
    finally:
        triton_attention._nibble_constants = saved
        triton_attention._launch = saved_launch
        triton_attention._rotates_query_in_kernel = saved_rule
        triton_attention._rotated_queries = saved_rotation
        ROTATE = saved_rotate


# The probes --only names (none by default).
WANTED_PROBES: list[str] = []


# --splits N,M,...: the default launch again at these explicit split counts (rows "N splits"),
# to see where the split-count rule leaves a partial last wave of programs.
EXPLICIT_SPLITS: list[int] = []

# Fields wider than 4 bits read their table through L1 and spill at the 4-bit 128-register cap
# (sm_90a: 656 bytes for K8V4, 2,044 loop instructions; none and 1,777 uncapped at 224
# registers), so their launches are uncapped (TUNING's wide_maxnreg 0); `--bits 8x4` times
# the caps against that.
WIDE_FIELD_VARIANTS = [
    ("default (no register cap)", {}, 1.0),
    ("128 registers", {"wide_maxnreg": 128}, 1.0),
    ("160 registers", {"wide_maxnreg": 160}, 1.0),
    ("192 registers", {"wide_maxnreg": 192}, 1.0),
]


# Fields narrower than 4 bits (K3V3: planes of 2 and 1 bits; K2V2) launched with the 4-bit
# settings until 265d11f and decoded 6-7x slower than bf16 at 8 x 16K (kernels-h100-83eb21e);
# compiled for sm_90a, K3V3 spilled 980 bytes at the 128-register cap with 3 stages. Since then
# they take the wide fields' settings (wide_*: lookup 2, no cap, 1 stage, prefetch), which the
# variants below override. `--bits 3x3` times these.
NARROW_FIELD_VARIANTS = [
    ("default (the wide fields' settings)", {}, 1.0),
    ("no prefetch", {"wide_prefetch": 0}, 1.0),
    ("3 stages", {"wide_num_stages": 3}, 1.0),
    ("lookup 0 (tables)", {"wide_lookup": 0}, 1.0),
    ("128 registers", {"wide_maxnreg": 128}, 1.0),
    ("64-token tiles", {"wide_block_n": 64}, 1.0),
    ("64-token tiles, 3 stages", {"wide_block_n": 64, "wide_num_stages": 3}, 1.0),
    ("32-token tiles", {"wide_block_n": 32}, 1.0),
    ("the 4-bit settings (until 265d11f)",
     {f"wide_{key}": value for key, value in triton_attention.TUNING["decode"].items()
      if f"wide_{key}" in triton_attention.TUNING["decode"]}, 1.0),
]  # fmt: skip


# --codebooks K,V: read the same pages with these codebooks (e.g. lloyd-max,uniform).
CODEBOOKS = ("lloyd-max", "lloyd-max")


def _setup(batch: int, context: int, bits: tuple[int, int] = (4, 4)):
    layout, *rest = kernels.decode_inputs("llama3-8b", batch, context, bits)
    if CODEBOOKS != ("lloyd-max", "lloyd-max"):
        codec = TQCodec(
            layout.head_dim, *bits, key_codebook=CODEBOOKS[0], value_codebook=CODEBOOKS[1]
        )
        layout = codec.cache_layout(layout.num_kv_heads, layout.block_size)
    return (layout, *rest)


# --rotate: every variant takes the query and returns the output in the model's domain, the
# call the adapters make (a launch rotates the queries first, the kernel rotates the output
# back; rotate-h200-c5a676c.md measured it against the rotated-domain call).
ROTATE = False


def _run(layout, caches, block_table, seq_lens, queries, out, i, splits):
    triton_attention.decode_attention(
        queries[i], caches[i], block_table, seq_lens, layout, layout.head_dim**-0.5, out=out,
        num_splits=splits, rotate=ROTATE,
    )  # fmt: skip


def _default_splits(layout, batch, block_table) -> int:
    max_tokens = block_table.shape[1] * layout.block_size
    return triton_attention._split_count(batch, layout, max_tokens, torch.device("cuda"))


def lever_rows(
    batch: int, context: int, copy_gbps: float, bits: tuple[int, int] = (4, 4)
) -> list[dict]:
    layout, packed, caches, block_table, seq_lens, queries = _setup(batch, context, bits)
    label = f"tq K{bits[0]}V{bits[1]}" + (" rotate=True" if ROTATE else "")
    if CODEBOOKS != ("lloyd-max", "lloyd-max"):
        label += f" codebooks {CODEBOOKS[0]},{CODEBOOKS[1]}"
    if bits == (4, 4):
        variants = VARIANTS
    elif max(bits) < 4:
        variants = NARROW_FIELD_VARIANTS
    else:
        variants = WIDE_FIELD_VARIANTS
    variants = variants + [(f"{count} splits", {}, count) for count in EXPLICIT_SPLITS]
    if bits == (4, 4):
        variants = variants + [(name, PROBE_TUNING.get(name, {}), 1.0) for name in WANTED_PROBES]
    out = torch.empty_like(queries[0])
    default = dict(triton_attention.TUNING["decode"])
    _run(layout, caches, block_table, seq_lens, queries, out, 0, None)
    expected = out.float().clone()
    base = {"op": "decode", "model": "llama3-8b", "batch": batch, "context": context}
    rows = []
    for name, overrides, factor in variants:
        triton_attention.TUNING["decode"] = {**default, **overrides}
        # The split count the variant's own TUNING picks, times the factor (an int: that count).
        base_splits = _default_splits(layout, batch, block_table)
        splits = factor if isinstance(factor, int) else round(base_splits * factor)
        splits = max(1, min(64, splits))
        try:
            with _probed(name):
                _run(layout, caches, block_table, seq_lens, queries, out, 0, splits)
                error = (out.float() - expected).abs().max().item()
                inputs = (layout, caches, block_table, seq_lens, queries, out)
                calls = [
                    (lambda i=i, s=splits, inputs=inputs: _run(*inputs, i, s))
                    for i in range(len(caches))
                ]
                ms, how = kernels.time_calls(calls)
        except Exception as failure:  # a setting that fails to compile is reported, not fatal
            print(f"  {name}: {type(failure).__name__} {str(failure)[:120]}", flush=True)
            rows.append({**base, "impl": f"{label} {name}", "error": str(failure)[:300]})
            continue
        finally:
            triton_attention.TUNING["decode"] = default
        row = {
            **base, "impl": f"{label} {name}", "bits": f"K{bits[0]}V{bits[1]}", "ms": ms,
            "timing": how, "bytes": packed, "splits": splits, "tuning": {**default, **overrides},
            "max_abs_diff_vs_default": error,
        }  # fmt: skip
        print(f"  {name}: splits {splits}, {ms:.4f} ms, max |diff| {error:.2e}", flush=True)
        rows.append(row)
    caches.clear()
    num_q, num_kv, head_dim = kernels.MODELS["llama3-8b"]
    rows += kernels.bf16_decode_rows(base, num_q, num_kv, head_dim, batch, context)
    return kernels._finish(rows, copy_gbps)


def ncu_target(
    shape: str, lookup: int, splits_factor: float, prefetch: int | None, tuning: str = ""
) -> None:
    """A few launches of one configuration, for `ncu --launch-skip 2 --launch-count 1`."""
    batch, context = (int(part) for part in shape.split("x"))
    triton_attention.TUNING = triton_attention.apply_tuning_overrides(
        triton_attention.TUNING, tuning
    )
    if lookup is not None:
        triton_attention.TUNING["decode"] = {**triton_attention.TUNING["decode"], "lookup": lookup}
    if prefetch is not None:
        tuning = triton_attention.TUNING["decode"]
        triton_attention.TUNING["decode"] = {**tuning, "prefetch": prefetch}
    layout, _, caches, block_table, seq_lens, queries = _setup(batch, context)
    out = torch.empty_like(queries[0])
    splits = max(1, round(_default_splits(layout, batch, block_table) * splits_factor))
    for i in range(4):
        _run(layout, caches, block_table, seq_lens, queries, out, i % len(caches), splits)
    torch.cuda.synchronize()


def shapes_from(spec: str | None, default: list) -> list[tuple[int, int]]:
    """(batch, context) pairs of a BATCHxCONTEXT comma list, or ``default``."""
    if not spec:
        return default
    return [tuple(int(part) for part in shape.split("x")) for shape in spec.split(",")]


def measured_environment(git_sha: str | None) -> dict:
    """The machine and versions, with the commit named on the command line where .git did not
    travel."""
    env = environment_record()
    if git_sha:
        env["git_sha"] = git_sha
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="path prefix for .json and .md")
    parser.add_argument("--git-sha", help="the commit measured (when .git did not travel)")
    parser.add_argument("--shapes", help="comma list of BATCHxCONTEXT (default: four shapes)")
    parser.add_argument(
        "--bits", default="4x4", help="KxV, e.g. 8x4: other than 4x4, the register-cap sweep"
    )
    parser.add_argument(
        "--rotate",
        action="store_true",
        help="time the model-domain call (rotate=True) tq-vllm makes",
    )
    parser.add_argument(
        "--only", help="comma list: time only the variants whose name contains one of these"
    )
    parser.add_argument(
        "--splits", help="comma list of split counts: the default launch timed at each too"
    )
    parser.add_argument("--codebooks", help="K,V codebooks, e.g. lloyd-max,uniform")
    parser.add_argument("--ncu-target", help="BATCHxCONTEXT: run one configuration and exit")
    parser.add_argument("--lookup", type=int, help="with --ncu-target (default: TUNING's)")
    parser.add_argument("--splits-factor", type=float, default=1.0, help="with --ncu-target")
    parser.add_argument("--prefetch", type=int, help="with --ncu-target (default: TUNING's)")
    parser.add_argument(
        "--tuning", default="", help="with --ncu-target: e.g. decode.lookup=6,decode.maxnreg=0"
    )
    args = parser.parse_args()
    global ROTATE, CODEBOOKS
    ROTATE = args.rotate
    if args.codebooks:
        CODEBOOKS = tuple(part.strip() for part in args.codebooks.split(","))
    if args.splits:
        EXPLICIT_SPLITS.extend(int(part) for part in args.splits.split(","))
    if args.ncu_target:
        ncu_target(args.ncu_target, args.lookup, args.splits_factor, args.prefetch, args.tuning)
        return
    if args.only:
        global VARIANTS
        wanted = [part.strip() for part in args.only.split(",")]
        VARIANTS = [
            v for v in VARIANTS if v[0].startswith("default") or any(w in v[0] for w in wanted)
        ]
        WANTED_PROBES.extend(
            name for name in (*PROBES, *ROTATION_PROBES) if any(w in name for w in wanted)
        )
    bits = tuple(int(part) for part in args.bits.split("x"))
    shapes = shapes_from(args.shapes, SHAPES)
    env = measured_environment(args.git_sha)
    started = time.time()
    copy_gbps = kernels.copy_bandwidth()
    print(f"copy bandwidth {copy_gbps:.0f} GB/s on {env['gpu']}", flush=True)
    rows = []
    for batch, context in shapes:
        print(f"decode {batch} x {context}", flush=True)
        rows += lever_rows(batch, context, copy_gbps, bits)
        torch.cuda.empty_cache()
    env["seconds"] = round(time.time() - started, 1)
    result = {"environment": env, "copy_gbps": copy_gbps, "suite": "levers", "rows": rows}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    table = kernels.markdown(rows, copy_gbps, env)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
