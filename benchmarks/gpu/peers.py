"""Other people's TurboQuant kernels, set up to be timed on our shapes.

``benchmarks/kernel_bench.py`` imports this module and times the callables it
returns next to our own kernels. Nothing here is timed or checked for accuracy:
each ``setup_*`` builds the peer's own compressed cache from random fp16 K/V
(never zeros), a random query and every buffer the peer takes, and returns
``(fn, nbytes)``; ``fn()`` launches one step and returns nothing useful.
``nbytes`` is the data the step must move at least (see each function), for
GB/s. ``PeerUnavailable`` says why a peer can't run (not installed, shape not
supported). Stage the peers with ``benchmarks/gpu/stage.sh``; on the GPU
machine install the wheels into PYTHONPATH and carry ``.devstage/vllm_tq``.

Decode (one query token per sequence, paged cache, all sequences ``context``
long, block table a random permutation of physical blocks):

* "turboquant-vllm 1.5.0 TQ4": ``fused_paged_tq4_decode`` from
  ``turboquant_vllm/triton/fused_paged_tq4_attention.py``, called as its vLLM
  backend's fused decode path does (``vllm/tq4_backend.py``,
  ``_fused_decode_path``, enabled there by ``TQ4_USE_FUSED_PAGED=1``). Cache
  ``(num_blocks, block_size, num_kv_heads * next_pow2(2 * (D/2 + 4)))`` uint8,
  each token row ``[K nibbles | K fp32 norms | V nibbles | V fp32 norms]`` for
  all heads, then padding (the backend pads to a power of two per head), filled
  with the package's ``tq4_compress``. Rotation and codebook from its
  ``TurboQuantMSE(D, 4, seed=42)``, as the backend builds them. The wrapper
  rotates Q and the output with two small matmuls and allocates q-sized
  temporaries each call. One program per (sequence, query head): K/V of a KV
  head are read once per query head of its group (L2 may absorb it), no split
  over the context. head_dim must be a power of two (64, 128, 256 work).
  Autotuned on first call, keyed on head_dim only: setup clears that cache
  so each shape gets its own tuning on its first (warm-up) call.
* "vLLM 0.26 turboquant_4bit_nc" / "vLLM 0.26 turboquant_k8v4":
  ``triton_turboquant_decode_attention`` from
  ``vllm/v1/attention/ops/triton_turboquant_decode.py`` (stage 1 split-KV
  kernel + stage 2 reduce from ``triton_decode_attention.py``), called as
  ``TurboQuantAttentionImpl._decode_attention`` does
  (``vllm/v1/attention/backends/turboquant_attn.py``): preset constants from
  ``TurboQuantConfig.from_cache_dtype``, Pi = PiT = the orthonormal Hadamard
  matrix, centroids from ``get_centroids(D, bits)``, preallocated
  mid_o/output/lse buffers, ``max_num_kv_splits=32`` (vLLM's
  ``tq_max_kv_splits_for_cuda_graph`` default). Cache allocated
  ``(num_blocks, num_kv_heads, block_size, slot_size_aligned)`` and passed
  transposed to ``(num_blocks, block_size, num_kv_heads, slot)``, as the
  backend does; filled with vLLM's ``triton_turboquant_store``. Slot:
  4bit_nc = 4-bit Lloyd-Max K indices + fp16 norm, k8v4 = fp8 K; both 4-bit
  uniform V + fp16 scale and zero. Block size 16 (vLLM's default, which the
  backend accepts; it also takes 32/64/128: pass ``block_size``). The launcher
  computes q @ PiT (fp32) each call, a small allocation. Grid
  (batch, q heads, 32 splits), 1 warp, 4 tokens a tile: K/V are re-read per
  query head. head_dim: any for k8v4; a power of two for 4bit_nc (Hadamard).
  The vLLM files are loaded from ``.devstage/vllm_tq`` (or ``TQ_VLLM_STAGE``)
  with stand-ins for ``vllm.platforms`` and ``vllm.triton_utils``; an installed
  vllm 0.26.0 is used instead if present.

Neither decode step includes storing the new token (both backends do that in a
separate kernel before attention).

Encode / QK, fused-turboquant 0.1.0 (no paging; its HF cache path):

* "fused-turboquant 0.1.0 encode": ``triton_fused_encode`` from
  ``fused_turboquant/kernels/triton_encode.py`` on K, then on V, fp16
  ``(num_tokens, num_kv_heads, D)``, 4 bits, RHT signs and Lloyd-Max boundaries
  of ``TurboQuantMSE(D, 4)``. The wrapper converts the input to fp32 and
  allocates outputs and an fp32 scratch per call (the kernel's butterfly
  goes through that scratch in global memory). head_dim: a power of two.
* "fused-turboquant 0.1.0 QK": ``fused_qk_scores_rht`` from
  ``fused_turboquant/kernels/triton_attention.py``: fp32 scores
  ``[B, Hq, 1, context]`` from nibble-packed keys ``[B, Hkv, context, D/2]``
  and fp32 norms; Q is RHT-rotated once at setup (their caller does that with
  a separate torch FWHT). Scores only, no softmax or V. One program per (query
  head, context tile), so keys are re-read per query head. Autotuned on
  head_dim; setup clears that cache too.

All callables only launch kernels (with the small allocations noted above,
from PyTorch's caching allocator) and never synchronise with the host, so
they can be captured in a CUDA graph after a warm-up call; none needs one.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import math
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path

import torch

TQV = "turboquant-vllm 1.5.0 TQ4"
VLLM_PRESETS = {
    "vLLM 0.26 turboquant_4bit_nc": "turboquant_4bit_nc",
    "vLLM 0.26 turboquant_k8v4": "turboquant_k8v4",
}
FTQ_ENCODE = "fused-turboquant 0.1.0 encode"
FTQ_QK = "fused-turboquant 0.1.0 QK"

DTYPE = torch.float16  # query / K / V dtype handed to every peer
BLOCK_SIZE = 16  # vLLM's default KV block size; both vLLM backends accept it
VLLM_KV_SPLITS = 32  # vLLM 0.26 attention_config.tq_max_kv_splits_for_cuda_graph
FILL_CHUNK = 1 << 16  # tokens compressed at a time while filling a cache

_REPO = Path(__file__).resolve().parents[2]
VLLM_STAGE = Path(os.environ.get("TQ_VLLM_STAGE", _REPO / ".devstage" / "vllm_tq"))


class PeerUnavailable(Exception):
    """The peer can't run here or at this shape; the message says why."""


