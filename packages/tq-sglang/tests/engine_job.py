"""One real SGLang engine on SmolLM2, in its own process: ``python engine_job.py SPEC_JSON``.

SGLang starts scheduler processes and keeps global state, so each engine configuration runs in
a fresh process; this script prints one JSON object (after the marker line). SPEC keys:
  model: the SmolLM2 folder; backend: "tq" or "torch_native"; tq: [k_bits, v_bits] (set as
  TQ_K_BITS / TQ_V_BITS, the way users choose bits); center_keys: false sets TQ_CENTER_KEYS=0
  (key centering is on by default); dtype: the model's (bfloat16 unless
  given); engine: extra ``Engine(...)`` keywords;
  prompt_ids: token-id prompts, greedy-decoded (max_tokens each, top-2 log-probabilities kept);
  perplexity_ids: token ids whose teacher-forced perplexity comes from SGLang's input-token
  log-probabilities;
  shared_prefix: {"prefix": ids, "suffixes": [ids, ids]}: prefix + each suffix in turn (the
  second reuses the radix cache), then the radix cache flushed and prefix + the last suffix again
  (a cold run).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

MARKER = "== tq engine job result =="


def _greedy(engine, prompt_ids: list[list[int]], max_tokens: int) -> list[dict]:
    params = {"temperature": 0.0, "max_new_tokens": max_tokens, "ignore_eos": True}
    outs = engine.generate(
        input_ids=prompt_ids, sampling_params=params, return_logprob=True, top_logprobs_num=2
    )
    results = []
    for out in outs:
        meta = out["meta_info"]
        tokens = [token for _, token, _ in meta["output_token_logprobs"]]
        top2 = [{str(t): lp for lp, t, _ in step} for step in meta["output_top_logprobs"]]
        results.append(
            {"token_ids": tokens, "top2": top2, "cached_tokens": meta.get("cached_tokens", 0)}
        )
    return results


def _perplexity(engine, ids: list[int]) -> float:
    out = engine.generate(
        input_ids=[ids], sampling_params={"temperature": 0.0, "max_new_tokens": 1},
        return_logprob=True, logprob_start_len=0,
    )[0]  # fmt: skip
    # The first token has no log-probability (nothing before it predicts it).
    logprobs = [lp for lp, _, _ in out["meta_info"]["input_token_logprobs"][1:]]
    return math.exp(-sum(logprobs) / len(logprobs))


def _flush(engine) -> None:
    """Empty the radix cache. SGLang refuses while its scheduler still holds the last request
    (it finishes bookkeeping after answering), so ask again until it is idle."""
    for _ in range(100):
        outcome = engine.flush_cache()
        if getattr(outcome, "success", outcome):
            return
        time.sleep(0.1)
    raise RuntimeError(f"SGLang did not flush its cache: {outcome}")


def main(spec: dict) -> dict:
    if spec.get("tq"):
        os.environ["TQ_K_BITS"], os.environ["TQ_V_BITS"] = map(str, spec["tq"])
    if spec.get("center_keys") is False:
        os.environ["TQ_CENTER_KEYS"] = "0"
    import sglang

    engine = sglang.Engine(
        model_path=spec["model"],
        device="cpu",
        dtype=spec.get("dtype", "bfloat16"),
        attention_backend=spec["backend"],
        disable_cuda_graph=True,
        grammar_backend="none",
        skip_server_warmup=True,
        mem_fraction_static=0.05,  # of host memory: ~1 GB of KV cache on a 24 GB machine
        random_seed=0,
        **spec.get("engine", {}),
    )
    try:
        info = engine.get_server_info()
        memory = info["internal_states"][0]["memory_usage"]
        result = {
            "max_total_num_tokens": info["max_total_num_tokens"],
            # The pool's own accounting (get_kv_size_bytes), in GB to 3 decimals.
            "kv_cache_gb": memory["kvcache"],
            "attention_backend": info.get("attention_backend"),
            "page_size": info.get("page_size"),
        }
        max_tokens = spec.get("max_tokens", 32)
        if spec.get("prompt_ids"):
            result["generations"] = _greedy(engine, spec["prompt_ids"], max_tokens)
        if spec.get("perplexity_ids"):
            result["perplexity"] = _perplexity(engine, spec["perplexity_ids"])
        shared = spec.get("shared_prefix")
        if shared:
            prefix, runs = shared["prefix"], []
            for suffix in shared["suffixes"]:
                runs += _greedy(engine, [prefix + suffix], max_tokens)
            _flush(engine)
            runs += _greedy(engine, [prefix + shared["suffixes"][-1]], max_tokens)
            result["shared_prefix"] = runs
    finally:
        engine.shutdown()
    return result


if __name__ == "__main__":
    outcome = main(json.loads(sys.argv[1]))
    print(MARKER)
    print(json.dumps(outcome))
