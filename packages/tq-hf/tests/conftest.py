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


def decode_logits(model, cache, prompt_tokens: int, steps: int, padded_row: int = -1, on_step=None):
    """Last-position logits [B=2, 1 + steps, vocab] of a random prompt (row ``padded_row`` left-
    padded by 30 tokens, if any) followed by single-token decode steps; ``on_step(cache)`` runs
    after each step. Afterwards the model gets back the attention a TQCache replaced."""
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    prompt = torch.randint(3, vocab, (2, prompt_tokens), generator=generator).to(model.device)
    tokens = torch.randint(3, vocab, (2, steps), generator=generator).to(model.device)
    mask = torch.ones_like(prompt)
    if padded_row >= 0:
        mask[padded_row, :30] = 0
    logits = []
    with torch.inference_mode():
        logits.append(model(prompt, attention_mask=mask, past_key_values=cache).logits[:, -1])
        for step in range(steps):
            mask = torch.cat([mask, mask.new_ones(2, 1)], 1)
            out = model(tokens[:, step : step + 1], attention_mask=mask, past_key_values=cache)
            logits.append(out.logits[:, -1])
            if on_step is not None:
                on_step(cache)
    replaced = getattr(cache, "replaced_attention", None)
    if replaced is not None:
        model.config._attn_implementation = replaced
    return torch.stack(logits, 1)


def codec_and_cache_errors(model, prompt_tokens: int, steps: int, padded_row: int = -1, **tq):
    """(codec error, cache error, TQCache): the fake-quantize twin's logits against bf16 KV, and
    TQCache's against the twin, both as max |difference| / max |bf16 logit|."""
    from transformers import DynamicCache

    from tq_hf import TQCache
    from tq_hf.eval import FakeQuantCache

    def run(cache):
        return decode_logits(model, cache, prompt_tokens, steps, padded_row)

    bf16 = run(DynamicCache(config=model.config))
    cache = TQCache(model.config, **tq)
    compressed, twin = run(cache), run(FakeQuantCache(model.config, **tq))
    scale = bf16.abs().max()
    codec_error = float((twin - bf16).abs().max() / scale)
    return codec_error, float((compressed - twin).abs().max() / scale), cache
