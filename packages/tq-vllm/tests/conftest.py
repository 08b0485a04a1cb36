"""Real vLLM on CPU: each engine configuration runs once per session in its own process
(engine_job.py) and the tests assert on what it returns."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from tq_core.cli import smollm2

JOB = pathlib.Path(__file__).with_name("engine_job.py")
PROMPTS = [
    "The capital of France is",
    "Water boils at",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]
GREEDY_TOKENS = 32
#: The class a layer's ``impl`` has when tq serves it (tq_vllm.report rows name it so).
BACKEND_IMPL = "tq_vllm.backend.TQAttentionImpl"
LONG_PROMPT_TOKENS = 400  # > 3 CPU blocks of 128: chunked prefill and prefix-cache hits
PERPLEXITY_TOKENS = 512
PREEMPTION_PROMPT_TOKENS = 120  # a block of 128 holds the prompt, not 32 more tokens


@pytest.fixture(scope="session")
def model_dir() -> str:
    return str(smollm2.ensure_model_folder())


@pytest.fixture(scope="session")
def harness_ids(model_dir) -> list[int]:
    """The harness's text (`tq eval`'s standard-library prose) as SmolLM2 token ids."""
    return smollm2.prose_token_ids(model_dir, PERPLEXITY_TOKENS)


def _root_cause(output: str, width: int = 4000) -> str:
    """The first traceback of a failed job (a worker's, usually the root cause: the engine's own
    ends in "See root cause above") and the output's tail."""
    first = output.find("Traceback (most recent call last)")
    head = output[first : first + width] if first >= 0 else ""
    return f"{head}\n[...]\n{output[-width:]}" if head else output[-width:]


