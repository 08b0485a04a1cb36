"""What a companded 4-bit codebook would cost in MSE: cell edges g^-1(k) for an odd polynomial
g (so the store finds a code as floor(g(x)) + 8, arithmetic like the uniform codebook's),
each level the mean of its cell, against Lloyd-Max and uniform. No GPU, no model.

    python benchmarks/companded_codebook_mse.py --out benchmarks/results/companded-codebook-mse.txt

The store of the default Lloyd-Max codebook is bound by its boundary search on the ALU pipe
(docs/kernels.md, "store: 64-column products, and the uniform codebook by arithmetic"); the
uniform codebook's arithmetic codes reach 60% of the copy bandwidth but cost 1.19-1.20x
Lloyd-Max's MSE. This measures the codebook in between before anyone builds it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tq_core import codebook
from tq_core.cli.provenance import environment_record


def _edges(coefficients, scale):
    """g^-1(k), k = -7..7, for g(x) = sum c_i (x / scale)^(2i+1), by bisection where g
    increases (from 0 to its first turning point, at most 3 scales out; odd, so -g^-1(-k) for
    k < 0); None where g stops increasing before it reaches 7."""

    def g(t):
        return sum(c * t ** (2 * i + 1) for i, c in enumerate(coefficients))

    grid = np.linspace(0.0, 3.0, 30_001)
    rising = np.diff(g(grid)) > 0
    top = grid[np.argmin(rising)] if not rising.all() else grid[-1]
    if g(top) <= 7:
        return None
    edges = []
    for k in range(1, 8):
        low, high = 0.0, top
        for _ in range(100):
            mid = (low + high) / 2
            low, high = (mid, high) if g(mid) < k else (low, mid)
        edges.append((low + high) / 2 * scale)
    positive = np.array(edges)
    return np.concatenate((-positive[::-1], [0.0], positive))


def companded(head_dim: int, degree: int, rounds: int = 60):
    """An odd polynomial g of this degree (1: evenly spaced edges, 3, 5) by Lloyd's iteration
    inside the family: levels are the cells' means, the edges they would want are the levels'
    midpoints, and g is refitted by least squares to send those midpoints to -7..7; its cells
    are then g^-1(k). Started from Lloyd-Max's boundaries. Returns (MSE, g's coefficients)."""
    points, weights = codebook.coordinate_density_grid(head_dim)
    lloyd = codebook.lloyd_max_centroids(head_dim, 4)
    wanted = (lloyd[:-1] + lloyd[1:]) / 2
    scale = wanted[-1]
    best = None
    for _ in range(rounds):
        t = wanted / scale
        powers = np.stack([t ** (2 * i + 1) for i in range((degree + 1) // 2)], axis=1)
        coefficients = np.linalg.lstsq(powers, np.arange(-7.0, 8.0), rcond=None)[0]
        edges = _edges(coefficients, scale)
        if edges is None:  # not increasing up to 7: no codebook of this family here
            return float("inf"), coefficients
        mse, levels = codebook._cells_mse(points, weights, edges)
        if best is None or mse < best[0]:
            best = (mse, coefficients)
        wanted = (levels[:-1] + levels[1:]) / 2
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    lines = ["| head_dim | codebook | coordinate MSE | x Lloyd-Max |", "|---|---|---|---|"]
    for head_dim in (64, 128, 256):
        points, weights = codebook.coordinate_density_grid(head_dim)
        lloyd = codebook._coordinate_mse(points, weights, codebook.levels(head_dim, 4))
        uniform = codebook._coordinate_mse(points, weights, codebook.levels(head_dim, 4, "uniform"))
        rows = [("Lloyd-Max", lloyd), ("uniform (levels step (n - 7.5))", uniform)]
        for degree in (1, 3, 5):
            mse, coefficients = companded(head_dim, degree)
            shown = ", ".join(f"{c:.5g}" for c in coefficients)
            rows.append((f"companded, odd degree {degree} (g coefficients {shown})", mse))
        for name, mse in rows:
            lines.append(f"| {head_dim} | {name} | {mse:.6e} | {mse / lloyd:.4f} |")
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as out:
        out.write(
            "# benchmarks/companded_codebook_mse.py: 4-bit codebooks' coordinate MSE for a random "
            "unit vector's coordinate (codebook.coordinate_density_grid)\n"
            f"# environment: {json.dumps(environment_record())}\n" + text + "\n"
        )


if __name__ == "__main__":
    main()
