"""TQCache on the real SmolLM2-135M (CPU) and on small random-weight configs."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from conftest import greedy
from tq_core.errors import TQConfigError, TQUnsupportedModelError
from tq_core.ops import gather_kv
from tq_core.rotation import unrotate
from tq_hf import TQCache

PROMPT = "The key idea of paged attention in LLM serving is"


@pytest.mark.feature("decode", "prefill")
def test_k8v8_generates_the_same_64_tokens_as_uncompressed_kv(smollm2_model, restore_attention):
    tokenizer, model = smollm2_model
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    baseline = greedy(model, ids, 64)
    compressed = greedy(model, ids, 64, TQCache(model.config, k_bits=8, v_bits=8))
    assert torch.equal(compressed, baseline)


def test_k4v4_generates_and_reports_how_long_it_agrees(smollm2_model, restore_attention):
    tokenizer, model = smollm2_model
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    baseline = greedy(model, ids, 64)
    cache = TQCache(model.config, k_bits=4, v_bits=4)
    compressed = greedy(model, ids, 64, cache)
    agreement = int((compressed == baseline).int().cumprod(0).sum())
    print(f"K4V4 agrees with uncompressed KV for {agreement} of 64 greedy tokens: "
          f"{tokenizer.decode(compressed)!r}")  # fmt: skip
    assert compressed.shape == baseline.shape
    assert agreement >= 1
    assert cache.get_seq_length() == ids.shape[1] + 63  # the last token is never fed back


def test_sampling_with_k8v8_draws_what_uncompressed_kv_draws(smollm2_model, restore_attention):
    """Beam-free sampling (temperature, top-p) runs on the cache; with the same seed, K8V8's
    near-identical probabilities give the same draws as uncompressed KV."""
    tokenizer, model = smollm2_model
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids

    def sample(cache):
        torch.manual_seed(7)
        with torch.inference_mode():
            out = model.generate(
                ids, max_new_tokens=24, min_new_tokens=24, do_sample=True, temperature=0.9,
                top_p=0.95, past_key_values=cache,
            )  # fmt: skip
        return out[0, ids.shape[1] :]

    baseline = sample(None)
    assert torch.equal(sample(TQCache(model.config, k_bits=8, v_bits=8)), baseline)
    assert not torch.equal(baseline, greedy(model, ids, 24))  # it did sample


def test_other_caches_still_get_sdpa_after_tq_attention_is_on(smollm2_model, restore_attention):
    tokenizer, model = smollm2_model
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    baseline = greedy(model, ids, 16)
    TQCache(model.config)  # switches the model to "tq" attention
    assert model.config._attn_implementation == "tq"
    assert torch.equal(greedy(model, ids, 16, DynamicCache(config=model.config)), baseline)


def test_a_tqcache_refuses_to_run_under_another_attention(smollm2_model, restore_attention):
    tokenizer, model = smollm2_model
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    cache = TQCache(model.config)
    model.config._attn_implementation = "sdpa"  # e.g. set back by other code
    with pytest.raises(TQConfigError, match="attention implementation is 'sdpa'"):
        greedy(model, ids, 2, cache)


def test_pages_decode_through_tq_core_to_the_codecs_values(smollm2_model, restore_attention):
    """The bytes tq-hf writes are tq_core's format: decoding a layer's pages with tq_core gives
    exactly the codec's encode+decode of the K/V that transformers produced. Layer 0: its K/V
    come from the embeddings alone, so compression in earlier layers cannot change them."""
    tokenizer, model = smollm2_model
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        plain = model(ids, past_key_values=DynamicCache(config=model.config)).past_key_values
        cache = TQCache(model.config, k_bits=5, v_bits=3, center_keys=False)
        model(ids, past_key_values=cache)
    layer = cache.layers[0]
    keys, values = gather_kv(
        layer.kv_cache, layer.block_table[0], int(layer.lengths[0]), layer.layout
    )
    codec = layer.codec
    expected_keys = codec.decode_keys(codec.encode_keys(plain.layers[0].keys[0]))
    expected_values = codec.decode_values(codec.encode_values(plain.layers[0].values[0]))
    torch.testing.assert_close(unrotate(keys, codec.seed), expected_keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unrotate(values, codec.seed), expected_values, rtol=1e-5, atol=1e-5)


def _tiny_llama(**overrides) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=128, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=128, max_position_embeddings=8192,
        **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(torch.bfloat16).eval()


def test_k4v4_holds_under_a_3_5th_of_bf16_bytes_at_4k_context():
    """Measured from the tensors each cache holds after a 4K-token prefill (head_dim 128)."""
    model = _tiny_llama()
    ids = torch.randint(0, 128, (1, 4096), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        bf16 = model(ids, past_key_values=DynamicCache(config=model.config)).past_key_values
        tq = TQCache(model.config, k_bits=4, v_bits=4)
        model(ids, past_key_values=tq, logits_to_keep=1)
    bf16_bytes = sum(
        t.numel() * t.element_size() for layer in bf16.layers for t in (layer.keys, layer.values)
    )
    print(f"4K tokens: bf16 KV {bf16_bytes:,} B, tq K4V4 {tq.nbytes():,} B, "
          f"{bf16_bytes / tq.nbytes():.2f}x")  # fmt: skip
    assert tq.nbytes() * 3.5 <= bf16_bytes


def test_unsupported_models_and_bad_settings_fail_before_any_work():
    chunked = LlamaConfig(num_hidden_layers=2, head_dim=64)  # Llama 4's chunked attention
    chunked.layer_types = ["full_attention", "chunked_attention"]
    with pytest.raises(TQUnsupportedModelError, match="chunked_attention"):
        TQCache(chunked)
    with pytest.raises(TQUnsupportedModelError, match="head_dim"):
        TQCache(LlamaConfig(num_hidden_layers=2, hidden_size=192, num_attention_heads=2))
    with pytest.raises(TQConfigError, match="k_bits"):
        TQCache(LlamaConfig(num_hidden_layers=2, head_dim=64), k_bits=9)


def test_left_padded_batch_generates_what_each_prompt_generates_alone(
    smollm2_model, restore_attention
):
    """Padding never enters the pages: each row of a left-padded batch gives the tokens its
    prompt gives alone (K8V8, greedy), and holds only its real tokens."""
    tokenizer, model = smollm2_model
    prompts = [PROMPT, "Write one sentence about the sea:"]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    cache = TQCache(model.config, k_bits=8, v_bits=8)
    with torch.inference_mode():
        together = model.generate(
            **batch, max_new_tokens=16, min_new_tokens=16, do_sample=False,
            past_key_values=cache, pad_token_id=tokenizer.pad_token_id,
        )[:, batch.input_ids.shape[1] :]  # fmt: skip
    lengths = batch.attention_mask.sum(1)
    assert torch.equal(cache.layers[0].lengths, lengths + 15)
    for row, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        alone = greedy(model, ids, 16, TQCache(model.config, k_bits=8, v_bits=8))
        assert torch.equal(together[row], alone), f"row {row}"


def test_key_centering_keeps_attention_and_stores_keys_minus_their_mean(
    smollm2_model, restore_attention
):
    tokenizer, model = smollm2_model
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    baseline = greedy(model, ids, 32)
    cache = TQCache(model.config, k_bits=8, v_bits=8, center_keys=True)
    assert torch.equal(greedy(model, ids, 32, cache), baseline)
    with torch.inference_mode():
        plain = model(ids, past_key_values=DynamicCache(config=model.config)).past_key_values
        centered = TQCache(model.config, k_bits=4, v_bits=4, center_keys=True)
        model(ids, past_key_values=centered)
    layer, keys = centered.layers[0], plain.layers[0].keys
    mean = keys.mean(dim=2, keepdim=True)
    torch.testing.assert_close(layer.key_mean, mean)
    stored, _ = gather_kv(layer.kv_cache, layer.block_table[0], int(layer.lengths[0]), layer.layout)
    codec = layer.codec
    expected = codec.decode_keys(codec.encode_keys((keys - mean)[0]))
    torch.testing.assert_close(unrotate(stored, codec.seed), expected, rtol=1e-5, atol=1e-5)
