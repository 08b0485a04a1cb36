"""SGLang on a GPU: KV capacity, offline throughput and greedy agreement, one config per process.

Two models, both written here (no hub): a Llama-3-8B-shaped one with dummy weights for
capacity and throughput (prompts of random token ids, no tokenizer), and a small random-weight
Llama (``--small``, saved by transformers with a fixed seed) for the greedy check, where every
config decodes the same prompts. Its attention keeps transformers' default weight scale (soft
attention, as in trained models: wide q/k weights give scores of std ~40, where any rounding
of K flips which position wins) and only its output head is scaled up, so that greedy choices
have clear margins.

  python benchmarks/sglang_throughput.py --config tq-k4v4 --out DIR --git-sha SHA
  python benchmarks/sglang_throughput.py --config bf16 --small --out DIR   # greedy tokens only
  python benchmarks/sglang_throughput.py --table DIR                      # every JSON as tables

Configs: bf16 (SGLang's triton backend, KV in bf16, CUDA graphs), fp8 (the same, KV fp8_e4m3),
bf16-eager (bf16 without CUDA graphs, what tq is compared with while it has none), tq-kKvV
(``--attention-backend tq`` from tq-sglang, bits through TQ_K_BITS / TQ_V_BITS, no CUDA graphs).
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
SMALL = {"layers": 4, "heads": 8, "kv_heads": 4, "head_dim": 128, "vocab": 2048}
GREEDY_PROMPTS = (7, 23, 61, 150, 400)  # prompt lengths, random token ids (seeded)
GREEDY_TOKENS = 32
DEFAULT_SCENARIOS = "1024x512x256"


def engine_options(config: str) -> dict:
    if config == "bf16":
        return {"attention_backend": "triton"}
    if config == "bf16-eager":
        return {"attention_backend": "triton", "disable_cuda_graph": True}
    if config == "fp8":
        return {"attention_backend": "triton", "kv_cache_dtype": "fp8_e4m3"}
    match = re.fullmatch(r"tq-k(\d+)v(\d+)", config)
    if match is None:
        raise SystemExit(f"unknown config {config!r}: bf16, bf16-eager, fp8 or tq-kKvV")
    os.environ["TQ_K_BITS"], os.environ["TQ_V_BITS"] = match.group(1), match.group(2)
    return {"attention_backend": "tq", "disable_cuda_graph": True}


def _small_model(folder: pathlib.Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return
    config = LlamaConfig(
        vocab_size=SMALL["vocab"], hidden_size=SMALL["heads"] * SMALL["head_dim"],
        intermediate_size=2048, num_hidden_layers=SMALL["layers"],
        num_attention_heads=SMALL["heads"], num_key_value_heads=SMALL["kv_heads"],
        head_dim=SMALL["head_dim"], max_position_embeddings=4096, torch_dtype="bfloat16",
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)  # logits of std ~6 instead of ~0.6: clear margins
    model.to(torch.bfloat16).save_pretrained(folder)


def _greedy_prompts() -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.integers(0, SMALL["vocab"], size=n).tolist() for n in GREEDY_PROMPTS]


def reference(args) -> dict:
    """The small model's greedy tokens from transformers in float32 on the CPU (its bf16
    weights, exact attention): the independent reference for every engine config."""
    import torch
    import transformers

    folder = pathlib.Path(args.model_dir + "-small")
    _small_model(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    greedy = []
    for prompt in _greedy_prompts():
        ids = torch.tensor([prompt])
        steps = []
        with torch.no_grad():
            for _ in range(GREEDY_TOKENS):
                logprobs = model(ids).logits[0, -1].log_softmax(-1)
                top = logprobs.topk(2)
                steps.append({str(int(t)): float(v) for v, t in zip(*top, strict=True)})
                ids = torch.cat([ids, top.indices[:1].view(1, 1)], dim=1)
        greedy.append({"token_ids": ids[0, len(prompt) :].tolist(), "top2": steps})
    return {
        "config": "reference",
        "model": "small random-weight Llama",
        "engine": f"transformers {transformers.__version__}, float32, CPU",
        "torch": torch.__version__,
        "sglang": None,
        "gpu": None,
        "greedy": greedy,
        "scenarios": [],
    }


def measure(args) -> dict:
    import numpy as np
    import sglang
    import torch

    model_dir = pathlib.Path(args.model_dir + ("-small" if args.small else ""))
    model_dir.mkdir(parents=True, exist_ok=True)
    if args.small:
        _small_model(model_dir)
    else:
        (model_dir / "config.json").write_text(json.dumps(LLAMA3_8B_SHAPE, indent=1))
    options = engine_options(args.config)
    result = {
        "config": args.config,
        "model": "small random-weight Llama" if args.small else "Llama-3-8B shape, dummy weights",
        "git_sha": args.git_sha,
        "gpu": torch.cuda.get_device_name(0),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sglang": sglang.__version__,
        "engine_options": options,
        "mem_fraction_static": args.mem_fraction_static,
        "tp_size": args.tp_size,
        "page_size": args.page_size,
        "scenarios": [],
    }
    started = time.perf_counter()
    engine = sglang.Engine(
        model_path=str(model_dir), load_format="auto" if args.small else "dummy",
        skip_tokenizer_init=True, dtype="bfloat16",
        context_length=2048 if args.small else args.context_length,
        mem_fraction_static=args.mem_fraction_static, sampling_backend="pytorch",
        grammar_backend="none", random_seed=0, log_level="warning", tp_size=args.tp_size,
        page_size=args.page_size, **options,
    )  # fmt: skip
    try:
        result["engine_start_s"] = round(time.perf_counter() - started, 1)
        info = engine.get_server_info()
        result["kv_tokens"] = info["max_total_num_tokens"]
        result["kv_cache_gb"] = info["internal_states"][0]["memory_usage"]["kvcache"]
        print("ENGINE", json.dumps(result), flush=True)
        rng = np.random.default_rng(0)
        if args.small:
            prompts = _greedy_prompts()
            params = {"temperature": 0.0, "max_new_tokens": GREEDY_TOKENS, "ignore_eos": True}
            outs = engine.generate(
                input_ids=prompts, sampling_params=params, return_logprob=True,
                top_logprobs_num=2,
            )  # fmt: skip
            result["greedy"] = [
                {
                    "token_ids": [t for _, t, _ in o["meta_info"]["output_token_logprobs"]],
                    "top2": [
                        {str(t): lp for lp, t, _ in step}
                        for step in o["meta_info"]["output_top_logprobs"]
                    ],
                }
                for o in outs
            ]
            return result

        def run(requests: int, prompt_len: int, output_len: int) -> float:
            prompts = [
                rng.integers(1000, 120000, size=prompt_len).tolist() for _ in range(requests)
            ]
            params = {"temperature": 1.0, "max_new_tokens": output_len, "ignore_eos": True}
            begin = time.perf_counter()
            outs = engine.generate(input_ids=prompts, sampling_params=params)
            elapsed = time.perf_counter() - begin
            generated = sum(len(o["output_ids"]) for o in outs)
            if generated != requests * output_len:
                raise RuntimeError(f"generated {generated} tokens, not {requests * output_len}")
            return elapsed

        run(8, 256, 16)  # warm-up: kernels compiled, allocator settled
        for scenario in args.scenarios.split(","):
            prompt_len, output_len, requests = (int(x) for x in scenario.split("x"))
            elapsed = run(requests, prompt_len, output_len)
            row = {
                "input_len": prompt_len, "output_len": output_len, "requests": requests,
                "elapsed_s": round(elapsed, 2),
                "gen_tok_per_s": round(requests * output_len / elapsed, 1),
                "total_tok_per_s": round(requests * (prompt_len + output_len) / elapsed, 1),
            }  # fmt: skip
            result["scenarios"].append(row)
            print("SCENARIO", json.dumps(row), flush=True)
    finally:
        engine.shutdown()
    return result


def _agreement(ref: dict, got: dict) -> list[int]:
    """Per prompt, how many leading greedy tokens equal the reference's."""
    lengths = []
    for a, b in zip(ref["greedy"], got["greedy"], strict=True):
        pairs = zip(a["token_ids"], b["token_ids"], strict=True)
        lengths.append(next((i for i, (x, y) in enumerate(pairs) if x != y), len(a["token_ids"])))
    return lengths


