"""Hybrid models (LFM2 style, random weights): tq compresses the attention layers and leaves the
convolution layers' state to transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import Lfm2Config, Lfm2ForCausalLM

from conftest import codec_and_cache_errors
from tq_hf import eval as harness
from tq_hf.cache import TQLayer

LAYER_TYPES = ["conv", "full_attention", "conv", "full_attention"]


def _model() -> Lfm2ForCausalLM:
    config = Lfm2Config(
        vocab_size=128, hidden_size=256, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, layer_types=LAYER_TYPES,
        max_position_embeddings=1024,
    )  # fmt: skip
    torch.manual_seed(0)
    return Lfm2ForCausalLM(config).eval()


@pytest.mark.feature("hybrid models")
def test_attention_layers_are_compressed_and_conv_layers_left_to_transformers():
    model = _model()
    options = dict(k_bits=4, v_bits=4, center_keys=False)
    codec_error, cache_error, cache = codec_and_cache_errors(model, 48, 12, **options)
    print(f"lfm2 K4V4: vs bf16 {codec_error:.2e}, vs codec twin {cache_error:.2e}")
    assert [isinstance(layer, TQLayer) for layer in cache.layers] == [
        kind == "full_attention" for kind in LAYER_TYPES
    ]
    assert cache_error <= 0.1 * codec_error
    # The conv layers kept their state through transformers (decode steps used it) and the
    # attention layers hold every token: the 48-token prompt and 12 decode steps.
    assert cache.layers[1].lengths.tolist() == [48 + 12] * 2
    assert cache.nbytes() == sum(cache.layers[i].nbytes() for i in (1, 3))
    # tq eval's bytes per token count the two attention layers only (K and V, 2 KV heads of 64).
    assert harness.bytes_per_token(model.config, k_bits=16, v_bits=16) == 2 * 2 * 2 * 64 * 2
    layout = cache.layers[1].layout
    assert harness.bytes_per_token(model.config, k_bits=4, v_bits=4) == (
        2 * layout.packed_bytes_per_token
    )
