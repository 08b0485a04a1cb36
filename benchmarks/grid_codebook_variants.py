"""`tq eval` with the 4-bit Lloyd-Max codebook swapped for a variant, to see what rounding the
centroids to an integer grid costs a real model (docs/kernels.md, "The Lloyd-Max grid codebook").

    python benchmarks/grid_codebook_variants.py MODE eval --bits K4V4,K4V8 --tokens 32768

MODE replaces what ``codebook.levels`` returns for the default ("lloyd-max") codebook at 4 bits:
``exact`` the Lloyd-Max centroids (the default, unchanged), ``grid7`` the lloyd-max-grid levels
(codes 0..127 around 63.5), ``grid7i`` codes 0..126 around the integer 63, ``grid8`` codes
0..255 around 127.5 (finer than the kernel's permutes can index). Each grid's step is the one
with the least coordinate MSE. Everything else is `tq eval` as shipped (the rest of argv).
"""

from __future__ import annotations

import sys

import numpy as np

import tq_core.codebook as codebook

GRIDS = {"grid7i": (126, 63.0), "grid8": (255, 127.5)}


def _variant_levels(mode: str, plain):
    def levels(head_dim: int, bits: int, name: str = "lloyd-max") -> np.ndarray:
        if name != "lloyd-max" or bits != 4 or mode == "exact":
            return plain(head_dim, bits, name)
        if mode == "grid7":
            return plain(head_dim, 4, "lloyd-max-grid")
        top, offset = GRIDS[mode]
        exact = codebook.lloyd_max_centroids(head_dim, 4)
        points, weights = codebook.coordinate_density_grid(head_dim)
        best = None
        for shrink in np.linspace(0.0, 0.15, 301):
            step = exact[-1] / (top / 2) * (1.0 - shrink)
            grid = step * (np.clip(np.round(exact / step + offset), 0, top) - offset)
            mse = codebook._coordinate_mse(points, weights, grid)
            if best is None or mse < best[0]:
                best = (mse, grid)
        return best[1]

    return levels


def main() -> int:
    mode = sys.argv.pop(1)
    if mode not in ("exact", "grid7", *GRIDS):
        raise SystemExit(f"MODE must be exact, grid7, {', '.join(GRIDS)}; got {mode!r}")
    codebook.levels = _variant_levels(mode, codebook.levels)
    from tq_core.cli.main import main as tq_main

    return tq_main()


if __name__ == "__main__":
    sys.exit(main())
