"""tq-sglang in the real SGLang engine on CPU, end to end on SmolLM2 (conftest.Engines)."""

from __future__ import annotations

import pytest

from conftest import GREEDY_TOKENS, PROMPTS, TQ_PAGE_SIZE, run_engine

#: Greedy decoding may only part where the uncompressed engine's top two tokens are this close
#: (log-probability, nats): a near-tie that any rounding can flip.
NEAR_TIE_NATS = 0.05
LABELS = [*PROMPTS, "<long prompt>"]


def agreement(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy outputs share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))


def test_k4v4_pool_holds_at_least_3_5x_the_tokens_of_bf16_per_gb(engines):
    """KV tokens per GB of SGLang's pool, as its planner provisioned them. The planner's
    budget is a share of free host memory, which moves between runs, so the engines are
    compared per GB of the pool each allocated."""
    tq, native = engines.get("k4v4"), engines.get("native-bf16-kv")
    assert tq["attention_backend"] == "tq" and tq["page_size"] == TQ_PAGE_SIZE
    per_gb = {
        name: job["max_total_num_tokens"] / job["kv_cache_gb"]
        for name, job in (("tq", tq), ("bf16", native))
    }
    ratio = per_gb["tq"] / per_gb["bf16"]
    print(
        f"\nSGLang pool: bf16 {native['max_total_num_tokens']:,} tokens in "
        f"{native['kv_cache_gb']} GB, tq K4V4 {tq['max_total_num_tokens']:,} tokens in "
        f"{tq['kv_cache_gb']} GB: {ratio:.2f}x the tokens per GB"
    )
    # SmolLM2: 3 KV heads of 64 dims, 216 bytes per token and layer vs 768 for bf16 (3.56x).
    assert ratio >= 3.5


@pytest.mark.feature("decode", "prefill", "chunked prefill")
def test_k8v8_greedy_matches_sglangs_own_attention(engines):
    """32 greedy tokens per prompt (the long one prefilled in chunks of 64): identical to
    torch_native over uncompressed KV, or parting only at a near-tie of torch_native."""
    reference = engines.get("native")["generations"]
    tq = engines.get("k8v8")["generations"]
    identical = 0
    for label, ref, got in zip(LABELS, reference, tq, strict=True):
        assert len(ref["token_ids"]) == GREEDY_TOKENS
        n = agreement(ref["token_ids"], got["token_ids"])
        if n == GREEDY_TOKENS:
            identical += 1
            continue
        step = ref["top2"][n]
        lead = step[str(ref["token_ids"][n])] - step.get(str(got["token_ids"][n]), float("-inf"))
        assert lead < NEAR_TIE_NATS, f"K8V8 parted on {label!r} at token {n} ({lead:.3f} nats)"
        print(f"\nK8V8 parts at a near-tie: {label!r} token {n} ({lead:.3f} nats)")
    assert identical >= len(reference) // 2


@pytest.mark.feature("decode")
def test_k4v4_is_coherent(engines):
    """4-bit keys and values: report how long greedy decoding agrees with uncompressed KV; the
    answer to the capital question is still Paris."""
    from transformers import AutoTokenizer

    reference = engines.get("native")["generations"]
    tq = engines.get("k4v4")["generations"]
    pairs = zip(reference, tq, strict=True)
    lengths = [agreement(r["token_ids"], t["token_ids"]) for r, t in pairs]
    print(f"\nK4V4 greedy agreement with uncompressed KV (of {GREEDY_TOKENS}): {lengths}")
    tokenizer = AutoTokenizer.from_pretrained(engines.model)
    assert "Paris" in tokenizer.decode(tq[0]["token_ids"])
    assert sum(lengths) >= GREEDY_TOKENS  # far from noise: agreement on average >= 1/6 of it


def test_perplexity_loss_is_the_codecs(engines):
    """Teacher-forced perplexity of 512 tokens of the harness's prose through SGLang: K8V8
    within 0.5% of uncompressed KV; K4V4 within 15% as plain TurboQuant, and key centering (the
    default) cuts that loss (tq-hf and tq-vllm measure the same text, docs/sglang.md)."""
    base = engines.get("native")["perplexity"]
    k8, k4 = engines.get("k8v8")["perplexity"], engines.get("k4v4")["perplexity"]
    plain = engines.get("k4v4-plain")["perplexity"]
    loss = {name: 100 * (value / base - 1) for name, value in (("k8", k8), ("k4", k4),
                                                               ("plain", plain))}  # fmt: skip
    print(
        f"\nperplexity through SGLang: uncompressed {base:.4f}, K8V8 {k8:.4f} "
        f"({loss['k8']:+.2f}%), K4V4 centered keys {k4:.4f} ({loss['k4']:+.2f}%), "
        f"K4V4 plain {plain:.4f} ({loss['plain']:+.2f}%)"
    )
    assert abs(loss["k8"]) < 0.5
    assert 0 < loss["plain"] < 15
    assert loss["k4"] < loss["plain"]


@pytest.mark.feature("prefix cache")
def test_radix_cache_hit_reads_pages_written_earlier(engines):
    """Two requests sharing a 100-token prefix: the second reuses the cached pages (as many
    whole pages as the prefix fills) and decodes the same tokens as a cold run after a flush
    (which must then find nothing cached)."""
    first, warm, cold = engines.get("k8v8")["shared_prefix"]
    assert first["cached_tokens"] == 0 and cold["cached_tokens"] == 0
    assert warm["cached_tokens"] >= 100 // TQ_PAGE_SIZE * TQ_PAGE_SIZE
    assert warm["token_ids"] == cold["token_ids"]


def test_conflicting_kv_cache_dtype_is_refused_at_launch_with_one_line(model_dir):
    """tq stores its own pages: --kv-cache-dtype fp8 with it stops the launch, in the user's
    process, with a line that says what to do (before SGLang's own checks of that dtype)."""
    spec = {"model": model_dir, "backend": "tq", "tq": [4, 4], "dtype": "float32",
            "engine": {"kv_cache_dtype": "fp8_e4m3"}}  # fmt: skip
    output = run_engine(spec, expect_failure=True)
    assert "--kv-cache-dtype fp8_e4m3 conflicts with --attention-backend tq" in output
    assert "leave --kv-cache-dtype at auto" in output
