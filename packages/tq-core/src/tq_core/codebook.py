"""Codebooks for one coordinate of a uniformly random unit vector in d dimensions.

Four kinds. ``lloyd-max`` (the default): the MSE-optimal levels. ``uniform``: evenly spaced
levels step * (n - (2**bits - 1) / 2), the step MSE-optimal for the same density; 4-bit codes
then decode with one OR per two codes instead of a table lookup (decode attention's faster path,
docs/kernels.md), for about 1.2x the coordinate MSE. ``lloyd-max-grid``: at 4 bits the Lloyd-Max
levels rounded to an integer grid of 127 steps (codes 0-127: the kernel's byte permutes need
every code below 128), about 1% more coordinate MSE; other widths are plain Lloyd-Max.
``companded``: at 4 bits the cells are g^-1(k), k = -7 .. 7, for an odd cubic
g(t) = t (a + b t^2) fitted to the density, and each level is its cell's mean, for 1.001x
Lloyd-Max's coordinate MSE (benchmarks/results/companded-codebook-mse.txt). The store then finds
a code as floor(g(t)) + 8, a few multiply-adds, where Lloyd-Max's boundaries need a search that
bounds the store kernel (docs/kernels.md); its levels decode like Lloyd-Max's, from a table.
Other widths are plain Lloyd-Max.

The uniform and grid 4-bit codebooks are step * (code[n] - offset) with integer codes
(:func:`grid_codes`), so decode attention turns a code into the exact fp16 integer
1024 + code[n] and takes the offset off after the product.

After the random rotation, each coordinate t of a unit vector follows the density
f(t) ~ (1 - t^2)^((d-3)/2) on [-1, 1] whatever the input was, so one codebook per
(head_dim, bits) serves every model without calibration. Lloyd-Max alternates "boundaries are
midpoints of centroids" and "centroids are conditional means of their cell" until it settles;
conditional means come from prefix sums of the density on a fine grid, so each iteration costs
O(levels) and a codebook takes milliseconds.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from tq_core.config import CODEBOOKS, SUPPORTED_BITS, check_bits, check_codebook
from tq_core.errors import TQConfigError

# Grid of the density. Beyond 12 standard deviations (1/sqrt(d) each) the mass is < 1e-30.
_GRID_POINTS = 1 << 18
_TAIL_SIGMAS = 12.0
_MAX_ITERATIONS = 2000
_TOLERANCE = 1e-12
# Lloyd's iteration inside the companded family: rounds of "levels are cell means, wanted edges
# their midpoints, g refitted to send those to -7..7"; it settles within tens.
_COMPANDER_ROUNDS = 60


def coordinate_density_grid(head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid points t and probability weights of one rotated unit-vector coordinate (fp64)."""
    half_width = min(1.0, _TAIL_SIGMAS / math.sqrt(head_dim))
    edges = np.linspace(-half_width, half_width, _GRID_POINTS + 1)
    points = (edges[:-1] + edges[1:]) / 2
    log_density = (head_dim - 3) / 2 * np.log1p(-(points**2))
    weights = np.exp(log_density - log_density.max())
    return points, weights / weights.sum()


@functools.cache
def _lloyd_max_fp64(head_dim: int, bits: int) -> np.ndarray:
    points, weights = coordinate_density_grid(head_dim)
    mass = np.concatenate(([0.0], np.cumsum(weights)))
    moment = np.concatenate(([0.0], np.cumsum(weights * points)))
    levels = 1 << bits
    # Start from the high-resolution optimum (centroid density ~ f^(1/3), Panter-Dite): close
    # enough that Lloyd-Max settles in tens of iterations even at 8 bits.
    compander = np.cumsum(np.cbrt(weights))
    compander /= compander[-1]
    quantiles = (np.arange(levels) + 0.5) / levels
    centroids = np.interp(quantiles, compander, points)
    for _ in range(_MAX_ITERATIONS):
        boundaries = (centroids[:-1] + centroids[1:]) / 2
        cuts = np.concatenate(([0], np.searchsorted(points, boundaries), [points.size]))
        cell_mass = mass[cuts[1:]] - mass[cuts[:-1]]
        cell_moment = moment[cuts[1:]] - moment[cuts[:-1]]
        updated = np.where(cell_mass > 0, cell_moment / np.maximum(cell_mass, 1e-300), centroids)
        # The density is symmetric; enforce it so rounding never skews the codebook.
        updated = (updated - updated[::-1]) / 2
        shift = np.max(np.abs(updated - centroids))
        centroids = updated
        if shift < _TOLERANCE / math.sqrt(head_dim):
            break
    return centroids


def _coordinate_mse(points: np.ndarray, weights: np.ndarray, levels: np.ndarray) -> float:
    nearest = levels[np.searchsorted((levels[:-1] + levels[1:]) / 2, points)]
    return float(np.sum(weights * (points - nearest) ** 2))


