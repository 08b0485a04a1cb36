"""The quality harness behind `tq eval`, on the real SmolLM2 at small sizes (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from tq_core.cli import main as tq_main
from tq_core.cli import smollm2
from tq_hf import TQCache
from tq_hf import eval as harness


def _chunks(tokenizer, tokens=256, chunk=128):
    return harness.chunked_ids(tokenizer, smollm2.prose_text(20_000), tokens, chunk)


def test_cache_path_scores_like_fake_quantize_then_sdpa(smollm2_model, restore_attention):
    """Both attend to the same encode+decode of K/V; they differ only where float rounding
    upstream flips a code on a boundary, which moves perplexity by a few tenths of a percent
    on short text (printed) and averages out over more."""
    tokenizer, model = smollm2_model
    configs = [(f"K{b}V{b}", {"k_bits": b, "v_bits": b}) for b in (8, 4)]
    rows = harness.evaluate(model, _chunks(tokenizer), configs, compare_fake_quant=True)
    assert [r.label for r in rows] == ["bf16", "K8V8", "K4V4"]
    assert rows[0].delta_percent == 0.0
    for row in rows[1:]:
        gap = abs(row.perplexity / row.fake_quant_perplexity - 1)
        print(f"{row.label}: cache {row.perplexity:.4f}, fake-quant "
              f"{row.fake_quant_perplexity:.4f}, gap {100 * gap:.3f}%")  # fmt: skip
        assert gap < 0.01
    assert abs(rows[1].delta_percent) < 1.0  # K8V8 is near-lossless
    assert rows[2].delta_percent > rows[1].delta_percent


def test_levers_cost_the_bytes_the_cache_holds_and_boundary_layers_help(
    smollm2_model, restore_attention
):
    """Bytes per token of a config with QJL keys and bf16 boundary layers, as `tq eval` reports
    them, equal what a TQCache of that config holds per token (measured from its pages); and
    keeping the first and last layer in bf16 does not hurt K3V3."""
    tokenizer, model = smollm2_model
    levers = {"k_bits": 3, "v_bits": 3, "skip_first_layers": 1, "skip_last_layers": 1}
    configs = [("K3V3", {"k_bits": 3, "v_bits": 3}), ("K3V3+first1+last1", levers),
               ("K4V4+qjl", {"k_bits": 4, "v_bits": 4, "key_qjl": True})]  # fmt: skip
    rows = harness.evaluate(model, _chunks(tokenizer), configs)
    print(harness.table(rows))
    assert rows[2].delta_percent <= rows[1].delta_percent
    for row in rows[1:]:
        cache = TQCache(model.config, center_keys=False, **row.options)
        ids = _chunks(tokenizer, tokens=128, chunk=128)[0]
        with torch.inference_mode():
            model(ids, past_key_values=cache)
        held = sum(layer.kv_cache.numel() for layer in cache.layers)  # 8 full pages per layer
        assert held == row.bytes_per_token * 128, row.label


def test_recommendation_is_the_fewest_bytes_within_budget():
    rows = [
        harness.EvalRow("bf16", 16, 16, 100, 10.0, 0.0),
        harness.EvalRow("K8V8", 8, 8, 53, 10.01, 0.1),
        harness.EvalRow("K6V4", 6, 4, 34, 10.2, 2.0),
        harness.EvalRow("K4V4", 4, 4, 28, 10.5, 5.0),
    ]
    assert harness.recommend(rows, 3.0).label == "K6V4"
    assert harness.recommend(rows, 10.0).label == "K4V4"
    assert harness.recommend(rows, 0.05) is None


def test_tq_eval_prints_a_table_and_writes_json_and_a_png(tmp_path, capsys, restore_attention):
    json_path, png_path = tmp_path / "eval.json", tmp_path / "eval.png"
    code = tq_main.main(
        ["eval", "--tokens", "256", "--chunk", "128", "--bits", "K8V8,K4V4", "--budget", "2",
         "--json", str(json_path), "--png", str(png_path)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "K4V4" in printed
    assert "recommended within +2%" in printed or "keep bf16 KV" in printed
    record = json.loads(json_path.read_text())
    assert [row["label"] for row in record["rows"]] == ["bf16", "K8V8", "K4V4"]
    assert record["tokens_scored"] == 2 * 127
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_generation_measures_both_caches(smollm2_model, restore_attention):
    from tq_hf import demo

    tokenizer, model = smollm2_model
    result = demo.compare(model, tokenizer, 4, 4, smollm2.prose_text(20_000), new_tokens=8)
    tokens = len(tokenizer(demo.PROMPT).input_ids) + 7
    assert result["tokens_held"] == tokens
    config = model.config  # K and V, 2 bytes each, every layer and KV head
    head_dim = config.hidden_size // config.num_attention_heads
    per_token = 2 * 2 * config.num_key_value_heads * head_dim * config.num_hidden_layers
    assert result["bf16_cache_bytes"] == tokens * per_token
    # ~19 tokens fill two 16-token pages, so the ratio is below K4V4's 3.56x at this length.
    assert 1.5 < result["compression"] < 3.56
    assert result["greedy_agreement_tokens"] >= 1
    assert result["perplexity_delta_percent"] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tq_attention_equals_sdpa_over_the_same_decoded_kv(smollm2_model, restore_attention, dtype):
    """Layer 0 sees the same input on both paths, so its attention output isolates the cache
    and attention path: it must match sdpa over encode+decode to the model's float rounding
    (float32: 1e-5; float64: 1e-12). Later layers drift as that rounding flips codes on
    codebook boundaries (printed, not bounded)."""
    import copy

    tokenizer, model = smollm2_model
    if dtype == torch.float64:
        model = copy.deepcopy(model).to(dtype)
    ids = _chunks(tokenizer, tokens=128, chunk=128)[0]
    outputs = {0: [], 1: [], 2: []}
    hooks = [
        model.model.layers[i].self_attn.register_forward_hook(
            lambda module, args, out, i=i: outputs[i].append(out[0].detach().clone())
        )
        for i in outputs
    ]
    try:
        with torch.inference_mode():
            model(ids, past_key_values=TQCache(model.config, k_bits=4, v_bits=4))
            model(ids, past_key_values=harness.FakeQuantCache(model.config, k_bits=4, v_bits=4))
    finally:
        for hook in hooks:
            hook.remove()
        model.config._attn_implementation = "sdpa"
    errors = {}
    for layer, (tq_out, fake_out) in outputs.items():
        errors[layer] = ((tq_out - fake_out).norm(dim=-1) / fake_out.norm(dim=-1)).max().item()
    print(f"{dtype}: per-layer attention output, tq path vs fake-quantize + sdpa, max relative "
          "error: " + ", ".join(f"layer {k} {v:.1e}" for k, v in errors.items()))  # fmt: skip
    assert errors[0] < (1e-5 if dtype == torch.float32 else 1e-12)
