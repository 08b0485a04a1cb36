"""Which attention layers tq serves, for checks and bug reports.

``LLM(...).apply_model(tq_vllm.report.attention_layers)`` runs this in the worker process
(vLLM sends the function by reference, so it must live in an importable module) and returns one
row per attention layer: its implementation, its cache's dtype, how many cache bytes are
non-zero (whether tq wrote pages for it) and the sliding window its implementation applies.
"""

from __future__ import annotations


def attention_layers(model) -> list[dict]:
    from vllm.model_executor.layers.attention import Attention

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
                "impl": f"{impl.__module__}.{impl.__qualname__}",
                "cache_dtype": str(cache.dtype),
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