def decode_peers() -> list[str]:
    return [TQV, *VLLM_PRESETS]


def encode_peers() -> list[str]:
    return [FTQ_ENCODE]


def qk_peers() -> list[str]:
    return [FTQ_QK]


# --------------------------------------------------------------------------
# shared helpers


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _need_pow2(peer: str, head_dim: int) -> None:
    if not _pow2(head_dim):
        raise PeerUnavailable(f"{peer}: head_dim {head_dim} is not a power of two")


def _rng(device, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _randn(shape, gen, device) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(DTYPE)


def _load_file(name: str, path: Path) -> types.ModuleType:
    # Import a single source file without running its package's __init__.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _check_version(dist: str, want: str) -> None:
    try:
        have = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise PeerUnavailable(f"{dist} is not installed (pip install .whl/*.whl)") from None
    if have != want:
        raise PeerUnavailable(f"{dist} {have} installed, {want} expected")


def _paged(batch: int, context: int, block_size: int, device, gen):
    """Block table (a random permutation of the physical blocks, like a cache
    that has been in use), seq_lens, and the slot of every (sequence, position)
    in sequence-major order."""
    per_seq = math.ceil(context / block_size)
    num_blocks = batch * per_seq
    perm = torch.randperm(num_blocks, generator=gen, device=device)
    block_table = perm.view(batch, per_seq).to(torch.int32)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    pos = torch.arange(context, device=device)
    slots = block_table.long()[:, pos // block_size] * block_size + pos % block_size
    return num_blocks, block_table, seq_lens, slots.reshape(-1)


def _fill(slots: torch.Tensor, num_kv_heads: int, head_dim: int, gen, store) -> None:
    # Compress random K/V in chunks so a 32K x 32 cache never needs the whole
    # fp16 K/V (and the peers' fp32 temporaries) at once.
    device = slots.device
    for start in range(0, slots.numel(), FILL_CHUNK):
        s = slots[start : start + FILL_CHUNK]
        k = _randn((s.numel(), num_kv_heads, head_dim), gen, device)
        v = _randn((s.numel(), num_kv_heads, head_dim), gen, device)
        store(k, v, s)


# --------------------------------------------------------------------------
# turboquant-vllm 1.5.0


@functools.cache
def _tqv_modules():
    _check_version("turboquant-vllm", "1.5.0")
    try:
        from turboquant_vllm.quantizer import TurboQuantMSE  # torch + scipy only
    except ImportError as e:
        raise PeerUnavailable(f"{TQV}: import failed: {e}") from e
    # Load the two Triton files by path: turboquant_vllm.triton's __init__
    # also wires HF attention (transformers), which the kernels don't need.
    pkg = Path(importlib.util.find_spec("turboquant_vllm").origin).parent / "triton"
    compress = _load_file("_peer_tqv_compress", pkg / "tq4_compress.py")
    decode = _load_file("_peer_tqv_decode", pkg / "fused_paged_tq4_attention.py")
    return TurboQuantMSE, compress, decode


def _setup_tqv(batch, context, num_q_heads, num_kv_heads, head_dim, device, block_size):
    _need_pow2(TQV, head_dim)  # tl.arange over HEAD_DIM and HEAD_DIM // 2
    TurboQuantMSE, compress, decode = _tqv_modules()
    gen = _rng(device)
    quant = TurboQuantMSE(head_dim, 4, seed=42)  # as TQ4AttentionImpl.__init__
    rotation = quant.rotation.to(device)
    rot_t = quant.rotation.T.contiguous()
    rot_even = rot_t[:, 0::2].contiguous().to(device)
    rot_odd = rot_t[:, 1::2].contiguous().to(device)
    centroids = quant.codebook.centroids.to(device)
    boundaries = quant.codebook.boundaries.to(device)

    half = head_dim // 2
    used = num_kv_heads * 2 * (half + 4)  # [K idx | K norms | V idx | V norms]
    row = num_kv_heads * (1 << (2 * (half + 4) - 1).bit_length())  # pow2 pad/head
    num_blocks, block_table, seq_lens, slots = _paged(batch, context, block_size, device, gen)
    cache = torch.zeros(num_blocks, block_size, row, dtype=torch.uint8, device=device)
    flat = cache.view(-1, row)

    def store(k, v, s):
        parts = []
        for x in (k, v):
            packed, norms = compress.tq4_compress(x, rot_even, rot_odd, boundaries)
            parts += [packed.reshape(len(s), -1), norms.reshape(len(s), -1).view(torch.uint8)]
        flat[s, :used] = torch.cat(parts, dim=1)

    _fill(slots, num_kv_heads, head_dim, gen, store)

    q = _randn((batch, num_q_heads, head_dim), gen, device)
    out = torch.empty_like(q)
    scale = 1.0 / math.sqrt(head_dim)
    decode._fused_paged_tq4_decode_kernel.cache.clear()  # retune for this shape

    def fn():
        decode.fused_paged_tq4_decode(
            q,
            cache,
            block_table,
            seq_lens,
            centroids,
            rotation,
            num_kv_heads,
            head_dim,
            block_size,
            scale,
            out=out,
        )

    return fn, batch * context * used


# --------------------------------------------------------------------------
# vLLM 0.26.0 built-in TurboQuant


class _Platform:
    """Stand-in for vllm.platforms.current_platform: the kernels only ask
    whether this is CUDA/ROCm (to pick the fp8 format for pre-Hopper GPUs)."""

    def is_cuda_alike(self) -> bool:
        return torch.cuda.is_available()

    def is_rocm(self) -> bool:
        return torch.version.hip is not None


def _install_vllm_standins() -> None:
    import triton
    import triton.language as tl

    if not (VLLM_STAGE / "vllm/v1/attention/ops/triton_turboquant_decode.py").is_file():
        raise PeerUnavailable(
            f"vLLM TurboQuant files not found under {VLLM_STAGE}: run "
            "benchmarks/gpu/stage.sh and carry .devstage/vllm_tq"
        )
    # A package "vllm" rooted at the staged tree; its subfolders import as
    # namespace packages, so only the staged files exist below it.
    pkg = types.ModuleType("vllm")
    pkg.__path__ = [str(VLLM_STAGE / "vllm")]
    pkg._tq_standin = True
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = _Platform()
    triton_utils = types.ModuleType("vllm.triton_utils")
    triton_utils.triton, triton_utils.tl = triton, tl
    sys.modules.update(
        {"vllm": pkg, "vllm.platforms": platforms, "vllm.triton_utils": triton_utils}
    )


@functools.cache
def _vllm_modules():
    loaded = sys.modules.get("vllm")
    if loaded is None and importlib.util.find_spec("vllm") is None:
        _install_vllm_standins()
    elif not getattr(loaded, "_tq_standin", False):  # a real vllm: use it
        _check_version("vllm", "0.26.0")
    try:
        decode = importlib.import_module("vllm.v1.attention.ops.triton_turboquant_decode")
        store = importlib.import_module("vllm.v1.attention.ops.triton_turboquant_store")
        tq = "vllm.model_executor.layers.quantization.turboquant"
        config = importlib.import_module(tq + ".config")
        centroids = importlib.import_module(tq + ".centroids")
    except ImportError as e:
        raise PeerUnavailable(f"vLLM TurboQuant kernels: import failed: {e}") from e
    return decode, store, config, centroids


def _hadamard(d: int, device) -> torch.Tensor:
    # Orthonormal Sylvester Hadamard, the rotation vLLM's backend uses (Pi = PiT).
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(d)).to(device)


def _setup_vllm(peer, batch, context, num_q_heads, num_kv_heads, head_dim, device, block_size):
    decode, store_mod, config, centroid_mod = _vllm_modules()
    cfg = config.TurboQuantConfig.from_cache_dtype(VLLM_PRESETS[peer], head_dim)
    if not cfg.key_fp8:
        _need_pow2(peer, head_dim)  # Sylvester Hadamard rotation
    gen = _rng(device)
    pi = _hadamard(head_dim, device)
    centroids = centroid_mod.get_centroids(head_dim, cfg.centroid_bits).to(device, torch.float32)
    c = centroids.sort().values
    midpoints = (c[:-1] + c[1:]) / 2  # store's bucket edges, as _ensure_on_device

    num_blocks, block_table, seq_lens, slots = _paged(batch, context, block_size, device, gen)
    shape = (num_blocks, num_kv_heads, block_size, cfg.slot_size_aligned)
    kv_cache = torch.zeros(shape, dtype=torch.uint8, device=device).transpose(1, 2)
    quant = dict(
        mse_bits=cfg.key_mse_bits,
        key_packed_size=cfg.key_packed_size,
        value_quant_bits=cfg.effective_value_quant_bits,
        key_fp8=cfg.key_fp8,
    )

    def store(k, v, s):
        store_mod.triton_turboquant_store(k, v, kv_cache, s, pi, midpoints, **quant)

    _fill(slots, num_kv_heads, head_dim, gen, store)

    q = _randn((batch, num_q_heads, head_dim), gen, device)
    f32 = dict(dtype=torch.float32, device=device)
    mid_o = torch.empty(batch, num_q_heads, VLLM_KV_SPLITS, head_dim + 1, **f32)
    out = torch.empty(batch, num_q_heads, head_dim, dtype=DTYPE, device=device)
    lse = torch.empty(batch, num_q_heads, **f32)

    def fn():
        decode.triton_turboquant_decode_attention(
            query=q,
            kv_cache=kv_cache,
            block_table=block_table,
            seq_lens=seq_lens,
            Pi=pi,
            centroids=centroids,
            scale=1.0 / math.sqrt(head_dim),
            norm_correction=cfg.norm_correction,
            PiT=pi,
            mid_o_buf=mid_o,
            output_buf=out,
            lse_buf=lse,
            max_num_kv_splits=VLLM_KV_SPLITS,
            **quant,
        )

    return fn, batch * context * num_kv_heads * cfg.slot_size


# --------------------------------------------------------------------------
# public: decode


def setup_decode(
    peer: str,
    batch: int,
    context: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    device,
    block_size: int = BLOCK_SIZE,
) -> tuple[Callable[[], None], int]:
    """fn() = one decode step; int = bytes of compressed K/V it must read
    (each KV head's data once, padding not counted)."""
    if num_q_heads % num_kv_heads:
        raise PeerUnavailable(f"{peer}: {num_q_heads} q heads not a multiple of {num_kv_heads}")
    if peer == TQV:
        return _setup_tqv(batch, context, num_q_heads, num_kv_heads, head_dim, device, block_size)
    if peer in VLLM_PRESETS:
        return _setup_vllm(
            peer, batch, context, num_q_heads, num_kv_heads, head_dim, device, block_size
        )
    raise PeerUnavailable(f"unknown decode peer {peer!r}")


def setup_decode_inputs_bytes(
    peer: str, batch: int, context: int, num_kv_heads: int, head_dim: int
) -> int:
    """Bytes of compressed K/V one decode step reads (same as setup_decode's)."""
    if peer == TQV:
        return batch * context * num_kv_heads * 2 * (head_dim // 2 + 4)
    if peer in VLLM_PRESETS:
        _, _, config, _ = _vllm_modules()
        cfg = config.TurboQuantConfig.from_cache_dtype(VLLM_PRESETS[peer], head_dim)
        return batch * context * num_kv_heads * cfg.slot_size
    raise PeerUnavailable(f"unknown decode peer {peer!r}")


# --------------------------------------------------------------------------
# fused-turboquant 0.1.0: encode and QK scores


@functools.cache
def _ftq_modules():
    _check_version("fused-turboquant", "0.1.0")
    try:
        from fused_turboquant.core.hadamard import randomized_hadamard
        from fused_turboquant.core.quantizer import TurboQuantMSE
        from fused_turboquant.kernels import triton_attention, triton_encode
    except ImportError as e:
        raise PeerUnavailable(f"fused-turboquant: import failed: {e}") from e
    if not (triton_encode.HAS_TRITON and triton_attention.HAS_TRITON):
        raise PeerUnavailable("fused-turboquant: Triton not importable")
    return TurboQuantMSE, randomized_hadamard, triton_encode, triton_attention


def _ftq_quantizer(peer: str, head_dim: int, device):
    _need_pow2(peer, head_dim)  # TurboQuantMSE and the FWHT require it
    TurboQuantMSE, rht, encode, attention = _ftq_modules()
    return TurboQuantMSE(head_dim, bits=4, device=device), rht, encode, attention


def setup_encode(
    peer: str, num_tokens: int, num_kv_heads: int, head_dim: int, device
) -> tuple[Callable[[], None], int]:
    """fn() compresses K and V of num_tokens tokens; int = fp16 K/V read +
    packed indices and fp32 norms written (the fp32 copy and scratch the
    wrapper also uses are not counted)."""
    if peer != FTQ_ENCODE:
        raise PeerUnavailable(f"unknown encode peer {peer!r}")
    tq, _, encode, _ = _ftq_quantizer(peer, head_dim, device)
    gen = _rng(device)
    k = _randn((num_tokens, num_kv_heads, head_dim), gen, device)
    v = _randn((num_tokens, num_kv_heads, head_dim), gen, device)
    signs, boundaries = tq.rotation.signs, tq.quantizer.boundaries

    def fn():
        encode.triton_fused_encode(k, signs, boundaries, 4)
        encode.triton_fused_encode(v, signs, boundaries, 4)

    vectors = 2 * num_tokens * num_kv_heads
    return fn, vectors * (head_dim * 2 + head_dim // 2 + 4)


def setup_qk(
    peer: str,
    batch: int,
    context: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    device,
) -> tuple[Callable[[], None], int]:
    """fn() computes one query token's scores against all keys; int = packed
    keys + norms read (once per KV head) + fp32 scores written."""
    if peer != FTQ_QK:
        raise PeerUnavailable(f"unknown QK peer {peer!r}")
    if num_q_heads % num_kv_heads:
        raise PeerUnavailable(f"{peer}: {num_q_heads} q heads not a multiple of {num_kv_heads}")
    tq, rht, _, attention = _ftq_quantizer(peer, head_dim, device)
    gen = _rng(device)
    packed, norms = [], []
    for _ in range(batch):  # one sequence at a time: encode makes fp32 copies
        c = tq.encode(_randn((num_kv_heads, context, head_dim), gen, device))
        packed.append(c.indices)
        norms.append(c.norms)
    packed, norms = torch.stack(packed), torch.stack(norms)
    q = _randn((batch, num_q_heads, 1, head_dim), gen, device)
    q_rot = rht(q.float(), tq.rotation.signs)  # as their decode path, once
    levels = tq.quantizer.levels
    scale = 1.0 / math.sqrt(head_dim)
    attention._fused_qk_scores_kernel.cache.clear()  # retune for this shape

    def fn():
        attention.fused_qk_scores_rht(q_rot, packed, norms, levels, scale, bits=4)

    nbytes = packed.numel() + norms.numel() * 4 + batch * num_q_heads * context * 4
    return fn, nbytes
