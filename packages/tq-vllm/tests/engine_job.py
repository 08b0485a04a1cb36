"""One real vLLM engine on SmolLM2, in its own process: ``python engine_job.py SPEC_JSON``.

The tests run each engine configuration here, in a fresh process, because vLLM spawns worker
processes and keeps global state; this script prints one JSON object (after the marker line)
with what the tests assert on. SPEC keys:
  model: the SmolLM2 folder; tq: [k_bits, v_bits] or null (vLLM's own attention, KV in
  ``kv_cache_dtype``); engine: extra ``LLM(...)`` keywords; prompts: greedy-decoded texts;
  max_tokens; repeat: decode the prompts a second time (prefix-cache hits); solo_first: decode
  each prompt alone first, then all together (generations[0] and [1]); logprobs: how many
  top tokens each greedy step reports (default 2);
  prompt_ids: token-id prompts, greedy-decoded after ``prompts``; perplexity_ids: token ids
  whose teacher-forced perplexity comes from ``prompt_logprobs``; logprob_ids: token ids whose
  per-token log-probabilities (``prompt_logprobs``) are returned as they are; center_keys:
  tq's key centering (``additional_config["tq"]["center_keys"]``; absent: tq-vllm's default, off).
"""

from __future__ import annotations

import json
import math
import os
import sys

MARKER = "== tq engine job result =="


def main(spec: dict) -> dict:
    from vllm import LLM, SamplingParams

    engine = dict(
        model=spec["model"],
        dtype="float32",  # ~2x faster than bf16 on AVX2-only CPUs (oneDNN bf16 falls back)
        max_model_len=2048,
        enforce_eager=True,
        max_num_seqs=8,
        seed=0,
    )
    if spec.get("tq"):
        k_bits, v_bits = spec["tq"]
        engine["attention_backend"] = "CUSTOM"
        options = {"k_bits": k_bits, "v_bits": v_bits}
        if "center_keys" in spec:  # else tq-vllm's default (off)
            options["center_keys"] = spec["center_keys"]
        engine["additional_config"] = {"tq": options}
    engine.update(spec.get("engine", {}))
    llm = LLM(**engine)
    no_tokenizer = bool(engine.get("skip_tokenizer_init"))
    result: dict = {}
    cache_config = llm.llm_engine.vllm_config.cache_config
    result["kv_blocks"] = cache_config.num_gpu_blocks
    result["block_size"] = cache_config.block_size
    # NONE on CPU; on a GPU, whether vLLM kept full graphs for the backend (FULL_AND_PIECEWISE).
    result["cudagraph_mode"] = str(llm.llm_engine.vllm_config.compilation_config.cudagraph_mode)
    # Each step's top tokens, to tell near-ties apart from real disagreements.
    greedy = SamplingParams(
        max_tokens=spec.get("max_tokens", 32),
        temperature=0.0,
        logprobs=spec.get("logprobs", 2),
        ignore_eos=True,
        detokenize=not no_tokenizer,
    )
    prompts = list(spec.get("prompts", []))
    prompts += [{"prompt_token_ids": ids} for ids in spec.get("prompt_ids", [])]
    if prompts:
        # solo_first: each prompt alone first (generations[0]), then all together.
        batches = [[p] for p in prompts] if spec.get("solo_first") else [prompts]
        runs = 2 if spec.get("repeat") or spec.get("solo_first") else 1
        result["generations"] = []
        for run in range(runs):
            outs = [
                out
                for batch in (batches if run == 0 else [prompts])
                for out in llm.generate(batch, greedy, use_tqdm=False)
            ]
            result["generations"].append(
                [
                    {
                        "token_ids": list(o.outputs[0].token_ids),
                        "text": o.outputs[0].text,
                        "num_cached_tokens": o.num_cached_tokens or 0,
                        "top_logprobs": [
                            {str(t): lp.logprob for t, lp in step.items()}
                            for step in o.outputs[0].logprobs
                        ],
                    }
                    for o in outs
                ]
            )
    if spec.get("perplexity_ids"):
        scoring = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        prompt = {"prompt_token_ids": spec["perplexity_ids"]}
        (out,) = llm.generate([prompt], scoring, use_tqdm=False)
        nll = [
            -step[token].logprob
            for token, step in zip(out.prompt_token_ids[1:], out.prompt_logprobs[1:], strict=True)
        ]
        result["perplexity"] = math.exp(sum(nll) / len(nll))
    if spec.get("logprob_ids"):
        scoring = SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=not no_tokenizer
        )
        (out,) = llm.generate([{"prompt_token_ids": spec["logprob_ids"]}], scoring, use_tqdm=False)
        result["token_logprobs"] = [
            step[token].logprob
            for token, step in zip(out.prompt_token_ids[1:], out.prompt_logprobs[1:], strict=True)
        ]
    if spec.get("metrics"):
        result["metrics"] = {
            metric.name: metric.value
            for metric in llm.get_metrics()
            if ("spec_decode" in metric.name or "preemption" in metric.name)
            and hasattr(metric, "value")
        }
    from tq_vllm.report import attention_layers

    # One list of rows per worker (tensor-parallel rank); "layers" is rank 0's.
    result["layers_per_rank"] = llm.apply_model(attention_layers)
    result["layers"] = result["layers_per_rank"][0]
    return result


if __name__ == "__main__":  # vLLM spawns workers: the guard keeps them from re-running this
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # apply_model sends a function to the worker process, which needs pickle.
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    result = main(json.loads(sys.argv[1]))
    print(MARKER)
    print(json.dumps(result))
