"""tq-sglang's tests run inside SGLang's CPU build (nox -s sglang): the fast tests drive SGLang's
real pool, attention backend and batch classes on CPU tensors; the engine tests start real
SGLang engines on SmolLM2 in subprocesses (engine_job.py)."""

from __future__ import annotations

import os

# SGLang's CPU engine path (no vLLM import, no CUDA kernels); set before SGLang is imported.
os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")

import json
import pathlib
import subprocess
import sys

import pytest

JOB = pathlib.Path(__file__).with_name("engine_job.py")
PROMPTS = [
    "The capital of France is",
    "Water boils at",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]
GREEDY_TOKENS = 32
LONG_PROMPT_TOKENS = 400  # > 6 chunks of 64: chunked prefill over cached pages
PERPLEXITY_TOKENS = 512  # of the harness's prose, as tq-hf's and tq-vllm's tests score
#: tq's pages of 16 tokens (the GPU configuration); SGLang's own backend runs its CPU default.
TQ_PAGE_SIZE = 16


@pytest.fixture(scope="session")
def model_dir() -> str:
    from tq_core.cli import smollm2

    return str(smollm2.ensure_model_folder())


@pytest.fixture(scope="session")
def harness_ids(model_dir) -> list[int]:
    """The harness's text (`tq eval`'s standard-library prose) as SmolLM2 token ids."""
    from tq_core.cli import smollm2

    return smollm2.prose_token_ids(model_dir, PERPLEXITY_TOKENS)


@pytest.fixture(scope="session")
def prompt_ids(model_dir, harness_ids) -> list[list[int]]:
    """PROMPTS as SmolLM2 token ids, then a long prompt of the harness's prose."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer(p).input_ids for p in PROMPTS] + [harness_ids[:LONG_PROMPT_TOKENS]]


def run_engine(spec: dict, expect_failure: bool = False):
    """Start one SGLang engine in a fresh process with ``spec`` (engine_job.py; its ``env`` key,
    if any, adds environment variables), return its JSON (or, with ``expect_failure``, the
    output of a job that failed as it should)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env = {k: v for k, v in env.items() if not k.startswith("TQ_")} | spec.get("env", {})
    done = subprocess.run(
        [sys.executable, str(JOB), json.dumps(spec)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    marker = "== tq engine job result ==\n"
    if expect_failure:
        assert done.returncode != 0, "the engine started although it should have refused"
        return done.stdout + done.stderr
    if done.returncode != 0 or marker not in done.stdout:
        tail = (done.stdout + done.stderr)[-6000:]
        raise AssertionError(f"SGLang engine job failed (exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.split(marker, 1)[1].splitlines()[0])


class Engines:
    """Each configuration's job, run at most once per session."""

    def __init__(self, model: str, prompts: list[list[int]], harness: list[int]) -> None:
        self.model, self.prompts, self.harness, self._done = model, prompts, harness, {}

    def get(self, name: str) -> dict:
        if name not in self._done:
            self._done[name] = run_engine(self._spec(name))
        return self._done[name]

    def _spec(self, name: str) -> dict:
        # float32: on AVX2 CPUs faster than bf16, and the engines' own rounding then differs
        # less than the codec's error (docs/sglang.md).
        generate = {
            "prompt_ids": self.prompts,
            "max_tokens": GREEDY_TOKENS,
            "dtype": "float32",
            "perplexity_ids": self.harness,
        }
        tq_pages = {"page_size": TQ_PAGE_SIZE}
        specs = {
            # SGLang's own CPU attention, KV in the model's dtype (float32).
            "native": {"backend": "torch_native", **generate},
            # Capacity only: SGLang's pool at bf16 KV, the baseline users compare against.
            "native-bf16-kv": {
                "backend": "torch_native",
                "dtype": "float32",
                "engine": {"kv_cache_dtype": "bf16"},
            },
            # The long prompt prefilled in 64-token chunks, each reading the pages before it;
            # then a prefix shared by two requests (the second hits the radix cache). The prefix
            # is from the long prompt's middle, so no earlier request has cached it.
            "k8v8": {
                "backend": "tq",
                "tq": [8, 8],
                **generate,
                "engine": {**tq_pages, "chunked_prefill_size": 64},
                "shared_prefix": {
                    "prefix": self.prompts[-1][200:300],
                    "suffixes": [self.prompts[0], self.prompts[1]],
                },
            },
            "k4v4": {"backend": "tq", "tq": [4, 4], **generate, "engine": tq_pages},
            # Perplexity only: K4V4 without key centering (plain TurboQuant).
            "k4v4-plain": {
                "backend": "tq",
                "tq": [4, 4],
                "center_keys": False,
                "dtype": "float32",
                "perplexity_ids": self.harness,
                "engine": tq_pages,
            },
        }
        return {"model": self.model, **specs[name]}


@pytest.fixture(scope="session")
def engines(model_dir, prompt_ids, harness_ids) -> Engines:
    return Engines(model_dir, prompt_ids, harness_ids)
