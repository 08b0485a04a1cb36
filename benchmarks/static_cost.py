"""Static cost of the decode kernel's inner loop, compiled for Hopper on a machine with no GPU.

    python benchmarks/static_cost.py --out benchmarks/results/static-cost-sm90a

Compiles the attention kernel (decode, split-K, K4V4 unless told otherwise, Llama-3-8B GQA
group of 4, head_dim 128) for sm_90a with Triton's own ptxas and nvdisasm, and reports
registers, spills and the SASS instructions of the key loop (the longest backward branch):
the count `docs/kernels.md` compares with the memory-bound budget. Writes JSON and prints it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tq_core import TQCodec
from tq_core.cli.provenance import environment_record
from tq_core.ops import triton_attention, triton_decompress, triton_layout, triton_store

_POINTERS = {
    "q_ptr": "*bf16", "out_ptr": "*bf16", "cache_ptr": "*u8", "block_table_ptr": "*i32",
    "seq_lens_ptr": "*i32", "query_start_ptr": "*i32", "signs_ptr": "*fp16", "q_signs_ptr": "*fp16",
    "split_counts_ptr": "*i32",
}  # fmt: skip
SHARED = ("STS", "LDS")  # STS*, LDS*, LDSM* (ldmatrix), STSM*
# SASS opcodes by the pipe that executes them on sm_90 (the ALU pipe, integer and logic,
# compares, selects, min/max, issues a warp-instruction every other cycle; the FMA pipes fp32
# arithmetic and integer multiply-adds every cycle): what bounds the store's quantizer.
_ALU_OPS = frozenset({"ISETP", "FSETP", "FSEL", "SEL", "LOP3", "IMNMX", "FMNMX", "SHF", "PRMT",
                      "IADD3", "LEA", "IABS", "PLOP3", "P2R", "R2P", "VIMNMX", "BMSK"})  # fmt: skip
_FMA_OPS = frozenset({"FFMA", "FADD", "FMUL", "IMAD", "HFMA2", "HADD2", "HMUL2", "VIADD"})
_SASS_OP = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def _merge_constants(head_dim: int, group: int, unrotate: bool) -> dict:
    """The split merge's tile as the launch picks it, for one query token."""
    rows, slots = triton_attention._merge_tile(
        triton_attention.TUNING["decode"], head_dim, group, unrotate
    )
    return {"MERGE_ROWS": rows, "MERGE_SLOTS": slots}


