"""tq-hf end to end on one CUDA GPU: transformers generation with TQCache against bf16 caches.

    python benchmarks/hf_generate.py --suite full --out benchmarks/results/hf-generate-h100

A random-weight Llama-3-8B-shaped model (32 query / 8 KV heads, head_dim 128, hidden 4096,
MLP 14336; 8 layers instead of 32 so it loads in seconds: every layer does the same work, so
per-step times scale with the layer count), bf16 weights. For each batch x context it prefills
the prompt, then runs greedy single-token decode steps with a manual loop (no `generate`
bookkeeping) and records: prefill ms, the median decode step (each one synchronized), decode
tokens/s, the KV bytes each cache holds (measured from its tensors) and peak GPU memory.
Caches: transformers' `DynamicCache` (bf16; grows by concatenation) and `StaticCache` (bf16;
preallocated, sdpa over its full length), and `TQCache` at K4V4 and K8V4 (Triton kernels).
Eager PyTorch, no CUDA graphs: what a transformers user gets. Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, StaticCache

from tq_core import ops
from tq_core.cli.provenance import environment_record
from tq_hf import TQCache

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DECODE_STEPS = 32
WARMUP_STEPS = 4
SUITES = {
    "smoke": [(1, 1024), (4, 4096)],
    "cpu-check": [(2, 64)],
    "full": [(1, 4096), (1, 32768), (8, 8192), (8, 32768), (32, 16384)],
}
CACHES = ["DynamicCache bf16", "StaticCache bf16", "TQCache K4V4", "TQCache K8V4"]


def llama3_8b_shaped(layers: int, tiny: bool = False) -> LlamaForCausalLM:
    """``tiny``: the same heads with hidden 1024 and a small MLP, to check the script on CPU."""
    config = LlamaConfig(
        vocab_size=32000, hidden_size=1024 if tiny else 4096,
        intermediate_size=1024 if tiny else 14336, num_hidden_layers=layers,
        num_attention_heads=32 if not tiny else 8, num_key_value_heads=8 if not tiny else 2,
        head_dim=128, max_position_embeddings=131072, rope_theta=500000.0,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    config._attn_implementation = "sdpa"
    return model


def make_cache(name: str, model, max_len: int):
    config = model.config
    config._attn_implementation = "sdpa"  # TQCache switches it to "tq"; others need sdpa
    if name == "DynamicCache bf16":
        return DynamicCache(config=config)
    if name == "StaticCache bf16":
        return StaticCache(config=config, max_cache_len=max_len)
    bits = name.split()[-1]  # "K4V4"
    k_bits, v_bits = int(bits[1]), int(bits[3])
    return TQCache(config, k_bits=k_bits, v_bits=v_bits)


def cache_bytes(cache) -> int:
    if isinstance(cache, TQCache):
        return cache.nbytes()
    return sum(
        t.numel() * t.element_size()
        for layer in cache.layers
        for t in (layer.keys, layer.values)
        if t is not None
    )


def profile_decode(model, cache_name: str, batch: int, context: int, path: pathlib.Path) -> None:
    """torch.profiler over 8 decode steps of one case: where a step's time goes (host and GPU)."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(0, model.config.vocab_size, (batch, context), device=DEVICE)
    cache = make_cache(cache_name, model, context + 16)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with torch.inference_mode():
        token = model(ids, past_key_values=cache, logits_to_keep=1).logits[:, -1:].argmax(-1)
        for step in range(10):
            if step == 2:
                profiler = profile(activities=activities)
                profiler.__enter__()
            positions = torch.full((batch, 1), context + step, device=DEVICE)
            logits = model(token, past_key_values=cache, position_ids=positions,
                           cache_position=positions[0]).logits  # fmt: skip
            token = logits[:, -1:].argmax(-1)
        _sync()
        profiler.__exit__(None, None, None)
    sort = "cuda_time_total" if DEVICE == "cuda" else "cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=40)
    by_host = profiler.key_averages().table(sort_by="cpu_time_total", row_limit=25)
    path.write_text(f"{cache_name}, batch {batch}, context {context}, 8 decode steps\n"
                    f"{table}\n\nby host time:\n{by_host}\n")  # fmt: skip
    print(table)


