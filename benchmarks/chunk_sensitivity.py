"""How much a prompt's next-token log-probabilities move when it is prefilled in chunks instead
of one forward, per KV codec, with no paged cache involved (transformers, SmolLM2, CPU).

FakeQuantCache fake-quantizes K/V and attends with sdpa, so any movement comes from the codec
meeting float rounding that differs with the matmul shape, not from paging (docs/vllm.md).

  python benchmarks/chunk_sensitivity.py --out benchmarks/results/chunk-sensitivity-smollm2-cpu.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch
from transformers import DynamicCache

from tq_core.cli import smollm2
from tq_core.cli.provenance import environment_record
from tq_hf.eval import FakeQuantCache


def last_logprobs(model, ids: torch.Tensor, chunk: int, make_cache) -> torch.Tensor:
    cache = make_cache()
    with torch.inference_mode():
        for start in range(0, ids.shape[1], chunk):
            logits = model(ids[:, start : start + chunk], past_key_values=cache).logits[0, -1]
    return logits.log_softmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    tokenizer, model = smollm2.load_model(smollm2.ensure_model_folder())
    ids = torch.tensor(tokenizer(smollm2.prose_text(6000)).input_ids[: args.tokens])[None]
    config = model.config
    caches = {
        "uncompressed": lambda: DynamicCache(config=config),
        "K8V8": lambda: FakeQuantCache(config, center_keys=False, k_bits=8, v_bits=8),
        "K4V4": lambda: FakeQuantCache(config, center_keys=False, k_bits=4, v_bits=4),
    }
    rows = []
    print(f"{args.tokens} tokens, one forward vs {args.chunk}-token chunks")
    print("| KV | max abs change of a log-prob | change of the top token's |")
    for name, make in caches.items():
        whole = last_logprobs(model, ids, args.tokens, make)
        chunked = last_logprobs(model, ids, args.chunk, make)
        top = int(whole.argmax())
        row = {
            "kv": name,
            "max_abs_logprob_change": float((whole - chunked).abs().max()),
            "top_token_logprob_change": float(whole[top] - chunked[top]),
        }
        rows.append(row)
        changes = row["max_abs_logprob_change"], row["top_token_logprob_change"]
        print(f"| {name} | {changes[0]:.3g} | {changes[1]:.3g} |")
    if args.out:
        record = {**environment_record(), "model": smollm2.MODEL_NAME, "tokens": args.tokens,
                  "chunk": args.chunk, "rows": rows}  # fmt: skip
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
