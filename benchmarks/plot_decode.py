"""Line chart of decode speed against bf16 over context length, one line per batch size, from
the JSON that `kernel_bench.py --only decode` writes; a second file draws the same rows dashed,
to show what a change did.

    python benchmarks/plot_decode.py benchmarks/results/kernels-decode-h100-1140488.json \
        --before benchmarks/results/kernels-decode-h100-a2eb149.json

Writes the .png beside the first file (needs matplotlib): the Llama-3-8B shape's K4V4 rows
(``--impl`` picks another row label), each as its speed-up over the fastest bf16 decode of the
same run and shape.
"""

from __future__ import annotations

import argparse
import json
import pathlib


def speedups(path: pathlib.Path, model: str, impl: str) -> tuple[dict, dict[int, list]]:
    """The run's environment and, per batch size, (context, x bf16) of the ``impl`` rows."""
    run = json.loads(path.read_text())
    lines: dict[int, list] = {}
    for row in run["rows"]:
        if row["op"] == "decode" and row["model"] == model and row["impl"] == impl:
            lines.setdefault(row["batch"], []).append((row["context"], row["speedup_vs_bf16"]))
    if not lines:
        raise SystemExit(f"{path}: no decode rows for {model} / {impl!r}")
    return run["environment"], {batch: sorted(points) for batch, points in lines.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=pathlib.Path, help="kernel_bench.py JSON")
    parser.add_argument("--before", type=pathlib.Path, help="an earlier run, drawn dashed")
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--impl", default="tq K4V4")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env, lines = speedups(args.run, args.model, args.impl)
    before = speedups(args.before, args.model, args.impl)[1] if args.before else {}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, batch in zip(colors, sorted(lines), strict=False):
        contexts, ratios = zip(*lines[batch], strict=True)
        ax.plot(contexts, ratios, "o-", color=color, label=f"batch {batch}")
        if batch in before:
            old_contexts, old_ratios = zip(*before[batch], strict=True)
            ax.plot(old_contexts, old_ratios, "--", color=color, alpha=0.5)
    ax.axhline(1.0, color="gray", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({c for points in lines.values() for c, _ in points}))
    ax.set_xticklabels([f"{c // 1024}K" for c in ax.get_xticks()])
    ax.set_xlabel("context (tokens per sequence)")
    ax.set_ylabel("decode speed / bf16 (cuDNN or flash SDPA)")
    sha = env.get("git_sha", "?")
    title = f"{args.impl}, {args.model} shape, {env.get('gpu', '')} at {sha}"
    if args.before:
        title += f"\n(dashed: {json.loads(args.before.read_text())['environment'].get('git_sha')})"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = args.run.with_suffix(".png")
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
