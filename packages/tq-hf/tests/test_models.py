"""The model families the issue names, as small random-weight configs: the cache path matches
the codec's own twin (QK-norm, plain GQA, sliding windows), and unsupported ones fail early."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from conftest import codec_and_cache_errors
from tq_core.errors import TQUnsupportedModelError
from tq_hf import TQCache

COMMON = dict(
    vocab_size=128, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
)  # fmt: skip
MODELS = {
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=128)),  # QK-norm, head_dim 128
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict()),  # head_dim 64
    "mistral": (MistralConfig, MistralForCausalLM, dict(head_dim=64, sliding_window=32)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_family_matches_the_codec_twin(name):
    config_class, model_class, extra = MODELS[name]
    torch.manual_seed(0)
    model = model_class(config_class(**COMMON, **extra)).eval()
    codec_error, cache_error, cache = codec_and_cache_errors(
        model, 64, 8, padded_row=1, k_bits=4, v_bits=4, center_keys=False
    )
    print(f"{name} K4V4: vs bf16 {codec_error:.2e}, vs codec twin {cache_error:.2e}")
    assert cache_error <= 0.1 * codec_error
    assert cache.layers[0].is_sliding == (name == "mistral")


def test_phi3_head_dim_96_fails_before_any_work():
    config = Phi3Config(**{**COMMON, "hidden_size": 384})  # 384 / 4 heads = head_dim 96
    with pytest.raises(TQUnsupportedModelError, match="head_dim=96"):
        TQCache(config)
