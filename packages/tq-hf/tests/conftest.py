import pytest
import torch

from tq_core.cli import smollm2


@pytest.fixture(scope="session")
def smollm2_model():
    """(tokenizer, float32 SmolLM2-135M-Instruct), converted once into ~/.cache/tq."""
    return smollm2.load_model(smollm2.ensure_model_folder())


@pytest.fixture
def restore_attention(smollm2_model):
    """TQCache switches the model to "tq" attention; put sdpa back after each test."""
    yield
    smollm2_model[1].config._attn_implementation = "sdpa"


def greedy(model, ids: torch.Tensor, tokens: int, cache=None) -> torch.Tensor:
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
            past_key_values=cache,
        )  # fmt: skip
    return out[0, ids.shape[1] :]
