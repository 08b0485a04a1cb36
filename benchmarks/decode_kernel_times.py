"""How a decode call's time splits between its launches, from the GPU's own kernel timestamps.

    python benchmarks/decode_kernel_times.py --out benchmarks/results/decode-levers/kernel-times

For each shape (Llama-3-8B GQA, K4V4, the default launch; inputs as decode_levers.py builds
them, rotated past L2) the calls run eagerly under torch.profiler, and each kernel's median
duration is reported with the call's whole span on the GPU (first kernel's start to last
kernel's end) and the idle time between its kernels. The CUDA-graph time of the same call
(kernel_bench.time_calls) is in the same row, so what the launches themselves cost shows as
the difference. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import decode_levers as levers
import kernel_bench as kernels

SHAPES = [(1, 1024), (8, 1024), (8, 16384), (8, 65536), (32, 16384), (32, 65536)]
CALLS = 30


def _kernel_spans(prof, calls: int) -> tuple[dict[str, list[float]], list[float], list[float]]:
    """Per kernel name its durations (us); per call the span and the idle time inside it (us),
    a call being the kernels between two consecutive attention launches."""
    events = sorted(
        (e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
        key=lambda e: e.time_range.start,
    )
    durations: dict[str, list[float]] = {}
    for event in events:
        durations.setdefault(event.name, []).append(event.time_range.elapsed_us())
    starts = [i for i, e in enumerate(events) if "_attention_kernel" in e.name]
    spans, idle = [], []
    for first, end in zip(starts, [*starts[1:], len(events)], strict=True):
        call = events[first:end]
        span = call[-1].time_range.end - call[0].time_range.start
        busy = sum(e.time_range.elapsed_us() for e in call)
        spans.append(span)
        idle.append(span - busy)
    return durations, spans[-calls:], idle[-calls:]


def shape_row(batch: int, context: int, copy_gbps: float) -> dict:
    layout, packed, caches, block_table, seq_lens, queries = levers._setup(batch, context)
    out = torch.empty_like(queries[0])
    copies = len(caches)

    def call(i: int) -> None:
        levers._run(layout, caches, block_table, seq_lens, queries, out, i % copies, None)

    graph_ms, how = kernels.time_calls([lambda i=i: call(i) for i in range(copies)])
    for i in range(3):
        call(i)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(CALLS):
            call(i)
        torch.cuda.synchronize()
    durations, spans, idle = _kernel_spans(prof, CALLS)
    return {
        "batch": batch,
        "context": context,
        "splits": levers._default_splits(layout, batch, block_table),
        "graph_ms": graph_ms,
        "timed_as": how,
        "packed_bytes": packed,
        "copy_bw_fraction": packed / (graph_ms * 1e-3) / (copy_gbps * 1e9),
        "kernels_us": {name: statistics.median(d) for name, d in durations.items()},
        "span_us": statistics.median(spans),
        "idle_us": statistics.median(idle),
    }


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        f"# Decode kernel times: {env['gpu']}, git {env.get('git_sha', '?')}",
        "",
        "Medians over eager calls under torch.profiler; `graph ms` = the same call in a CUDA "
        "graph (kernel_bench.time_calls).",
        "",
        "| batch x context | splits | graph ms | % copy BW | attention us | merge us | "
        "span us | idle us |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        kernels_us = row["kernels_us"]
        attention = sum(v for k, v in kernels_us.items() if "_attention_kernel" in k)
        merge = sum(v for k, v in kernels_us.items() if "_merge_splits_kernel" in k)
        lines.append(
            f"| {row['batch']} x {row['context']} | {row['splits']} | {row['graph_ms']:.4f} | "
            f"{row['copy_bw_fraction']:.0%} | {attention:.1f} | {merge:.1f} | "
            f"{row['span_us']:.1f} | {row['idle_us']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path prefix for .json and .md")
    parser.add_argument("--git-sha", help="the commit measured (when .git did not travel)")
    parser.add_argument("--shapes", help="comma list of BATCHxCONTEXT")
    args = parser.parse_args()
    shapes = levers.shapes_from(args.shapes, SHAPES)
    env = levers.measured_environment(args.git_sha)
    started = time.time()
    copy_gbps = kernels.copy_bandwidth()
    rows = []
    for batch, context in shapes:
        print(f"decode {batch} x {context}", flush=True)
        rows.append(shape_row(batch, context, copy_gbps))
        torch.cuda.empty_cache()
    env["seconds"] = round(time.time() - started, 1)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"environment": env, "copy_gbps": copy_gbps, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    table = markdown(rows, env)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