def _cells_mse(points: np.ndarray, weights: np.ndarray, edges: np.ndarray):
    """(MSE, levels) of the quantizer with these sorted cell edges, each level its cell's mean
    (symmetrized: the density is symmetric, and so are the edges given here)."""
    cell = np.searchsorted(edges, points)
    mass = np.bincount(cell, weights, minlength=len(edges) + 1)
    first = np.bincount(cell, weights * points, minlength=len(edges) + 1)
    levels = first / np.maximum(mass, 1e-300)
    levels = (levels - levels[::-1]) / 2
    return float(np.sum(weights * (points - levels[cell]) ** 2)), levels


def _compander_edges(a: float, b: float) -> np.ndarray | None:
    """g^-1(k), k = -7 .. 7, of g(t) = t (a + b t^2), by bisection in fp64 on [0, the turning
    point] (odd: -g^-1(-k) below 0); None where g does not increase up to 7, or where b >= 0
    (the store caps t^2 at the turning point -a / 3b, which needs b < 0)."""
    if a <= 0 or b >= 0:
        return None
    top = min(math.sqrt(-a / (3 * b)), 1.0)
    if top * (a + b * top * top) <= 7:
        return None
    targets = np.arange(1.0, 8.0)
    low, high = np.zeros(7), np.full(7, top)
    for _ in range(200):
        mid = (low + high) / 2
        below = mid * (a + b * mid * mid) < targets
        low, high = np.where(below, mid, low), np.where(below, high, mid)
    positive = (low + high) / 2
    return np.concatenate((-positive[::-1], [0.0], positive))


@functools.cache
def compander(head_dim: int) -> tuple[float, float]:
    """(a, b) of the 4-bit companded codebook's g(t) = t (a + b t^2), each exactly a float32
    (the store computes g in float32 with them), t in unit-vector coordinate units.

    Lloyd's iteration inside the family, started from Lloyd-Max's boundaries: levels are the
    cells' means, the edges they would want are the levels' midpoints, and (a, b) are refitted
    by least squares to send those midpoints to -7 .. 7; the round of least MSE wins."""
    points, weights = coordinate_density_grid(head_dim)
    lloyd = _lloyd_max_fp64(head_dim, 4)
    wanted = (lloyd[:-1] + lloyd[1:]) / 2
    best = None
    for _ in range(_COMPANDER_ROUNDS):
        powers = np.stack([wanted, wanted**3], axis=1)
        a, b = np.linalg.lstsq(powers, np.arange(-7.0, 8.0), rcond=None)[0]
        a, b = float(np.float32(a)), float(np.float32(b))
        edges = _compander_edges(a, b)
        if edges is None:
            break
        mse, cell_levels = _cells_mse(points, weights, edges)
        if best is None or mse < best[0]:
            best = (mse, a, b)
        wanted = (cell_levels[:-1] + cell_levels[1:]) / 2
    if best is None:
        raise TQConfigError(f"no increasing companded 4-bit codebook for head_dim {head_dim}")
    return best[1], best[2]


@functools.cache
def _companded_fp64(head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges [15], levels [16]) of the 4-bit companded codebook, fp64."""
    edges = _compander_edges(*compander(head_dim))
    points, weights = coordinate_density_grid(head_dim)
    return edges, _cells_mse(points, weights, edges)[1]


def boundaries(head_dim: int, bits: int, codebook: str = "lloyd-max") -> np.ndarray:
    """The sorted fp64 cell edges of ``codebook``: code n covers (edge[n-1], edge[n]]. The
    levels' midpoints (nearest-level quantization) except for the companded cells g^-1(k)."""
    if codebook == "companded" and bits == 4:
        return _companded_fp64(head_dim)[0].copy()
    centroids = levels(head_dim, bits, codebook)
    return (centroids[:-1] + centroids[1:]) / 2


@functools.cache
def uniform_step(head_dim: int, bits: int) -> float:
    """The MSE-optimal spacing of ``2**bits`` evenly spaced levels centred on 0 (fp64), found
    by a golden-section search between 0.01 and 2 standard deviations (the MSE is unimodal in
    the step: granular error grows with it, overload error shrinks)."""
    points, weights = coordinate_density_grid(head_dim)
    offsets = np.arange(1 << bits) - ((1 << bits) - 1) / 2
    sigma = 1 / math.sqrt(head_dim)
    low, high = 0.01 * sigma, 2.0 * sigma
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    mse_a = _coordinate_mse(points, weights, a * offsets)
    mse_b = _coordinate_mse(points, weights, b * offsets)
    while high - low > 1e-9 * sigma:
        if mse_a <= mse_b:
            high, b, mse_b = b, a, mse_a
            a = high - ratio * (high - low)
            mse_a = _coordinate_mse(points, weights, a * offsets)
        else:
            low, a, mse_a = a, b, mse_b
            b = low + ratio * (high - low)
            mse_b = _coordinate_mse(points, weights, b * offsets)
    return (low + high) / 2


