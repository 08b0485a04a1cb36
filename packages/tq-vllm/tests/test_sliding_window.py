"""Sliding-window layers in real vLLM: a Gemma 3-style model (random weights, three 32-token
window layers and one full layer) served with tq gives vLLM's own attention's log-probabilities,
and the window visibly matters (the same weights without it give different ones)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from conftest import BACKEND_IMPL, run_engine

WINDOW = 32
LAYER_TYPES = ["sliding_attention"] * 3 + ["full_attention"]
TOKENS = 300  # > 9 windows


def _save_model(folder: pathlib.Path, layer_types: list[str]) -> str:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=256, hidden_size=256, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=128, sliding_window=WINDOW,
        layer_types=layer_types, max_position_embeddings=1024,
    )  # fmt: skip
    torch.manual_seed(0)  # the same weights in both folders
    Gemma3ForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def window_jobs(tmp_path_factory) -> dict:
    windowed = _save_model(tmp_path_factory.mktemp("gemma3-window"), LAYER_TYPES)
    full = _save_model(tmp_path_factory.mktemp("gemma3-full"), ["full_attention"] * 4)
    ids = torch.randint(0, 256, (TOKENS,), generator=torch.Generator().manual_seed(1)).tolist()
    common = {
        "logprob_ids": ids,
        "engine": {
            "skip_tokenizer_init": True, "max_model_len": 512, "enable_prefix_caching": False,
        },
    }  # fmt: skip
    return {
        "vllm": run_engine({"model": windowed, "tq": None, **common}),
        "k8v8": run_engine({"model": windowed, "tq": [8, 8], **common}),
        "vllm-no-window": run_engine({"model": full, "tq": None, **common}),
    }


@pytest.mark.feature("sliding window")
def test_window_layers_are_served_by_tq_with_their_window(window_jobs):
    layers = window_jobs["k8v8"]["layers"]
    assert [layer["impl"] for layer in layers] == [BACKEND_IMPL] * 4
    assert [layer["sliding_window"] for layer in layers] == [WINDOW] * 3 + [None]
    assert all(layer["nonzero_bytes"] > 0 for layer in layers)


@pytest.mark.feature("sliding window")
def test_k8v8_log_probabilities_match_vllm_and_the_window_matters(window_jobs):
    own = torch.tensor(window_jobs["vllm"]["token_logprobs"], dtype=torch.float64)
    tq = torch.tensor(window_jobs["k8v8"]["token_logprobs"], dtype=torch.float64)
    no_window = torch.tensor(window_jobs["vllm-no-window"]["token_logprobs"], dtype=torch.float64)
    tq_error = (tq - own).abs().mean().item()
    window_effect = (no_window - own)[WINDOW:].abs().mean().item()
    figures = {"mean |tq K8V8 - vLLM| nats": tq_error, "mean |no window - window|": window_effect}
    print("\n" + json.dumps(figures))
    assert window_effect > 10 * tq_error
    assert tq_error < 0.01