def compile_decode(
    k_bits: int,
    v_bits: int,
    block_n: int,
    num_warps: int,
    lookup: int = 0,
    maxnreg=None,
    prefetch: int = 0,
    shape: tuple[int, int, int] = (128, 4, 8),
    merge_in_kernel: bool = False,
    unrotate: bool = False,
    rot_cols: int | None = None,
    num_stages: int = 1,
    codebooks: tuple[str, str] = ("lloyd-max", "lloyd-max"),
    key_mask: bool = True,
    rotate_query: bool = False,
    prefetch_signs: bool = False,
    prefetch_first: bool = False,
    kronecker: bool = False,
) -> dict:
    """``shape``: (head_dim, GQA group, KV heads), Llama-3-8B's by default; ``merge_in_kernel``:
    the last split merges (short splits' launch); ``unrotate``: the output is rotated back
    (``rotate=True``'s launch), ``rot_cols`` columns of the sign matrix at a time (default: the
    launches'); ``num_stages``: Triton's software pipelining of the key loop; ``rotate_query``:
    each program rotates its own query (rotate=True's one wave of programs);
    ``prefetch_signs``: the sign matrix prefetched into L2 at the start; ``prefetch_first``:
    the first key tile prefetched into L2 before the query's rotation; ``kronecker``: the
    rotations multiply by H from registers and read the sign vector (``kronecker_rotation``)."""
    head_dim, group, num_kv_heads = shape
    codec = TQCodec(
        head_dim, k_bits, v_bits, key_codebook=codebooks[0], value_codebook=codebooks[1]
    )
    layout = codec.cache_layout(num_kv_heads, 16)
    # 4-bit fields read int32 nibble-pair tables, others float32 centroids.
    tables = {
        "k_cent_ptr": "*i32" if k_bits == 4 else "*fp32",
        "v_cent_ptr": "*i32" if v_bits == 4 else "*fp32",
    }
    if kronecker:  # the sign vector (float32), not the fp16 matrices
        tables.update(signs_ptr="*fp32", q_signs_ptr="*fp32")
    constants = dict(
        GROUP=group, NUM_KV_HEADS=num_kv_heads, BLOCK_SIZE=16, D=head_dim, BLOCK_M=16,
        BLOCK_N=block_n,
        TOKENS_PER_TILE=1, UNIFORM_Q=1, SPLIT=True, HAS_SOFTCAP=False, HAS_WINDOW=False,
        WAIT_PRIOR=False, LAUNCH_DEPENDENTS=False,
        MERGE_IN_KERNEL=merge_in_kernel, KEY_MASK=key_mask,
        **_merge_constants(head_dim, group, unrotate),
        LOOKUP=lookup, UNROTATE=unrotate, ROTATE_Q=rotate_query, KRONECKER=kronecker,
        PREFETCH_SIGNS=prefetch_signs, PREFETCH_FIRST=prefetch_first,
        **triton_attention._nibble_constants(layout, lookup),
        PREFETCH=prefetch,
        **triton_attention._kernel_constants(layout, lookup),
    )  # fmt: skip
    if rot_cols:
        constants["ROT_COLS"] = rot_cols
    kernel = triton_attention._attention_kernel
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = tables.get(name) or _POINTERS.get(name, "*fp32")
        elif name in ("scale", "softcap", "inv_sqrt_d"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    # What the JIT assumes at run time: pointers and strides are 16-byte multiples.
    strides = ("stride_qr", "stride_or", "stride_page", "stride_bt")
    aligned = [n for n in kernel.arg_names if signature[n].startswith("*") or n in strides]
    source = ASTSource(
        kernel,
        signature,
        constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()},
        attrs={(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg:
        options["maxnreg"] = maxnreg  # Triton writes it into the PTX, where ptxas reads it
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    report, lines = _sass(compiled)
    body = loop_body(lines)
    ops = collections.Counter(body)
    return {
        "head_dim": head_dim, "group": group, "k_bits": k_bits, "v_bits": v_bits,
        "block_n": block_n, "num_warps": num_warps,
        "lookup": lookup, "maxnreg": maxnreg, "prefetch": prefetch,
        "merge_in_kernel": merge_in_kernel, "unrotate": unrotate, "rotate_query": rotate_query,
        "prefetch_signs": prefetch_signs, "prefetch_first": prefetch_first, "kronecker": kronecker,
        "merge_tile": [constants["MERGE_ROWS"], constants["MERGE_SLOTS"]],
        "rot_cols": constants["ROT_COLS"], "num_stages": num_stages, "codebooks": list(codebooks),
        "shared_memory_bytes": compiled.metadata.shared,
        # Loads the pipeliner turned into cp.async copies into shared memory (num_stages > 1).
        "async_copies": compiled.asm["ttgir"].count("async_copy_global_to_local"),
        **_resources(report, lines),
        "loop_instructions_per_thread": len(body),
        "warp_instructions_per_token_and_kv_head": len(body) * num_warps / block_n,
        "top_ops": ops.most_common(12),
        "loop_ops": dict(ops.most_common()),
        "key_mask": key_mask,
        # Shared-memory instructions of the loop (stores, loads, ldmatrix): the staging for
        # tl.dot that lookup 4 trims.
        "shared_memory_ops": dict(
            sorted((op, n) for op, n in ops.items() if op[:3] in SHARED)
        ),
    }  # fmt: skip


def loop_body(lines: list[str]) -> list[str]:
    """SASS opcodes of the longest backward branch: the key loop."""
    labels = {
        m.group(1): i
        for i, line in enumerate(lines)
        if (m := re.match(r"^\.(L_x_\d+):", line.strip()))
    }
    loops = [
        (labels[m.group(1)], i)
        for i, line in enumerate(lines)
        if (m := re.search(r"BRA\s+`\(\.(L_x_\d+)\)", line)) and labels.get(m.group(1), i) < i
    ]
    start, end = max(loops, key=lambda span: span[1] - span[0])
    return [m.group(1) for line in lines[start : end + 1] if (m := _SASS_OP.search(line))]


def _sass(compiled) -> tuple[str, list[str]]:
    """(ptxas's resource report, the SASS lines) of a kernel compiled for sm_90a."""
    tools = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as folder:
        ptx, cubin = os.path.join(folder, "k.ptx"), os.path.join(folder, "k.cubin")
        pathlib.Path(ptx).write_text(compiled.asm["ptx"])
        report = subprocess.run(
            [tools / "ptxas", "-v", "--gpu-name=sm_90a", ptx, "-o", cubin],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
        sass = subprocess.run(
            [tools / "nvdisasm", "-c", cubin], capture_output=True, text=True, check=True
        ).stdout
    return report, sass.splitlines()


def _resources(report: str, lines: list[str]) -> dict:
    """Registers, spills and the whole kernel's instruction count, with its global-memory,
    shared-memory and tensor-core instructions by kind (what a prologue adds, for instance)."""
    ops = collections.Counter(m.group(1) for line in lines if (m := _SASS_OP.search(line)))
    return {
        "registers": int(re.search(r"Used (\d+) registers", report).group(1)),
        "spill_store_bytes": int(re.search(r"(\d+) bytes spill stores", report).group(1)),
        "kernel_instructions": sum(ops.values()),
        "kernel_memory_and_mma_ops": dict(
            sorted((op, n) for op, n in ops.items() if op[:3] in ("LDG", "STS", "LDS", "HMM"))
        ),
    }


def compile_decompress(register_lookup: bool, unrotate: bool) -> dict:
    """gather_kv's kernel for K4 of Llama-3-8B's shape (head_dim 128, 64-token programs, the
    launch's 4 warps), with the register lookup or the table's, rotating back or not."""
    layout = TQCodec(128, 4, 4).cache_layout(8, 16)
    kernel = triton_decompress._decompress_kernel
    pairs = triton_layout.nibble_group_asm(128, False) if register_lookup else ""
    constants = dict(
        BLOCK_SIZE=16, D=128, BLOCK_T=triton_decompress._BLOCK_TOKENS, UNROTATE=unrotate,
        REGISTER_LOOKUP=register_lookup, NIBBLE_PAIRS=pairs,
        **triton_layout.field_constants(layout, "key", ""),
    )  # fmt: skip
    pointers = {"cache_ptr": "*u8", "block_ids_ptr": "*i32", "cent_ptr": "*fp32",
                "signs_ptr": "*fp16", "out_ptr": "*bf16"}  # fmt: skip
    signature = {
        name: "constexpr" if name in constants else pointers.get(name, "i32")
        for name in kernel.arg_names
    }
    signature["inv_sqrt_d"] = "fp32"
    strides = ("stride_page", "stride_oh", "stride_ot")
    aligned = [n for n in kernel.arg_names if n in pointers or n in strides]
    source = ASTSource(
        kernel,
        signature,
        constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()},
        attrs={(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    return {
        "kernel": "gather_kv", "register_lookup": register_lookup, "unrotate": unrotate,
        **_resources(*_sass(compiled)),
    }  # fmt: skip


#: The store's TUNING entries that choose how a codebook's codes are found.
_ARITHMETIC_SETTINGS = ("uniform_arithmetic", "companded_arithmetic", "lloyd_max_arithmetic")


def _arithmetic_constants(fmt, arithmetic: dict[str, int], prefix: str) -> dict:
    """The store's ARITHMETIC and SQUARE_ASM for ``fmt`` (names prefixed) with the entries of
    triton_store.TUNING in ``arithmetic`` (any of _ARITHMETIC_SETTINGS) set."""
    saved = dict(triton_store.TUNING)
    triton_store.TUNING.update(arithmetic)
    try:
        return {
            f"{prefix}ARITHMETIC": triton_store._arithmetic_codes(fmt),
            f"{prefix}SQUARE_ASM": triton_store._square_asm(fmt),
        }
    finally:
        triton_store.TUNING.clear()
        triton_store.TUNING.update(saved)


def compile_store(
    block_rows: int,
    num_warps: int,
    chunk: int,
    fwht: bool,
    raw_dot: bool = True,
    quantizer: tuple[bool, bool, bool, bool] = (True, True, True, True),
    prefetch: bool = False,
    codebook: str = "lloyd-max",
    arithmetic: dict[str, int] | None = None,
    norm_correction: bool = True,
) -> dict:
    """The store kernel for K4V4 of Llama-3-8B's shape (bf16 K and V, head_dim 128): rows per
    program, warps, columns per rotation product, the rotation as butterflies (``fwht``)
    instead of the sign matrix, bf16 K/V rotated as they are (``raw_dot``) or as fp16 parts of
    the unit vector; ``quantizer``: (binary_search, byte_squares, native_matrix,
    searched_squares) as in triton_store.TUNING; ``prefetch``: the rows of a later program
    prefetched into L2 (prefetch_ahead); ``codebook``: K's and V's (uniform and companded
    codes come from arithmetic, triton_store._arithmetic_codes; ``arithmetic``: the
    _ARITHMETIC_SETTINGS to change, e.g. {"lloyd_max_arithmetic": 1}); ``norm_correction``
    False: the codec option that stores ||x|| as it is, so the squares of the levels are not
    computed (what they cost). Instructions per row
    count both of the kernel's branches (K and V), as every program compiles both."""
    binary, byte_squares, native_matrix, searched = quantizer
    raw = raw_dot and not fwht
    layout = TQCodec(
        128, 4, 4, key_codebook=codebook, value_codebook=codebook, norm_correction=norm_correction
    ).cache_layout(8, 16)
    kernel = triton_store._store_kernel
    constants = dict(
        H=8, BLOCK_SIZE=16, D=128, CHUNK=chunk, BLOCK_T=block_rows, X_PARTS=2,
        NORM_CORRECTION=int(layout.codec.norm_correction), FWHT=fwht, LOG_D=7,
        RAW_DOT=int(raw), BINARY=int(binary), BYTE_SQUARES=int(byte_squares),
        SEARCHED_SQUARES=int(searched), PREFETCH=prefetch,
        **_arithmetic_constants(layout.key_format, arithmetic or {}, "K_"),
        **_arithmetic_constants(layout.value_format, arithmetic or {}, "V_"),
        ASM=1, PRODUCT_NORM=triton_store.TUNING["product_norm"],
        **triton_layout.field_constants(layout, "key", "K_"),
        **triton_layout.field_constants(layout, "value", "V_"),
    )  # fmt: skip
    matrix = "*bf16" if raw and native_matrix else "*fp16"
    pointers = {"key_ptr": "*bf16", "value_ptr": "*bf16", "cache_ptr": "*u8",
                "slot_ptr": "*i64", "rot_ptr": matrix}  # fmt: skip
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*fp32")
        else:
            signature[name] = "fp32" if name == "inv_sqrt_d" else "i32"
    aligned = [n for n in kernel.arg_names if n in signature and signature[n].startswith("*")]
    aligned += [n for n in kernel.arg_names if n.startswith("stride")]
    source = ASTSource(
        kernel,
        signature,
        constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()},
        attrs={(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    options = {"num_warps": num_warps}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    report, lines = _sass(compiled)
    resources = _resources(report, lines)
    ops = collections.Counter(
        m.group(1).split(".")[0] for line in lines if (m := _SASS_OP.search(line))
    )
    return {
        "kernel": "store",
        "alu_pipe_instructions": sum(n for op, n in ops.items() if op in _ALU_OPS),
        "fma_pipe_instructions": sum(n for op, n in ops.items() if op in _FMA_OPS),
        "block_rows": block_rows, "num_warps": num_warps, "chunk": chunk,
        "fwht": fwht, "raw_dot": raw, "binary_search": binary, "byte_squares": byte_squares,
        "prefetch_ahead": prefetch, "codebook": codebook, "norm_correction": norm_correction,
        **{name: triton_store.TUNING[name] for name in _ARITHMETIC_SETTINGS},
        **(arithmetic or {}),
        "native_matrix": raw and native_matrix, "searched_squares": searched,
        **resources,
        "programs_per_multiprocessor": 65536 // (resources["registers"] * 32 * num_warps),
        "warp_instructions_per_row": resources["kernel_instructions"] * num_warps / block_rows,
        "shared_memory_bytes": compiled.metadata.shared,
    }  # fmt: skip


def _store_codebook_rows() -> list[dict]:
    """Today's store over the codebooks: Lloyd-Max's search, then its codes by arithmetic
    (squares by a polynomial, from the per-byte table, permuted from fixed-point digits), the
    uniform and the companded codebooks' codes by arithmetic (the companded squares by a
    polynomial, from the per-byte table, permuted, by the search), Lloyd-Max's and the
    companded codebook's without norm correction (no squares: what they cost), then with
    128-column products (the norm from their squares) and 128 rows on 8 warps."""
    return [
        compile_store(rows, warps, chunk, False, True, codebook=codebook, arithmetic=settings,
                      norm_correction=correction)
        for rows, warps, chunk, codebook, settings, correction in (
            (64, 4, 64, "lloyd-max", {"lloyd_max_arithmetic": 0}, True),
            (64, 4, 64, "lloyd-max", {"lloyd_max_arithmetic": 1}, True),
            (64, 4, 64, "lloyd-max", {"lloyd_max_arithmetic": 2}, True),
            (64, 4, 64, "lloyd-max", {"lloyd_max_arithmetic": 3}, True),
            (64, 4, 64, "uniform", {}, True),
            (64, 4, 64, "companded", {"companded_arithmetic": 1}, True),
            (64, 4, 64, "companded", {"companded_arithmetic": 2}, True),
            (64, 4, 64, "companded", {"companded_arithmetic": 3}, True),
            (64, 4, 64, "companded", {"companded_arithmetic": 0}, True),
            (64, 4, 64, "lloyd-max", {"lloyd_max_arithmetic": 1}, False),
            (64, 4, 64, "companded", {"companded_arithmetic": 1}, False),
            (64, 4, 128, "lloyd-max", {"lloyd_max_arithmetic": 1}, True),
            (64, 4, 128, "lloyd-max", {"lloyd_max_arithmetic": 3}, True),
            (64, 4, 128, "companded", {"companded_arithmetic": 1}, True),
            (64, 4, 128, "companded", {"companded_arithmetic": 3}, True),
            (64, 4, 128, "uniform", {}, True),
            (128, 8, 128, "lloyd-max", {"lloyd_max_arithmetic": 3}, True),
        )
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path of the JSON to write")
    parser.add_argument(
        "--only-rotation",
        action="store_true",
        help="only rotate=True's kernel that merges its splits, with the query rotated in it or "
        "not and its opt-in prefetches, and the store with and without prefetch_ahead",
    )
    parser.add_argument(
        "--only-store-codebooks",
        action="store_true",
        help="only the store at today's settings over the codebooks (the quantizer's paths) "
        "and the default decode launch over the 4-bit codebooks",
    )
    args = parser.parse_args()
    if args.only_rotation:
        _write(args.out, *_rotation_rows())
        return
    if args.only_store_codebooks:
        default = triton_attention.TUNING["decode"]
        decode = [
            compile_decode(
                4, 4, default["block_n"], default["num_warps"], default["lookup"],
                default["maxnreg"], default["prefetch"], num_stages=default["num_stages"],
                codebooks=(codebook, codebook),
            )
            for codebook in ("lloyd-max", "companded", "lloyd-max-grid", "uniform")
        ]  # fmt: skip
        _write(args.out, decode, [], _store_codebook_rows())
        return
    default = triton_attention.TUNING["decode"]
    rows = [
        compile_decode(4, 4, 64, 4),  # the tiles of the committed H200 decode grid, L1 table
        compile_decode(4, 4, default["block_n"], default["num_warps"]),  # L1 table, 128 tiles
        # Today's default: register lookup, registers capped and the next tile prefetched as
        # the launches do; the first row without the prefetch, for its cost.
        compile_decode(
            4, 4, default["block_n"], default["num_warps"], default["lookup"], default["maxnreg"]
        ),
        *(
            compile_decode(
                bits,
                4,
                default["block_n"],
                default["num_warps"],
                # What the launches use: fields wider than 4 bits take their own lookup and go
                # uncapped.
                default["lookup"] if bits == 4 else default["wide_lookup"],
                default["maxnreg"] if bits == 4 else default["wide_maxnreg"] or None,
                default["prefetch"],
            )
            for bits in (4, 8)
        ),
        # Fields narrower than 4 bits (K3V3, K2V2) as they launch (the wide fields' lookup,
        # uncapped, prefetch) at 128-, 64- and 32-token tiles, one stage and three.
        *(
            compile_decode(
                bits,
                bits,
                block_n,
                default["num_warps"],
                default["wide_lookup"],
                default["wide_maxnreg"] or None,
                default["wide_prefetch"],
                num_stages=stages,
            )
            for bits in (3, 2)
            for block_n in (128, 64, 32)
            for stages in (1, 3)
        ),
        # lookup 2 (fp16 tiles staged for tl.dot) at the 128 registers it ran best at, and
        # lookup 4 (K's bytes staged only) at the 160 it needs to keep from spilling.
        compile_decode(4, 4, default["block_n"], default["num_warps"], 2, 128, default["prefetch"]),
        compile_decode(4, 4, default["block_n"], default["num_warps"], 4, 160, default["prefetch"]),
        # lookup 6: 5 with the codebook words loaded, not immediates, uncapped and at 160.
        *(
            compile_decode(
                4, 4, default["block_n"], default["num_warps"], 6, cap, default["prefetch"]
            )
            for cap in (None, 160)
        ),
        # SmolLM2's shape (head_dim 64, GQA 3): lookup 5 at 160 registers as every 4-bit layout
        # launched from bd6a909, and lookup 2 at 128 (small_head_* since), 128-token tiles.
        *(
            compile_decode(
                4,
                4,
                default["block_n"],
                default["num_warps"],
                lookup,
                cap,
                default["prefetch"],
                shape=(64, 3, 3),
            )
            for lookup, cap in ((5, 160), (2, 128))
        ),
        # Lookup 6 uncapped in 1-warp x 32-token and 2-warp x 64-token programs (the sweep's
        # rows).
        *(compile_decode(4, 4, n, w, 6, None, default["prefetch"]) for n, w in ((32, 1), (64, 2))),
        # The kernel that merges its splits, rotating the output back or not (rotate=True's
        # launch at short splits), for Llama-3-8B's and Gemma-2-9B's shapes; head_dim 256 with
        # the whole sign matrix, 64 and 32 columns of it at a time (_rotation_cols).
        *(
            compile_decode(
                4,
                4,
                default["block_n"],
                default["num_warps"],
                default["lookup"],
                default["maxnreg"],
                default["prefetch"],
                shape=shape,
                merge_in_kernel=True,
                unrotate=unrotate,
                rot_cols=cols,
            )
            for shape, unrotate, cols in (
                ((128, 4, 8), False, None),
                ((128, 4, 8), True, None),
                ((256, 2, 8), False, None),
                ((256, 2, 8), True, 256),
                ((256, 2, 8), True, 64),
                ((256, 2, 8), True, None),
            )
        ),
        # SmolLM2's kernel that merges its splits (lookup 2, 128 registers, one stage and the
        # prefetch: small_head_*), rotating back or not, at the split merge's tile (merge_rows).
        *(_smollm2_merging(unrotate) for unrotate in (False, True)),
        # Software pipelining (the sweep's "N stages" rows): the loads lookup 5 stages in
        # shared memory become cp.async copies N - 1 tiles ahead, with or without the L2
        # prefetch.
        *(
            compile_decode(
                4,
                4,
                default["block_n"],
                default["num_warps"],
                default["lookup"],
                default["maxnreg"],
                prefetch,
                num_stages=stages,
            )
            for stages in (2, 3, 4)
            for prefetch in (0, 1)
        ),
        # Gemma-2's shape uncapped: lookup 5's loop spills at 160 registers there.
        compile_decode(
            4,
            4,
            default["block_n"],
            default["num_warps"],
            default["lookup"],
            None,
            default["prefetch"],
            shape=(256, 2, 8),
        ),
        # The default launch (lookup 5, 3 stages) over the three 4-bit codebooks: exact
        # Lloyd-Max (permutes to fp16 centroids), the Lloyd-Max grid (permutes to 1024 + code),
        # uniform (an OR to 1024 + n); capped at 128 registers and uncapped; Gemma-2's shape
        # uncapped.
        *(
            compile_decode(
                4,
                4,
                default["block_n"],
                default["num_warps"],
                default["lookup"],
                cap,
                num_stages=3,
                shape=shape,
                codebooks=(codebook, codebook),
            )
            for shape, caps in (((128, 4, 8), (128, None)), ((256, 2, 8), (None,)))
            for codebook in ("lloyd-max", "lloyd-max-grid", "uniform")
            for cap in caps
        ),
    ]
    decompress = [
        compile_decompress(lookup, back) for lookup in (True, False) for back in (False, True)
    ]
    # The tune suite's store settings (kernel_bench.tune_store_rows): the default, the squares
    # from the per-byte table instead, then each earlier quantizer lever off alone and all off
    # (the kernel before them), other rows and warps, the fp16 parts of the unit vector, the
    # butterflies.
    before = (False, False, False, False)
    store = [
        compile_store(rows_, warps, chunk, fwht, raw, quantizer)
        for rows_, warps, chunk, fwht, raw, quantizer in (
            (64, 4, 32, False, True, (True, True, True, True)),
            (64, 4, 32, False, True, (True, True, True, False)),
            (64, 4, 32, False, True, (False, True, True, False)),
            (64, 4, 32, False, True, (True, False, True, False)),
            (64, 4, 32, False, True, (True, True, False, False)),
            (64, 4, 32, False, True, before), (128, 4, 32, False, True, (True, True, True, True)),
            (64, 8, 32, False, True, (True, True, True, True)),
            (64, 4, 32, False, False, before), (32, 4, 32, True, False, before),
        )
    ]  # fmt: skip
    store += _store_codebook_rows()
    _write(args.out, rows, decompress, store)


def _smollm2_merging(unrotate: bool, rotate_query: bool = False, kronecker: bool = False) -> dict:
    """SmolLM2's kernel that merges its splits as it launches (small_head_*: lookup 2, 128
    registers, one stage and the prefetch), at the split merge's tile (merge_rows)."""
    default = triton_attention.TUNING["decode"]
    return compile_decode(
        4, 4, default["block_n"], default["num_warps"], default["small_head_lookup"],
        default["small_head_maxnreg"], default["small_head_prefetch"], shape=(64, 3, 3),
        merge_in_kernel=True, unrotate=unrotate, num_stages=default["small_head_num_stages"],
        rotate_query=rotate_query, kronecker=kronecker,
    )  # fmt: skip


def _rotation_rows() -> tuple[list, list, list]:
    """rotate=True's kernel that merges its splits (Llama-3-8B's and SmolLM2's launches) with
    the rotation launch's query or its own, the latter with the opt-in prefetches or with H
    from registers (kronecker_rotation); the store with and without prefetch_ahead."""
    default = triton_attention.TUNING["decode"]
    rows = []
    # (query rotated in the kernel, opt-in prefetches, H from registers)
    variants = ((0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 0, 1))
    for rotate_query, prefetch, kronecker in variants:
        rows.append(
            compile_decode(
                4,
                4,
                default["block_n"],
                default["num_warps"],
                default["lookup"],
                default["maxnreg"],
                default["prefetch"],
                merge_in_kernel=True,
                unrotate=True,
                num_stages=default["num_stages"],
                rotate_query=rotate_query,
                prefetch_signs=prefetch,
                prefetch_first=prefetch,
                kronecker=kronecker,
            )
        )
    rows += [_smollm2_merging(True, query, kron) for query, kron in ((0, 0), (1, 0), (1, 1))]
    store = [compile_store(64, 4, 32, False, prefetch=prefetch) for prefetch in (False, True)]
    return rows, [], store


def _write(out: str, rows: list, decompress: list, store: list) -> None:
    """Print every row and write them as JSON."""
    for row in rows:
        print(
            f"head_dim {row['head_dim']} K{row['k_bits']}V{row['v_bits']} "
            f"tile {row['block_n']} x {row['num_warps']} warps, "
            f"lookup {row['lookup']} ({'/'.join(row['codebooks'])}), prefetch {row['prefetch']}, "
            f"cap {row['maxnreg']}, "
            f"merge in kernel {row['merge_in_kernel']}, unrotate {row['unrotate']} "
            f"({row['rot_cols']} columns), {row['num_stages']} stages "
            f"({row['async_copies']} cp.async, {row['shared_memory_bytes']} B shared): "
            f"{row['spill_store_bytes']} spill bytes, "
            f"{row['registers']} registers, {row['loop_instructions_per_thread']} loop "
            f"instructions per thread, {row['warp_instructions_per_token_and_kv_head']:.1f} "
            f"warp-instructions per token and KV head; shared memory {row['shared_memory_ops']}"
        )
    for row in decompress:
        print(
            f"gather_kv, register lookup {row['register_lookup']}, unrotate {row['unrotate']}: "
            f"{row['registers']} registers, {row['kernel_instructions']} instructions, "
            f"{row['kernel_memory_and_mma_ops']}"
        )
    for row in store:
        print(
            f"store, {row['block_rows']} rows x {row['num_warps']} warps, {row['chunk']} "
            f"columns, butterflies {row['fwht']}, raw_dot {row['raw_dot']}: "
            f"{row['registers']} registers, "
            f"{row['spill_store_bytes']} spill bytes, {row['kernel_instructions']} instructions, "
            f"{row['warp_instructions_per_row']:.0f} warp-instructions per row "
            f"(codebook {row['codebook']}, companded_arithmetic {row['companded_arithmetic']}, "
            f"lloyd_max_arithmetic {row['lloyd_max_arithmetic']}: "
            f"{row['alu_pipe_instructions']} on the ALU pipe, {row['fma_pipe_instructions']} "
            "on the FMA pipes)"
        )
    record = {
        "target": "sm_90a", "rows": rows, "decompress": decompress, "store": store,
        "environment": environment_record(),
    }  # fmt: skip
    path = pathlib.Path(out)
    path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