def run_case(model, cache_name: str, batch: int, context: int) -> dict:
    row = {"cache": cache_name, "batch": batch, "context": context}
    try:
        _empty_cache()
        weights = _memory(reset=True)
        generator = torch.Generator(device=DEVICE).manual_seed(1)
        ids = torch.randint(0, 32000, (batch, context), device=DEVICE, generator=generator)
        cache = make_cache(cache_name, model, context + WARMUP_STEPS + DECODE_STEPS + 1)
        with torch.inference_mode():
            _sync()
            start = time.perf_counter()
            logits = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            _sync()
            row["prefill_ms"] = 1000 * (time.perf_counter() - start)
            token = logits[:, -1:].argmax(-1)
            position, step_ms = context, []
            for step in range(WARMUP_STEPS + DECODE_STEPS):
                _sync()
                start = time.perf_counter()
                positions = torch.full((batch, 1), position, device=DEVICE)
                logits = model(
                    token, past_key_values=cache, use_cache=True, position_ids=positions,
                    cache_position=positions[0],
                ).logits  # fmt: skip
                token = logits[:, -1:].argmax(-1)
                _sync()
                if step >= WARMUP_STEPS:
                    step_ms.append(1000 * (time.perf_counter() - start))
                position += 1
        step_ms = statistics.median(step_ms)
        row.update(
            decode_ms_per_step=step_ms,
            decode_tokens_per_s=batch * 1000 / step_ms,
            kv_bytes=cache_bytes(cache),
            peak_gib_over_weights=(_memory(peak=True) - weights) / 2**30,
        )
        del cache, logits
    except torch.OutOfMemoryError as error:
        row["error"] = f"out of memory: {str(error)[:80]}"
    _empty_cache()
    return row


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _memory(reset: bool = False, peak: bool = False) -> int:
    if DEVICE != "cuda":
        return 0
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()


def markdown(rows: list[dict], env: dict, layers: int) -> str:
    lines = [
        f"# transformers generation, Llama-3-8B shape ({layers} layers), {env['gpu']}, "
        f"torch {env['torch']}, git {env['git_sha'][:10]}",
        "",
        "`x Dynamic` = DynamicCache bf16 decode ms per step / this one (> 1 = faster). "
        f"Decode: median of {DECODE_STEPS} greedy steps after {WARMUP_STEPS} warm-up steps.",
        "",
        "| batch | context | cache | prefill ms | decode ms/step | tokens/s | x Dynamic "
        "| KV MiB | peak GiB over weights |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        head = f"| {row['batch']} | {row['context']} | {row['cache']} "
        if "error" in row:
            lines.append(head + f"| {row['error'][:40]} | | | | | |")
            continue
        base = next(
            (r for r in rows if r["cache"] == CACHES[0] and r["batch"] == row["batch"]
             and r["context"] == row["context"] and "error" not in r),
            None,
        )  # fmt: skip
        speed = f"{base['decode_ms_per_step'] / row['decode_ms_per_step']:.2f}" if base else ""
        lines.append(
            head + f"| {row['prefill_ms']:.1f} | {row['decode_ms_per_step']:.2f} | "
            f"{row['decode_tokens_per_s']:.0f} | {speed} | {row['kv_bytes'] / 2**20:.0f} | "
            f"{row['peak_gib_over_weights']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="full")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--out", required=True, help="path prefix for .json and .md")
    parser.add_argument("--git-sha", help="the commit measured (when .git did not travel)")
    parser.add_argument(
        "--profile", metavar="CACHE", help='only profile decode of one cache, e.g. "TQCache K4V4"'
    )
    args = parser.parse_args()
    env = environment_record()
    if args.git_sha:
        env["git_sha"] = args.git_sha
    model = llama3_8b_shaped(args.layers, tiny=args.suite == "cpu-check")
    if args.profile:
        batch, context = SUITES[args.suite][0]
        run_case(model, args.profile, 1, 64)  # compile first
        profile_decode(model, args.profile, batch, context, pathlib.Path(args.out + "-profile.txt"))
        return
    layout = make_cache(CACHES[2], model, 0).layers[0].layout
    env["tq_kernels"] = ops.implementation(DEVICE, layout)
    started = time.time()
    # Compile the Triton kernels (and warm cuBLAS) outside the timed cases.
    for name in CACHES:
        run_case(model, name, 1, 64 if DEVICE == "cpu" else 256)
    rows = []
    for batch, context in SUITES[args.suite]:
        for name in CACHES:
            row = run_case(model, name, batch, context)
            print(json.dumps(row), flush=True)
            rows.append(row)
    env["seconds"] = round(time.time() - started, 1)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"environment": env, "suite": args.suite, "layers": args.layers, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(rows, env, args.layers)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
