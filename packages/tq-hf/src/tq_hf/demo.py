"""The generation half of `tq demo`: the same prompt with bf16 KV and with a TQCache.

Greedy generation with both caches, the bytes each cache holds (measured from its tensors),
the compression ratio, and the perplexity change on a short text through the same cache.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from tq_hf import eval as harness
from tq_hf.cache import TQCache

PROMPT = "The key idea of paged attention in LLM serving is"


def bf16_bytes(cache: DynamicCache) -> int:
    """Bytes the uncompressed cache's K/V take in bf16, counted from its tensors (the model may
    run in float32, as on the CPU, which would hold twice that)."""
    return 2 * sum(
        t.numel() for layer in cache.layers for t in (layer.keys, layer.values) if t is not None
    )


def compare(model, tokenizer, k_bits: int, v_bits: int, text: str, new_tokens: int = 48) -> dict:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    outputs, caches = {}, {}
    for name, cache in (
        ("bf16", DynamicCache(config=model.config)),
        (f"K{k_bits}V{v_bits}", TQCache(model.config, k_bits=k_bits, v_bits=v_bits)),
    ):
        with torch.inference_mode():
            out = model.generate(
                ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                past_key_values=cache, pad_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        outputs[name], caches[name] = out[0, ids.shape[1] :], cache
    base, tq_name = outputs["bf16"], f"K{k_bits}V{v_bits}"
    uncompressed = bf16_bytes(caches["bf16"])
    tq_bytes = caches[tq_name].nbytes()
    chunks = harness.chunked_ids(tokenizer, text, 512, 256)
    base_ppl = harness.perplexity(model, chunks, lambda: DynamicCache(config=model.config))
    tq_ppl = harness.perplexity(
        model, chunks, lambda: TQCache(model.config, k_bits=k_bits, v_bits=v_bits)
    )
    agreement = int((outputs[tq_name] == base).int().cumprod(0).sum())
    return {
        "prompt": PROMPT,
        "bf16_text": tokenizer.decode(base),
        "tq_text": tokenizer.decode(outputs[tq_name]),
        "config": tq_name,
        "tokens_held": int(caches[tq_name].get_seq_length()),
        "bf16_cache_bytes": uncompressed,
        "tq_cache_bytes": tq_bytes,
        "compression": uncompressed / tq_bytes,
        "greedy_agreement_tokens": agreement,
        "perplexity_bf16": base_ppl,
        "perplexity_tq": tq_ppl,
        "perplexity_delta_percent": 100 * (tq_ppl / base_ppl - 1),
        "perplexity_tokens": sum(c.shape[1] - 1 for c in chunks),
    }
