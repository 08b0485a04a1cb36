"""The store's 4-bit arithmetic tables (triton_layout.compander_table) measured on the CPU, for
the figures docs/kernels.md quotes: how far Lloyd-Max's edges lie from the companded cubic's
level sets, the clamp's scale s = 1 / (2 T) and g(0.5) of each codebook's polynomial, how many
of a million uniform t the kernel's float32 arithmetic (its PTX multiply-adds emulated exactly:
the saturating one rounds once, the rounding-up one takes the ceiling of the exact product)
codes differently from torch.bucketize over the same float32 edges, and the squares'
polynomial's float32 error in |n - 7.5| (an earlier variable) and in (n - 8)(n - 7) (now). No
GPU.

    python benchmarks/compander_table_figures.py --out OUT.json
(committed: benchmarks/results/store/compander-table-figures-cpu.json, ~5 s)
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from tq_core import TQCodec
from tq_core.cli.provenance import environment_record
from tq_core.codebook import codebook_tensors, compander
from tq_core.ops import triton_layout


def _horner32(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Horner in float32, as the kernel evaluates."""
    c = coefficients.astype(np.float32)
    value = np.full_like(x, c[0], dtype=np.float32)
    for coefficient in c[1:]:
        value = (value * x + coefficient).astype(np.float32)
    return value


def _kernel_codes(table: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The store's codes for unit coordinates t (float32), as its PTX computes them:
    fma.rn.sat (exact product and sum in fp64, one rounding to float32), the Horner of g in
    float32, and fma.rp with 2^23 + 7 (the ceiling of the exact product, fp64 holds it)."""
    v = np.clip((t.astype(np.float64) * np.float64(table[0]) + 0.5).astype(np.float32), 0, 1)
    w = (v - np.float32(0.5)).astype(np.float32)
    slope = _horner32(table[1:8], (w * w).astype(np.float32))
    return (np.ceil(w.astype(np.float64) * slope.astype(np.float64)) + 7).astype(np.int64)


def _figures(head_dim: int, codebook: str) -> dict:
    layout = TQCodec(head_dim, 4, 4, key_codebook=codebook).cache_layout(1, 16)
    table = triton_layout.compander_table(layout, "key", "cpu").numpy()
    levels, edges = (t.numpy() for t in codebook_tensors(head_dim, 4, "cpu", codebook))
    t = np.random.default_rng(0).uniform(-0.4, 0.4, 1_000_000).astype(np.float32)
    codes = _kernel_codes(table, t)
    squares = levels[8:].astype(np.float64) ** 2
    x = (np.arange(8) + 0.5).astype(np.float32)
    old = _horner32(np.polyfit(x.astype(np.float64), squares, 7), x)
    cells = np.arange(8, dtype=np.float32)
    new = _horner32(table[8:], cells * cells + cells)
    a, b = compander(head_dim)
    e = edges.astype(np.float64)
    return {
        "head_dim": head_dim, "codebook": codebook, "clamp_scale": float(table[0]),
        "turning_point": float(0.5 / np.float64(table[0])),
        "g_at_clamp": float(0.5 * np.polyval(table[1:8].astype(np.float64), 0.25)),
        "edges_drift_from_cubic_level_sets": float(
            np.abs(e * (a + b * e * e) - (np.arange(15) - 7)).max()
        ),
        "codes_out_of_range": int(((codes < 0) | (codes > 15)).sum()),
        "codes_unlike_bucketize_per_million": int((codes != np.searchsorted(edges, t)).sum()),
        "zero_takes_the_lower_code": bool(_kernel_codes(table, np.zeros(1, np.float32))[0] == 7),
        "squares_error_in_abs_n": float(np.abs(old - squares).max() / squares.max()),
        "squares_error_in_q": float(np.abs(new - squares).max() / squares.max()),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path of the JSON to write")
    args = parser.parse_args()
    rows = [_figures(d, c) for c in ("lloyd-max", "companded") for d in (64, 128, 256)]
    print("| codebook | head_dim | s | T | g(0.5) | edges from the cubic's level sets | codes "
          "unlike bucketize / 1M | squares' error, |n-7.5| | in q |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['codebook']} | {r['head_dim']} | {r['clamp_scale']:.4f} | "
              f"{r['turning_point']:.4f} | {r['g_at_clamp']:.3f} | "
              f"{r['edges_drift_from_cubic_level_sets']:.3f} | "
              f"{r['codes_unlike_bucketize_per_million']} | {r['squares_error_in_abs_n']:.1e} | "
              f"{r['squares_error_in_q']:.1e} |")  # fmt: skip
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "environment": environment_record(), "torch": torch.__version__},
                  f, indent=1)  # fmt: skip
        f.write("\n")


if __name__ == "__main__":
    main()
