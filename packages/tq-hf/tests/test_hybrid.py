"""Hybrid models (LFM2 style, random weights): tq compresses the attention layers and leaves the
convolution layers' state to transformers."""

from __future__ import annotations

import torch
from transformers import DynamicCache, Lfm2Config, Lfm2ForCausalLM

from tq_hf import TQCache
from tq_hf.cache import TQLayer
from tq_hf.eval import FakeQuantCache

LAYER_TYPES = ["conv", "full_attention", "conv", "full_attention"]


def _model() -> Lfm2ForCausalLM:
    config = Lfm2Config(
        vocab_size=128, hidden_size=256, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, layer_types=LAYER_TYPES,
        max_position_embeddings=1024,
    )  # fmt: skip
    torch.manual_seed(0)
    return Lfm2ForCausalLM(config).eval()


def _logits(model, cache, steps: int = 12) -> torch.Tensor:
    """Last-position logits of a 48-token prompt, then of single-token decode steps."""
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 128, (1, 48), generator=generator)
    tokens = torch.randint(3, 128, (1, steps), generator=generator)
    out = []
    with torch.inference_mode():
        out.append(model(prompt, past_key_values=cache).logits[:, -1])
        for step in range(steps):
            out.append(model(tokens[:, step : step + 1], past_key_values=cache).logits[:, -1])
    model.config._attn_implementation = "sdpa"
    return torch.stack(out, 1)


def test_attention_layers_are_compressed_and_conv_layers_left_to_transformers():
    model = _model()
    bf16 = _logits(model, DynamicCache(config=model.config))
    scale = bf16.abs().max()
    cache = TQCache(model.config, k_bits=4, v_bits=4, center_keys=False)
    assert [isinstance(layer, TQLayer) for layer in cache.layers] == [
        kind == "full_attention" for kind in LAYER_TYPES
    ]
    tq = _logits(model, cache)
    twin = _logits(model, FakeQuantCache(model.config, k_bits=4, v_bits=4, center_keys=False))
    codec_error = float((twin - bf16).abs().max() / scale)
    cache_error = float((tq - twin).abs().max() / scale)
    print(f"lfm2 K4V4: vs bf16 {codec_error:.2e}, vs codec twin {cache_error:.2e}")
    assert cache_error <= 0.1 * codec_error
    # The conv layers kept their state through transformers (decode steps used it) and the
    # attention layers hold every token: the 48-token prompt and 12 decode steps.
    assert cache.layers[1].lengths.tolist() == [48 + 12]
    assert cache.nbytes() == sum(cache.layers[i].nbytes() for i in (1, 3))
