"""Which attention layers tq serves, for checks and bug reports.

``LLM(...).apply_model(tq_vllm.report.attention_layers)`` runs this in the worker process
(vLLM sends the function by reference, so it must live in an importable module) in every worker
(one per tensor-parallel rank) and returns, per worker, one row per attention layer: the rank,
the layer's implementation, its KV heads on this rank, its cache's dtype, shape and bytes, how
many cache bytes are non-zero (whether tq wrote pages for it) and the sliding window its
implementation applies.
"""

from __future__ import annotations


def attention_layers(model) -> list[dict]:
    from vllm.distributed import get_tensor_model_parallel_rank
    from vllm.model_executor.layers.attention import Attention

    rank = get_tensor_model_parallel_rank()
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, Attention):
            continue
        cache = module.kv_cache
        cache = cache[0] if isinstance(cache, list | tuple) else cache
        impl = type(module.impl)
        rows.append(
            {
                "name": name,
                "tp_rank": rank,
                "impl": f"{impl.__module__}.{impl.__qualname__}",
                "num_kv_heads": module.num_kv_heads,
                "head_size": module.head_size,
                "cache_dtype": str(cache.dtype),
                "cache_shape": list(cache.shape),
                "cache_bytes": cache.numel() * cache.element_size(),
                "nonzero_bytes": _nonzero_bytes(cache),
                "sliding_window": getattr(module.impl, "sliding_window", None),
            }
        )
    return rows


def _nonzero_bytes(cache, chunk: int = 1 << 26) -> int:
    """Non-zero bytes of a (possibly many-GB) cache, counted in chunks so that the count
    itself needs little memory."""
    flat = cache.reshape(-1)
    return sum(int(flat[i : i + chunk].count_nonzero()) for i in range(0, flat.numel(), chunk))
