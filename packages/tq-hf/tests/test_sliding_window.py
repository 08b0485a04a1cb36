"""Sliding-window layers (Gemma 2/3 style, random weights): TQCache keeps only the pages the
window can still see, and its outputs match the codec's own error at each bit width."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
)

from conftest import codec_and_cache_errors, decode_logits
from tq_hf import TQCache
from tq_hf.cache import BLOCK_SIZE

WINDOW = 32
DEVICES = [
    "cpu",  # the PyTorch reference ops
    pytest.param(  # the Triton kernels
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]
PROMPT_TOKENS = 100  # > 3 windows
DECODE_STEPS = 40


def _model(name: str, device: str):
    config_class, model_class = {
        "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM),
        "gemma2": (Gemma2Config, Gemma2ForCausalLM),  # + attention logit soft-cap
    }[name]
    config = config_class(
        vocab_size=128, hidden_size=256, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=256, sliding_window=WINDOW,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        max_position_embeddings=4096,
    )  # fmt: skip
    # Gemma 2's logit soft-cap, small enough to bend these random-weight scores (Gemma 2 uses
    # 50 on real ones). transformers' sdpa ignores it (5.19) or refuses it (5.24), so the bf16
    # and twin runs use eager attention, which applies it as tq does.
    if name == "gemma2":
        config.attn_logit_softcapping = 0.5
    config._attn_implementation = "eager" if name == "gemma2" else "sdpa"
    torch.manual_seed(0)
    return model_class(config).eval().to(device)


@pytest.mark.feature("sliding window")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["gemma3", "gemma2"])
def test_sliding_window_layers_keep_the_codecs_error_and_a_window_of_pages(name, device):
    model = _model(name, device)
    for k_bits, v_bits in [(8, 8), (4, 4)]:
        options = dict(k_bits=k_bits, v_bits=v_bits, center_keys=False)
        # The twin: the codec's encode + decode, then transformers' own sliding-window cache
        # and sdpa. Its distance from bf16 is the bit width's error.
        codec_error, cache_error, cache = codec_and_cache_errors(
            model, PROMPT_TOKENS, DECODE_STEPS, padded_row=1, **options
        )
        page_bytes = []

        def record(cache, page_bytes=page_bytes):
            page_bytes.append([layer.kv_cache.numel() for layer in cache.layers])

        decode_logits(
            model, TQCache(model.config, **options), PROMPT_TOKENS, DECODE_STEPS, padded_row=1,
            on_step=record,
        )  # fmt: skip
        print(f"{name} {device} K{k_bits}V{v_bits}: vs bf16 {codec_error:.2e}, vs codec twin "
              f"{cache_error:.2e}, page bytes per layer {page_bytes[-1]}")  # fmt: skip
        # The Triton kernels multiply fp16 operands (the CPU reference stays in float32).
        assert cache_error <= (0.1 if device == "cpu" else 0.25) * codec_error
        assert codec_error < (0.05 if k_bits == 8 else 0.5)
        layout = cache.layers[0].layout
        # A decode step sees the last W tokens: ceil(W / block) + 1 pages per row, however
        # long the context (140 tokens here); the full-attention layer keeps growing.
        ring = -(-WINDOW // BLOCK_SIZE) + 1
        for sizes in page_bytes:
            assert sizes[:3] == [2 * ring * layout.page_bytes] * 3
        context_blocks = -(-(PROMPT_TOKENS + DECODE_STEPS) // BLOCK_SIZE)
        assert page_bytes[-1][3] >= 2 * context_blocks * layout.page_bytes