def table(folder: pathlib.Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("sglang-*.json"))]
    big = [r for r in rows if r.get("scenarios")]
    small = {r["config"]: r for r in rows if r.get("greedy")}
    lines = []
    base = next((r for r in big if r["config"] == "bf16"), None)
    if big:
        scen = [f"{s['input_len']}/{s['output_len']} x{s['requests']}" for s in big[0]["scenarios"]]
        lines.append(
            "| KV | KV tokens | vs bf16 | "
            + " | ".join(f"gen tok/s {s} | vs bf16" for s in scen)
            + " |"
        )
        lines.append("|" + "---|" * (3 + 2 * len(scen)))
        for r in big:
            cells = [r["config"], f"{r['kv_tokens']:,}"]
            cells.append(f"{r['kv_tokens'] / base['kv_tokens']:.2f}x" if base else "")
            for i, s in enumerate(r["scenarios"]):
                ref = base["scenarios"][i]["gen_tok_per_s"] if base else None
                cells += [f"{s['gen_tok_per_s']:,.0f}", f"{s['gen_tok_per_s'] / ref:.2f}x"]
            lines.append("| " + " | ".join(cells) + " |")
    ref = next((name for name in ("reference", "bf16-eager", "bf16") if name in small), None)
    if ref:
        lines += [
            "",
            f"| KV (small model) | greedy tokens equal to {ref}, per prompt |",
            "|---|---|",
        ]
        for name, r in sorted(small.items()):
            lines.append(f"| {name} | {_agreement(small[ref], r)} of {GREEDY_TOKENS} |")
    gpus = {r["gpu"] for r in rows if r.get("gpu")}
    versions = {r["sglang"] for r in rows if r.get("sglang")}
    return "\n".join(lines) + f"\n\nGPU: {', '.join(map(str, gpus))}; SGLang {', '.join(versions)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="bf16, bf16-eager, fp8, tq-kKvV")
    parser.add_argument("--small", action="store_true", help="greedy check on the small model")
    parser.add_argument(
        "--reference", action="store_true", help="the small model's greedy tokens, transformers"
    )
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    parser.add_argument("--context-length", type=int, default=9216)
    parser.add_argument("--mem-fraction-static", type=float, default=0.85)
    parser.add_argument(
        "--tp-size", type=int, default=1, help="tensor-parallel ranks (KV tokens are per rank)"
    )
    # SGLang's default is 1; tq is built for 16 (one tq page per SGLang page, docs/sglang.md).
    parser.add_argument("--page-size", type=int, default=1, help="SGLang's --page-size")
    parser.add_argument("--model-dir", default="/tmp/llama3-8b-shape-sglang")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--git-sha", default="unknown")
    parser.add_argument("--table", type=pathlib.Path, help="print the tables of a result folder")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.reference:
        result, name = reference(args), "sglang-reference-small.json"
    elif not args.config:
        parser.error("--config or --reference is required")
    else:
        result = measure(args)
        name = f"sglang-{args.config}{'-small' if args.small else ''}.json"
    path = pathlib.Path(args.out) / name
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":  # SGLang spawns scheduler processes: keep them from re-running this
    main()
