"""Triton ``gather_kv``: decompress one sequence's pages to a dense K/V buffer.

The "decompress only the needed pages to a scratch, then call an existing flash kernel" half of
a prefill path (the alternative to the inline-dequantizing attention kernel), and the twin of
``reference.gather_kv``. Output is in the rotated domain, like everything the cache holds, or
rotated back to the original domain in the same pass (``unrotate=True``): a dense kernel can
then take the engine's query and write the engine's output as they are, with no rotation of
either (at 8K prefill tokens, rotating the query and the output outside cost more than the
attention kernel's own lead over tq's).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tq_core.layout import CacheLayout
from tq_core.ops import triton_layout, validation
from tq_core.ops.triton_common import (
    INTERPRETED,
    load_field,
    load_vectors,
    nibble_pairs_pure,
    times_signs,
)

_BLOCK_TOKENS = 64
# register_lookup 1: 4-bit fields dequantize by byte permutes (the decode kernel's lookup 5);
# 0: one centroid-table load per code through L1 (kernel_bench.py times both).
TUNING = {"register_lookup": 1}


# seq_len unspecialized (Triton would compile a variant for 1, for multiples of 16 and for the
# rest) and block_ids at any alignment (engines pass rows of their block table, at whatever
# offset the row stride gives): one compiled kernel per field and output dtype, so
# compile_gather can compile it ahead of an engine's first prefill.
@triton.jit(do_not_specialize=["seq_len"], do_not_specialize_on_alignment=["block_ids_ptr"])
def _decompress_kernel(
    cache_ptr, block_ids_ptr, cent_ptr, signs_ptr, out_ptr, seq_len, stride_page, stride_oh,
    stride_ot, inv_sqrt_d,
    BLOCK_SIZE: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr, BITS: tl.constexpr,
    UNROTATE: tl.constexpr, REGISTER_LOOKUP: tl.constexpr, NIBBLE_PAIRS: tl.constexpr,
    P0_OFF: tl.constexpr, P0_W: tl.constexpr, P0_SHIFT: tl.constexpr,
    P1_OFF: tl.constexpr, P1_W: tl.constexpr, P1_SHIFT: tl.constexpr,
    P2_OFF: tl.constexpr, P2_W: tl.constexpr, P2_SHIFT: tl.constexpr,
    NORM_OFF: tl.constexpr, NORM_F16: tl.constexpr,
):  # fmt: skip
    kv_head = tl.program_id(1)
    pos = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = pos < seq_len
    page = tl.load(block_ids_ptr + pos // BLOCK_SIZE, mask=ok, other=0)
    page_base = page.to(tl.int64) * stride_page
    slot = kv_head * BLOCK_SIZE + pos % BLOCK_SIZE
    if REGISTER_LOOKUP:
        # 4-bit codes: both nibbles of every byte from byte permutes of the codebook held in
        # registers (the decode kernel's lookup 5), instead of one table load per code.
        raw, _, _, norms = load_field(
            cache_ptr, page_base, slot, ok, D, BITS, P0_OFF, P0_W, P1_OFF, P1_W, P2_OFF, P2_W,
            NORM_OFF, NORM_F16,
        )  # fmt: skip
        low, high = nibble_pairs_pure(raw, NIBBLE_PAIRS)  # even, odd dimensions
        vectors = tl.join(low, high).reshape(BLOCK_T, D)  # fp16 centroids
    else:
        vectors, norms = load_vectors(
            cache_ptr, cent_ptr, page_base, slot, ok, D, BITS, P0_OFF, P0_W, P0_SHIFT,
            P1_OFF, P1_W, P1_SHIFT, P2_OFF, P2_W, P2_SHIFT, NORM_OFF, NORM_F16, tl.float32,
        )  # fmt: skip
    dims = tl.arange(0, D)
    if UNROTATE and BITS == 16:
        # Raw layers hold values, not unit vectors: their range may exceed fp16's, so the
        # product is plain fp32 (rare layers; speed is no concern).
        signs = tl.load(signs_ptr + dims[None, :] * D + dims[:, None]).to(tl.float32)
        vectors = tl.dot(vectors, signs, input_precision="ieee") * inv_sqrt_d
    elif UNROTATE and REGISTER_LOOKUP:
        # R^T x = x @ S^T / sqrt(D), S the exact +-1 matrix; the norm scales the result. The
        # fp16 centroids are exact in one part: one product, where fp32 centroids take two.
        signs_t = tl.load(signs_ptr + dims[None, :] * D + dims[:, None])
        vectors = tl.dot(vectors, signs_t) * inv_sqrt_d
    elif UNROTATE:
        vectors = times_signs(vectors, signs_ptr, dims, dims, D, True) * inv_sqrt_d
    values = vectors.to(tl.float32) * norms[:, None]
    offsets = kv_head * stride_oh + pos.to(tl.int64)[:, None] * stride_ot + dims[None, :]
    tl.store(out_ptr + offsets, values.to(out_ptr.dtype.element_ty), mask=ok[:, None])


def gather_kv(
    kv_cache: torch.Tensor,
    block_ids: torch.Tensor,
    seq_len: int,
    layout: CacheLayout,
    *,
    dtype: torch.dtype = torch.float32,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    unrotate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of one sequence, ``dtype`` [num_kv_heads, seq_len, head_dim] each, rotated
    domain, or the original domain with ``unrotate=True`` (as ``reference.gather_kv``).
    ``out``: two buffers to fill (any strides whose last dimension is contiguous), e.g. views
    into a longer scratch."""
    validation.check_cache(kv_cache, layout)
    shape = (layout.num_kv_heads, seq_len, layout.head_dim)
    if out is None:
        out = tuple(torch.empty(shape, dtype=dtype, device=kv_cache.device) for _ in range(2))
    if seq_len == 0:
        return out
    grid = (triton.cdiv(seq_len, _BLOCK_TOKENS), layout.num_kv_heads)
    signs = triton_layout.sign_hadamard(layout.head_dim, layout.codec.seed, kv_cache.device)
    for tensor, buffer in (("key", out[0]), ("value", out[1])):
        table, constants = _field_arguments(layout, tensor, kv_cache.device, unrotate)
        _decompress_kernel[grid](
            kv_cache, block_ids, table, signs, buffer, seq_len, kv_cache.stride(0),
            buffer.stride(0), buffer.stride(1), layout.head_dim**-0.5, **constants,
        )  # fmt: skip
    return out


