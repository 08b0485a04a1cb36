"""Offline vLLM throughput and KV capacity, one KV configuration per process.

A Llama-3-8B-shaped model with dummy (random) weights, prompts as random token ids, no
tokenizer: what is measured is the engine and its attention, not the text. Each call starts one
engine, reads vLLM's KV capacity, warms up, then runs each scenario INPUTxOUTPUTxREQUESTS with
enough requests to fill the cache, and writes ``<out>/vllm-<config>.json``.

  python benchmarks/vllm_throughput.py --config tq-k4v4 --out DIR --git-sha SHA
  python benchmarks/vllm_throughput.py --table DIR      # every JSON of DIR as one table

``--tensor-parallel-size 2`` splits the model over two GPUs (KV capacity is then each rank's).
``--profile INPUTxOUTPUTxREQUESTS`` runs one more scenario under torch's profiler (the engine
core then runs in this process) and records the GPU time of each kernel, grouped (attention,
KV writes, GEMMs, ...): where a configuration's time goes, side by side with bf16's.

Configs: bf16 (vLLM's own attention, KV in bf16), fp8 (kv_cache_dtype fp8), vllm-tq-4bit-nc and
vllm-tq-k8v4 (vLLM's built-in TurboQuant), tq-kKvV (the tq plugin, e.g. tq-k4v4).
``--label NAME`` names the row and its file (a tq config run twice under different
``TQ_TRITON_TUNING`` launch settings, which reach vLLM's workers through the environment). Each
JSON records the host and the GPU it ran on: rows from one host were measured on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import sys
import time

LLAMA3_8B_SHAPE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
}
VLLM_KV_DTYPES = {
    "bf16": "auto",
    "fp8": "fp8",
    "vllm-tq-4bit-nc": "turboquant_4bit_nc",
    "vllm-tq-k8v4": "turboquant_k8v4",
}
# Enough requests to fill the cache, as the issue asks: on an H200 (bf16 891,712 KV tokens at
# 0.90 of its memory) 1024 requests of 1024/512 are 1.8x what bf16's cache holds at once and 256
# of 8192/512 2.5x, so a configuration that holds more serves more at once (tq K4V4 holds all
# 256). The earlier 256 and 64 (sized for an H100's 444,848 tokens) fit bf16's H200 cache whole:
# capacity bought nothing there.
DEFAULT_SCENARIOS = "1024x512x1024,8192x512x256"
# Kernel name patterns of the profile's groups, first match wins.
KERNEL_GROUPS = (
    ("tq decode attention", r"_attention_kernel|_merge_splits_kernel"),
    ("tq decompress (prefill)", r"_decompress_kernel"),
    ("tq store", r"_store_kernel"),
    ("KV write (vLLM)", r"reshape_and_cache|concat_and_cache"),
    ("flash attention", r"flash|Flash|fmha|attention"),
    ("GEMM", r"gemm|Gemm|nvjet|cutlass|xmma|matmul"),
)


def engine_options(config: str) -> dict:
    if config in VLLM_KV_DTYPES:
        return {"kv_cache_dtype": VLLM_KV_DTYPES[config]}
    match = re.fullmatch(r"tq-k(\d+)v(\d+)", config)
    if match is None:
        raise SystemExit(f"unknown config {config!r}: bf16, fp8, vllm-tq-*, or tq-kKvV")
    tq = {"k_bits": int(match.group(1)), "v_bits": int(match.group(2))}
    return {"attention_backend": "CUSTOM", "additional_config": {"tq": tq}}


def measure(args) -> dict:
    import numpy as np
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    model_dir = pathlib.Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(LLAMA3_8B_SHAPE, indent=1))
    result = {
        "config": args.config,
        "label": args.label or args.config,
        # Which machine and GPU: configurations measured side by side on one host's GPUs.
        "host": platform.node(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "tq_triton_tuning": os.environ.get("TQ_TRITON_TUNING"),
        "git_sha": args.git_sha,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vllm": vllm.__version__,
        "model": "Llama-3-8B shape, dummy weights, bf16",
        "max_model_len": args.max_model_len,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "enforce_eager": args.enforce_eager,
        "tensor_parallel_size": args.tensor_parallel_size,
        "scenarios": [],
    }
    started = time.perf_counter()
    llm = LLM(
        model=str(model_dir), skip_tokenizer_init=True, load_format="dummy", dtype="bfloat16",
        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=False, enforce_eager=args.enforce_eager, seed=0,
        tensor_parallel_size=args.tensor_parallel_size, **engine_options(args.config),
    )  # fmt: skip
    result["engine_start_s"] = round(time.perf_counter() - started, 1)
    cache = llm.llm_engine.vllm_config.cache_config
    result["kv_blocks"], result["block_size"] = cache.num_gpu_blocks, cache.block_size
    result["kv_tokens"] = cache.num_gpu_blocks * cache.block_size
    # How many requests run at once at most, and the largest batch replayed in a CUDA graph.
    scheduler = llm.llm_engine.vllm_config.scheduler_config
    compilation = llm.llm_engine.vllm_config.compilation_config
    result["max_num_seqs"] = getattr(scheduler, "max_num_seqs", None)
    result["max_cudagraph_capture_size"] = getattr(compilation, "max_cudagraph_capture_size", None)
    print("ENGINE", json.dumps(result), flush=True)
    rng = np.random.default_rng(0)

    def run(requests: int, prompt_len: int, output_len: int) -> tuple[float, int, int]:
        prompts = [
            {"prompt_token_ids": rng.integers(1000, 120000, size=prompt_len).tolist()}
            for _ in range(requests)
        ]
        params = SamplingParams(
            temperature=1.0, max_tokens=output_len, ignore_eos=True, detokenize=False
        )
        begin = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - begin
        generated = sum(len(o.outputs[0].token_ids) for o in outputs)
        if not all(o.outputs[0].token_ids for o in outputs):
            raise RuntimeError("a request generated no token")
        return elapsed, generated, requests * prompt_len

    def scenario_row(scenario: str) -> dict:
        prompt_len, output_len, requests = (int(x) for x in scenario.split("x"))
        elapsed, generated, prompt_tokens = run(requests, prompt_len, output_len)
        return {
            "input_len": prompt_len, "output_len": output_len, "requests": requests,
            "elapsed_s": round(elapsed, 2), "generated_tokens": generated,
            "gen_tok_per_s": round(generated / elapsed, 1),
            "total_tok_per_s": round((generated + prompt_tokens) / elapsed, 1),
        }  # fmt: skip

    run(8, 256, 16)  # warm-up: kernels compiled, allocator settled
    for scenario in args.scenarios.split(",") if args.scenarios else []:
        row = scenario_row(scenario)
        result["scenarios"].append(row)
        print("SCENARIO", json.dumps(row), flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            row = scenario_row(args.profile)
        result["profile"] = {"scenario": row, **kernel_times(profiler)}
        print("PROFILE", json.dumps(result["profile"]), flush=True)
    if args.config.startswith("tq-"):  # after the runs: tq's pages hold what they wrote
        from tq_vllm.report import attention_layers

        # One list per tensor-parallel rank; counted over all ranks.
        layers = [row for rank in llm.apply_model(attention_layers) for row in rank]
        result["attention_layers"] = len(layers)
        result["tq_layers_with_pages"] = sum(
            row["impl"].startswith("tq_vllm.") and row["nonzero_bytes"] > 0 for row in layers
        )
        print(
            "LAYERS",
            json.dumps({k: result[k] for k in ("attention_layers", "tq_layers_with_pages")}),
        )
    return result


def kernel_times(profiler) -> dict:
    """GPU milliseconds per kernel group (KERNEL_GROUPS) and the 25 costliest kernels."""
    kernels = {}
    for event in profiler.key_averages():
        device_us = getattr(event, "self_device_time_total", 0) or 0
        if device_us > 0:
            kernels[event.key] = kernels.get(event.key, 0.0) + device_us / 1000
    groups = {name: 0.0 for name, _ in KERNEL_GROUPS} | {"other": 0.0}
    for kernel, ms in kernels.items():
        name = next((n for n, p in KERNEL_GROUPS if re.search(p, kernel)), "other")
        groups[name] += ms
    top = sorted(kernels.items(), key=lambda item: -item[1])[:25]
    return {
        "gpu_ms_total": round(sum(kernels.values()), 1),
        "groups_ms": {name: round(ms, 1) for name, ms in groups.items()},
        "top_kernels_ms": [[kernel[:160], round(ms, 1)] for kernel, ms in top],
    }


# vLLM's built-in TurboQuant at the bits of a tq config: the comparison the issue asks for.
SAME_BITS_BUILT_IN = {"tq-k4v4": "vllm-tq-4bit-nc", "tq-k8v4": "vllm-tq-k8v4"}
# Table order: the baselines users have, vLLM's TurboQuant, then tq.
_ROW_ORDER = ("bf16", "fp8", "vllm-tq-", "tq-")


def _row_rank(row: dict) -> tuple:
    label = row.get("label", row["config"])
    rank = next(i for i, prefix in enumerate((*_ROW_ORDER, "")) if label.startswith(prefix))
    return rank, label


def _scenario_key(scenario: dict) -> tuple:
    return scenario["input_len"], scenario["output_len"], scenario["requests"]


def table(folder: pathlib.Path) -> str:
    rows = [json.loads(p.read_text()) for p in folder.glob("**/vllm-*.json")]
    if not rows:
        return f"no vllm-*.json in {folder}"
    rows.sort(key=_row_rank)
    by_label = {r.get("label", r["config"]): r for r in rows}
    base = by_label.get("bf16")
    # Columns: bf16's scenarios (else the first row's); a row that ran fewer leaves cells empty.
    columns = [_scenario_key(s) for s in (base or rows[0])["scenarios"]]
    head = "| KV | KV tokens | vs bf16 | " + " | ".join(
        f"gen tok/s {i}/{o} x{n} | vs bf16" for i, o, n in columns
    )
    head += " | vs vLLM TurboQuant, same bits"
    lines = [head + " |", "|" + "---|" * (4 + 2 * len(columns))]

    def rates(row: dict | None) -> list:
        found = {_scenario_key(s): s["gen_tok_per_s"] for s in (row or {}).get("scenarios", [])}
        return [found.get(key) for key in columns]

    for r in rows:
        cells = [r.get("label", r["config"]), f"{r['kv_tokens']:,}"]
        cells.append(f"{r['kv_tokens'] / base['kv_tokens']:.2f}x" if base else "")
        for mine, ref in zip(rates(r), rates(base), strict=True):
            cells.append(f"{mine:,.0f}" if mine else "")
            cells.append(f"{mine / ref:.2f}x" if mine and ref else "")
        built_in = by_label.get(SAME_BITS_BUILT_IN.get(r["config"], ""))
        ratios = [
            f"{mine / theirs:.2f}x" if mine and theirs else "-"
            for mine, theirs in zip(rates(r), rates(built_in), strict=True)
        ]
        cells.append(f"{' / '.join(ratios)} (vs {built_in['config']})" if built_in else "")
        lines.append("| " + " | ".join(cells) + " |")
    gpu = {r.get("gpu") for r in rows}
    hosts = {r.get("host") for r in rows}
    return "\n".join(lines) + (
        f"\n\nGPU: {', '.join(map(str, gpu))}; vLLM {rows[0]['vllm']}; "
        f"{len(hosts)} host(s): {', '.join(map(str, sorted(hosts, key=str)))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="bf16, fp8, vllm-tq-4bit-nc, vllm-tq-k8v4, tq-kKvV")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    parser.add_argument("--max-model-len", type=int, default=9216)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--model-dir", default="/tmp/llama3-8b-shape")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--git-sha", default="unknown")
    parser.add_argument("--label", help="the row's name and file name (default: --config)")
    parser.add_argument("--profile", help="one more scenario, INPUTxOUTPUTxREQUESTS, profiled")
    parser.add_argument("--table", type=pathlib.Path, help="print the table of a result folder")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not args.config:
        parser.error("--config is required")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # FlashInfer is not carried
    if args.profile:  # the engine core in this process, where the profiler sees its kernels
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    result = measure(args)
    # A profile-only run (no --scenarios) is kept apart from the throughput table's files.
    kind = "vllm" if args.scenarios else "profile"
    path = pathlib.Path(args.out) / f"{kind}-{args.label or args.config}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":  # vLLM spawns workers: the guard keeps them from re-running this
    main()