def run_engine(spec: dict) -> dict:
    """Start one vLLM engine in a fresh process with ``spec`` (engine_job.py; its ``env`` key,
    if any, adds environment variables), return its JSON."""
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", **spec.get("env", {}))
    done = subprocess.run(
        [sys.executable, str(JOB), json.dumps(spec)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    marker = "== tq engine job result ==\n"
    if done.returncode != 0 or marker not in done.stdout:
        cause = _root_cause(done.stdout + done.stderr)
        raise AssertionError(f"vLLM engine job failed (exit {done.returncode}):\n{cause}")
    return json.loads(done.stdout.split(marker, 1)[1].splitlines()[0])


def parting(reference: dict, got: dict) -> tuple[int, float]:
    """Where greedy output ``got`` first leaves ``reference`` (engine_job generations) and by how
    much the reference's own choice led ``got``'s token there (nats; inf when ``got``'s token
    is not among the reference's reported top tokens). (length, 0.0) when they agree."""
    ref_ids, got_ids = reference["token_ids"], got["token_ids"]
    pairs = enumerate(zip(ref_ids, got_ids, strict=False))
    n = next((i for i, (a, b) in pairs if a != b), min(len(ref_ids), len(got_ids)))
    if n == len(ref_ids):
        return n, 0.0
    step = reference["top_logprobs"][n]
    other = step.get(str(got_ids[n]))
    return n, step[str(ref_ids[n])] - other if other is not None else float("inf")


def save_random_llama(
    folder: pathlib.Path,
    *,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    vocab: int = 512,
    initializer_range: float = 0.02,
    lm_head_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> str:
    """Save a random-weight Llama-style model (seed 0) that vLLM loads like any other folder:
    the engine tests' stand-in where SmolLM2's head counts do not fit (tensor parallelism) or
    the model cannot travel (the GPU machine has no model hub)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=heads * head_dim, intermediate_size=2 * heads * head_dim,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, max_position_embeddings=4096, initializer_range=initializer_range,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(lm_head_scale)
    model.to(dtype).save_pretrained(folder)
    return str(folder)


class Engines:
    """Each configuration's job, run at most once per session."""

    def __init__(self, model: str, harness: list[int]) -> None:
        self.model, self.harness, self._done = model, harness, {}

    def get(self, name: str) -> dict:
        if name not in self._done:
            self._done[name] = run_engine(self._spec(name))
        return self._done[name]

    def _spec(self, name: str) -> dict:
        long_prompt = self.harness[:LONG_PROMPT_TOKENS]
        generate = {
            "prompts": PROMPTS,
            "prompt_ids": [long_prompt],
            "max_tokens": GREEDY_TOKENS,
            "perplexity_ids": self.harness,
            # Cold runs: every token's K/V computed, not read from a cache.
            "engine": {"enable_prefix_caching": False},
        }
        specs = {
            # vLLM's own CPU attention, KV in the model's dtype (float32).
            "vllm": {"tq": None, **generate},
            # Capacity only: vLLM's CPU attention misreads a bf16 cache under a float32 model,
            # so this engine's text is not used.
            "vllm-bf16-kv": {"tq": None, "engine": {"kv_cache_dtype": "bfloat16"}},
            "k8v8": {"tq": [8, 8], **generate},
            # Plain TurboQuant (centering off, tq-vllm's default): its perplexity is compared
            # with tq-hf's plain TQCache, and the centered engine's with it.
            "k4v4": {"tq": [4, 4], "center_keys": False, **generate},
            # Key centering: the perplexity text is the engine's first request, so its keys
            # give the layer means, as the whole text's do in tq-hf's single forward.
            "k4v4-centered": {
                "tq": [4, 4],
                "center_keys": True,
                "perplexity_ids": self.harness,
                "engine": {"enable_prefix_caching": False},
            },
            # The long prompt prefilled in 64-token chunks, twice: the second run's first
            # blocks come from the prefix cache. K8V8: at 4 bits, float rounding that differs
            # with the chunk shape flips codes on codebook boundaries and moves the logits by
            # up to ~0.3 nats without any cache involved (docs/vllm.md), so exact tokens are
            # asserted where the codec is fine enough for them to be a test of the cache.
            "k8v8-chunked": {
                "tq": [8, 8],
                "prompt_ids": [long_prompt],
                "max_tokens": GREEDY_TOKENS,
                "repeat": True,
                "engine": {
                    "enable_prefix_caching": True,
                    "enable_chunked_prefill": True,
                    "max_num_batched_tokens": 64,
                },
            },
            # Preemption: four prompts of 120 tokens, each alone in a KV cache of 6 blocks of
            # 128 tokens, then together: each needs a second block 8 tokens in, 2 blocks are
            # free, so vLLM preempts requests (freeing their pages) and recomputes them later.
            "k8v8-preempted": {
                "tq": [8, 8],
                "prompt_ids": [
                    self.harness[i * PREEMPTION_PROMPT_TOKENS : (i + 1) * PREEMPTION_PROMPT_TOKENS]
                    for i in range(4)
                ],
                "max_tokens": GREEDY_TOKENS,
                "solo_first": True,
                "metrics": True,
                "engine": {
                    "enable_prefix_caching": False,
                    "num_gpu_blocks_override": 6,
                    "block_size": 128,
                    "max_model_len": 512,
                    "disable_log_stats": False,
                },
            },
            # Speculative decoding (n-gram drafts from the prompt, no draft model): vLLM verifies
            # 3 drafted tokens per step, which tq runs as a 4-token decode.
            "k8v8-ngram": {
                "tq": [8, 8],
                **generate,
                "perplexity_ids": None,
                "metrics": True,
                "engine": {
                    "enable_prefix_caching": False,
                    "disable_log_stats": False,
                    "speculative_config": {
                        "method": "ngram",
                        "num_speculative_tokens": 3,
                        "prompt_lookup_min": 2,
                        "prompt_lookup_max": 4,
                    },
                },
            },
        }
        return {"model": self.model, **specs[name]}


@pytest.fixture(scope="session")
def engines(model_dir, harness_ids) -> Engines:
    return Engines(model_dir, harness_ids)


@pytest.fixture(scope="session")
def smollm2_hf(model_dir):
    """(tokenizer, float32 SmolLM2) in transformers, for tq-hf's figures."""
    return smollm2.load_model(model_dir)
