"""Needle in a haystack: can the model still find one fact in a long compressed context?

A sentence holding a random passcode is hidden at several depths of a haystack of real prose
(the same text `tq eval` scores), the model is asked for it, and its answer is generated
greedily with bf16 KV and with each tq config. Perplexity averages over every token; this
checks the one thing long-context users feel first: retrieval of a single token far back.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

QUESTION = "What is the secret passcode mentioned in the text above?"
ANSWER_START = "The secret passcode is"


@dataclass
class NeedleResult:
    label: str  # "bf16" or a config label
    depth: float  # where the needle sits, as a fraction of the haystack
    context_tokens: int  # prompt length in tokens
    passcode: str
    answer: str  # what the model generated after ANSWER_START
    found: bool  # the passcode appears in the answer


def passcode_for(depth: float, seed: int = 0) -> str:
    """A 5-digit passcode, fixed per depth so every config gets the same haystack."""
    return str(random.Random(f"{seed}:{depth}").randrange(10_000, 100_000))


def needle_prompt(tokenizer, text: str, context_tokens: int, depth: float, passcode: str):
    """[1, ~context_tokens] ids: prose with the needle at ``depth``, then the question and the
    start of the answer (through the chat template when the tokenizer has one)."""
    needle = f" The secret passcode is {passcode}. Remember it. "
    haystack = tokenizer(text, add_special_tokens=False).input_ids
    overhead = len(tokenizer(needle + QUESTION + ANSWER_START).input_ids) + 32
    if len(haystack) < context_tokens - overhead:
        raise ValueError(f"the text has {len(haystack)} tokens, fewer than {context_tokens}")
    body = haystack[: max(context_tokens - overhead, 1)]
    split = int(depth * len(body))
    document = tokenizer.decode(body[:split]) + needle + tokenizer.decode(body[split:])
    question = f"{document}\n\n{QUESTION}"
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt + ANSWER_START, add_special_tokens=False).input_ids
    else:
        ids = tokenizer(f"{question}\n{ANSWER_START}").input_ids
    return torch.tensor([ids])


def needle_test(
    model,
    tokenizer,
    text: str,
    context_tokens: int,
    depths: list[float],
    configs: list[tuple[str, Callable[[], object]]],
    step: Callable[[], None] | None = None,
) -> list[NeedleResult]:
    """Greedy answers at every depth for each ``(label, make_cache)``; ``make_cache`` returns
    a fresh cache (None for transformers' default, i.e. bf16/fp32 KV)."""
    results = []
    for depth in depths:
        passcode = passcode_for(depth)
        ids = needle_prompt(tokenizer, text, context_tokens, depth, passcode)
        for label, make_cache in configs:
            cache = make_cache()
            with torch.inference_mode():
                out = model.generate(
                    ids, max_new_tokens=8, do_sample=False, past_key_values=cache,
                    pad_token_id=tokenizer.eos_token_id,
                )  # fmt: skip
            answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            results.append(
                NeedleResult(label, depth, ids.shape[1], passcode, answer, passcode in answer)
            )
            if step is not None:
                step()
    return results


def needle_table(results: list[NeedleResult]) -> str:
    """One line per config: found / missed at each depth, and the count."""
    depths = sorted({r.depth for r in results})
    labels = list(dict.fromkeys(r.label for r in results))
    width = max(6, *(len(label) for label in labels))
    header = f"{'KV':<{width}} " + " ".join(f"{f'd={d:g}':>7}" for d in depths) + "   found"
    lines = [header]
    for label in labels:
        mine = {r.depth: r for r in results if r.label == label}
        marks = " ".join(f"{'found' if mine[d].found else 'missed':>7}" for d in depths)
        hits = sum(r.found for r in mine.values())
        lines.append(f"{label:<{width}} {marks}   {hits}/{len(depths)}")
    return "\n".join(lines)


def as_json(results: list[NeedleResult]) -> list[dict]:
    return [asdict(r) for r in results]