def uniform_levels(head_dim: int, bits: int) -> np.ndarray:
    """Sorted fp64 levels step * (n - (2**bits - 1) / 2), n = 0 .. 2**bits - 1."""
    check_bits("bits", bits)
    offsets = np.arange(1 << bits) - ((1 << bits) - 1) / 2
    return uniform_step(head_dim, bits) * offsets


def lloyd_max_centroids(head_dim: int, bits: int) -> np.ndarray:
    """Sorted fp64 centroids [2**bits] in unit-vector coordinate units."""
    check_bits("bits", bits)
    return _lloyd_max_fp64(head_dim, bits).copy()


# The largest 4-bit Lloyd-Max grid code: 7 bits, so every byte of the kernel's permute tables
# has its sign bit clear (docs/kernels.md, "The Lloyd-Max grid codebook").
GRID_TOP = 127


@functools.cache
def grid_codes(head_dim: int, codebook: str) -> tuple[tuple[int, ...], float, float]:
    """(codes, offset, step) of the 4-bit ``codebook`` (uniform or lloyd-max-grid): level n is
    step * (codes[n] - offset), codes[n] an integer in 0 .. GRID_TOP. Uniform: (0 .. 15, 7.5,
    uniform_step). Lloyd-Max grid: the exact centroids rounded to the grid offset GRID_TOP / 2
    whose step gives the least coordinate MSE (searched from the step that puts the outermost
    centroid on code GRID_TOP down to 15% finer, outer codes then clipped); symmetric, as the
    centroids are."""
    check_codebook("codebook", codebook)
    if codebook == "lloyd-max":
        raise TQConfigError("the exact Lloyd-Max codebook has no integer grid")
    if codebook == "uniform":
        return tuple(range(16)), 7.5, uniform_step(head_dim, 4)
    exact = _lloyd_max_fp64(head_dim, 4)
    points, weights = coordinate_density_grid(head_dim)
    offset = GRID_TOP / 2
    best = None
    for shrink in np.linspace(0.0, 0.15, 61):
        step = exact[-1] / offset * (1.0 - shrink)
        codes = np.clip(np.round(exact / step + offset), 0, GRID_TOP)
        mse = _coordinate_mse(points, weights, step * (codes - offset))
        if best is None or mse < best[0]:
            best = (mse, codes, step)
    _, codes, step = best
    return tuple(int(code) for code in codes), offset, float(step)


def levels(head_dim: int, bits: int, codebook: str = "lloyd-max") -> np.ndarray:
    """The sorted fp64 levels of ``codebook`` (one of CODEBOOKS)."""
    check_codebook("codebook", codebook)
    if codebook == "uniform":
        return uniform_levels(head_dim, bits)
    if codebook == "lloyd-max-grid" and bits == 4:
        codes, offset, step = grid_codes(head_dim, codebook)
        return step * (np.array(codes, dtype=np.float64) - offset)
    if codebook == "companded" and bits == 4:
        return _companded_fp64(head_dim)[1].copy()
    return lloyd_max_centroids(head_dim, bits)


def expected_unit_mse(head_dim: int, bits: int, codebook: str = "lloyd-max") -> float:
    """E ||u - Q(u)||^2 for a random unit vector u: head_dim times the per-coordinate MSE, Q
    the codebook's cells (:func:`boundaries`) mapped to its levels."""
    points, weights = coordinate_density_grid(head_dim)
    cell = np.searchsorted(boundaries(head_dim, bits, codebook), points)
    quantized = levels(head_dim, bits, codebook)[cell]
    return head_dim * float(np.sum(weights * (points - quantized) ** 2))


_ON_DEVICE: dict[tuple[int, int, str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def codebook_tensors(
    head_dim: int, bits: int, device: torch.device | str = "cpu", codebook: str = "lloyd-max"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids float32 [2**bits], boundaries float32 [2**bits - 1]) on ``device``.

    Quantizing is ``torch.bucketize(t, boundaries)``: the index of the nearest centroid (for
    the companded codebook, of the cell g^-1(k) holding t).
    """
    device = torch.device(device)
    key = (head_dim, bits, codebook, device)
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = (
            torch.tensor(levels(head_dim, bits, codebook), dtype=torch.float32, device=device),
            torch.tensor(boundaries(head_dim, bits, codebook), dtype=torch.float32, device=device),
        )
    return _ON_DEVICE[key]


__all__ = [
    "CODEBOOKS",
    "SUPPORTED_BITS",
    "boundaries",
    "codebook_tensors",
    "compander",
    "coordinate_density_grid",
    "expected_unit_mse",
    "grid_codes",
    "levels",
    "lloyd_max_centroids",
    "uniform_levels",
    "uniform_step",
]