def compile_gather(
    kv_cache: torch.Tensor, layout: CacheLayout, dtype: torch.dtype, *, unrotate: bool
) -> None:
    """Compile, without launching anything, the kernels ``gather_kv`` runs for this cache into
    ``dtype`` buffers: safe inside a CUDA-graph capture, and an engine's first prefill then
    finds them compiled instead of stopping to JIT them. Kernels already compiled cost a
    lookup in Triton's own cache."""
    signs = triton_layout.sign_hadamard(layout.head_dim, layout.codec.seed, kv_cache.device)
    head_dim, num_kv = layout.head_dim, layout.num_kv_heads
    for tensor in ("key", "value"):
        table, constants = _field_arguments(layout, tensor, kv_cache.device, unrotate)
        # The output strides of either prefill path (per head, per token): multiples of 16,
        # as every real call's, so the compiled kernel is the one those calls look up.
        _decompress_kernel.warmup(
            kv_cache, torch.int32, table, signs, dtype, 1, kv_cache.stride(0),
            head_dim, num_kv * head_dim, head_dim**-0.5, grid=(1, num_kv), **constants,
        )  # fmt: skip


def _field_arguments(
    layout: CacheLayout, tensor: str, device: torch.device, unrotate: bool
) -> tuple[torch.Tensor, dict]:
    """The centroid table and the constexprs of the decompress kernel for K or V."""
    constants = triton_layout.field_constants(layout, tensor, "")
    # The permutes' immediates are the field's table codebook (Lloyd-Max or companded); a grid
    # codebook's field reads its table.
    fmt = layout.key_format if tensor == "key" else layout.value_format
    register_lookup = (
        constants["BITS"] == 4 and fmt.codebook not in triton_layout.GRID_CODEBOOKS
        and bool(TUNING["register_lookup"]) and not INTERPRETED
    )  # fmt: skip
    pairs = (
        triton_layout.nibble_group_asm(layout.head_dim, False, fmt.codebook)
        if register_lookup else ""
    )  # fmt: skip
    constants.update(
        BLOCK_SIZE=layout.block_size, D=layout.head_dim, BLOCK_T=_BLOCK_TOKENS, UNROTATE=unrotate,
        REGISTER_LOOKUP=register_lookup, NIBBLE_PAIRS=pairs,
    )  # fmt: skip
    return triton_layout.centroids(layout, tensor, device), constants
