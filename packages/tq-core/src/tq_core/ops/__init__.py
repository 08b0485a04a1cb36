"""The paged ops adapters call: one dispatch point for every implementation.

Today every op runs the PyTorch reference (CPU and CUDA). The Triton kernels will be selected
here on CUDA, behind the same signatures; adapters never pick an implementation themselves.
"""

from tq_core.ops.reference import decode_attention, gather_kv, prefill_attention, store

__all__ = ["decode_attention", "gather_kv", "prefill_attention", "store"]
