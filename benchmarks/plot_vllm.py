"""Bar chart of one vLLM throughput run: KV tokens and generated tokens per second of every
configuration, relative to bf16, from the vllm-*.json files `vllm_throughput.py` wrote.

    python benchmarks/plot_vllm.py benchmarks/results/vllm-h100-3dff149

Writes throughput.png into that folder (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import pathlib


def _load(folder: pathlib.Path) -> list[dict]:
    runs = [json.loads(path.read_text()) for path in sorted(folder.glob("vllm-*.json"))]
    if not any(run["label"] == "bf16" for run in runs):
        raise SystemExit(f"{folder}: no bf16 run to compare with")
    order = {"bf16": 0, "fp8": 1}
    return sorted(runs, key=lambda run: (order.get(run["label"], 2), run["label"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=pathlib.Path)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _load(args.folder)
    bf16 = next(run for run in runs if run["label"] == "bf16")
    scenarios = [f"{s['input_len']}/{s['output_len']} x{s['requests']}" for s in bf16["scenarios"]]
    groups = ["KV tokens"] + [f"gen tok/s\n{name}" for name in scenarios]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        ratios = [run["kv_tokens"] / bf16["kv_tokens"]]
        ratios += [
            mine["gen_tok_per_s"] / base["gen_tok_per_s"]
            for mine, base in zip(run["scenarios"], bf16["scenarios"], strict=True)
        ]
        xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, ratios, width, label=run["label"])
        ax.bar_label(bars, labels=[f"{r:.2f}x" for r in ratios], fontsize=8)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("relative to bf16")
    ax.set_title(
        f"vLLM {bf16['vllm']} on {bf16['gpu']}, {bf16['model']} (git {bf16['git_sha']})",
        fontsize=9,
    )
    ax.legend()
    fig.tight_layout()
    out = args.folder / "throughput.png"
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
