"""The paged ops adapters call: the one place that picks an implementation.

CUDA tensors run the Triton kernels (``triton_store``, ``triton_attention``) when Triton is
installed and the layout is one they implement (not the QJL key residual); everything else runs
the PyTorch reference. ``TQ_KERNELS=reference`` forces the reference (to bisect a suspected
kernel bug); ``TQ_KERNELS=triton`` makes a fallback an error instead of a silent slowdown.
Adapters never pick an implementation themselves. ``implementation()`` says which one a call
would use, for ``tq doctor`` style reports and for tests.
"""

from __future__ import annotations

import functools
import os

import torch

from tq_core.errors import TQConfigError, TQMissingDependencyError
from tq_core.layout import CacheLayout
from tq_core.ops import reference, triton_layout
from tq_core.ops.reference import gather_kv

_CHOICES = ("auto", "reference", "triton")


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def implementation(device: torch.device | str, layout: CacheLayout) -> str:
    """ "triton" or "reference": what the ops run for tensors on ``device`` with ``layout``."""
    choice = os.environ.get("TQ_KERNELS", "auto")
    if choice not in _CHOICES:
        raise TQConfigError(f"TQ_KERNELS={choice!r}; choose one of {', '.join(_CHOICES)}")
    if choice == "reference":
        return "reference"
    on_gpu = torch.device(device).type == "cuda"
    usable = on_gpu and _triton_available() and triton_layout.supported(layout)
    if choice == "triton" and not usable:
        if not _triton_available():
            raise TQMissingDependencyError("TQ_KERNELS=triton, but Triton is not installed")
        reason = "tensors are not on a CUDA device" if not on_gpu else "the layout uses QJL keys"
        raise TQConfigError(f"TQ_KERNELS=triton, but the kernels cannot run: {reason}")
    return "triton" if usable else "reference"


def _module(device: torch.device, layout: CacheLayout, kernel_module: str, dtype: torch.dtype):
    # float64 inputs are precision checks (see validation._FLOATS): the reference computes them.
    if dtype == torch.float64 or implementation(device, layout) == "reference":
        return reference
    if kernel_module == "store":
        from tq_core.ops import triton_store

        return triton_store
    from tq_core.ops import triton_attention

    return triton_attention


def store(key, value, kv_cache, slot_mapping, layout: CacheLayout) -> None:
    """Encode new tokens' K/V into the paged cache (see ``reference.store``)."""
    _module(key.device, layout, "store", key.dtype).store(
        key, value, kv_cache, slot_mapping, layout
    )


def decode_attention(query, kv_cache, block_table, seq_lens, layout: CacheLayout, scale, **kw):
    """Decode attention over the compressed cache (see ``reference.decode_attention``)."""
    impl = _module(query.device, layout, "attention", query.dtype)
    return impl.decode_attention(query, kv_cache, block_table, seq_lens, layout, scale, **kw)


def prefill_attention(
    query, kv_cache, block_table, query_start_loc, seq_lens, layout: CacheLayout, scale, **kw
):
    """Prefill attention over the compressed cache (see ``reference.prefill_attention``)."""
    impl = _module(query.device, layout, "attention", query.dtype)
    return impl.prefill_attention(
        query, kv_cache, block_table, query_start_loc, seq_lens, layout, scale, **kw
    )


def compile_prefill(kv_cache, layout: CacheLayout, query_dtype: torch.dtype, *, rotate: bool):
    """Compile, without launching anything, the Triton kernels ``prefill_attention``'s
    "decompress" method (its default) JITs on its first call for this cache and queries of
    ``query_dtype`` (with ``rotate`` as the calls will pass it), so an engine's first request
    does not stop to compile them (vLLM's JIT monitor reports such compiles as latency spikes).
    Safe inside a CUDA-graph capture; nothing to do where the reference runs.
    """
    if implementation(kv_cache.device, layout) == "triton":
        from tq_core.ops import triton_decompress

        triton_decompress.compile_gather(kv_cache, layout, query_dtype, unrotate=rotate)


__all__ = [
    "compile_prefill", "decode_attention", "gather_kv", "implementation", "prefill_attention",
    "store",
]  # fmt: skip
