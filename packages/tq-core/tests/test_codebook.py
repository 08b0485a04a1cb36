import itertools
import math
import time

import numpy as np
import pytest
import torch

from conftest import random_unit_vectors
from tq_core import TQCodec
from tq_core.codebook import (
    boundaries,
    compander,
    coordinate_density_grid,
    expected_unit_mse,
    grid_codes,
    levels,
    lloyd_max_centroids,
    uniform_levels,
)
from tq_core.errors import TQConfigError

# Lloyd-Max optimum per unit vector in the large-d limit (Gaussian marginal), the table.
LLOYD_MAX_LIMIT = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}


def paper_bound(bits: int) -> float:
    return math.sqrt(3) * math.pi / 2 * 4.0**-bits


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_mse_on_random_unit_vectors_is_lloyd_max_optimal_and_under_paper_bound(
    head_dim, bits, generator
):
    # Without norm correction the codec is the plain Lloyd-Max quantizer the optimum refers to.
    codec = TQCodec(head_dim, k_bits=bits, v_bits=bits, norm_correction=False)
    unit = random_unit_vectors(20000, head_dim, generator).float()
    decoded = codec.decode_keys(codec.encode_keys(unit))
    mse = ((decoded.double() - unit.double()) ** 2).sum(dim=-1).mean().item()
    print(
        f"d={head_dim} b={bits}: MSE {mse:.5f}, limit {LLOYD_MAX_LIMIT[bits]}, "
        f"bound {paper_bound(bits):.5f}"
    )
    # Finite d has slightly lighter tails than the Gaussian limit, so allow 5% either side.
    assert abs(mse - LLOYD_MAX_LIMIT[bits]) <= 0.05 * LLOYD_MAX_LIMIT[bits]
    assert mse < paper_bound(bits)


@pytest.mark.parametrize("bits", [5, 6, 7, 8])
def test_high_bit_mse_is_under_paper_bound(bits, generator):
    codec = TQCodec(128, k_bits=bits, v_bits=bits, norm_correction=False)
    unit = random_unit_vectors(20000, 128, generator).float()
    decoded = codec.decode_keys(codec.encode_keys(unit))
    mse = ((decoded.double() - unit.double()) ** 2).sum(dim=-1).mean().item()
    print(f"b={bits}: MSE {mse:.3g}, bound {paper_bound(bits):.3g}")
    assert mse < paper_bound(bits) * 1.02


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_8bit_reconstruction_cosine_exceeds_0_9999(head_dim, generator):
    codec = TQCodec(head_dim, k_bits=8, v_bits=8)
    x = torch.randn(4000, head_dim, generator=generator) * 3 + 0.5
    decoded = codec.decode_values(codec.encode_values(x))
    cosine = torch.nn.functional.cosine_similarity(decoded, x, dim=-1)
    low = torch.quantile(cosine, 0.001).item()
    print(f"d={head_dim}: mean cosine {cosine.mean().item():.7f}, 0.1% quantile {low:.6f}")
    # A rare coordinate past the outermost centroid (a > 4.5 sigma tail) is clipped, so
    # single vectors can dip lower: the figure is the mean, as the paper reports it.
    assert cosine.mean().item() > 0.9999
    assert low > 0.9995


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_centroids_satisfy_lloyd_max_conditions(head_dim, bits):
    # Each centroid is the conditional mean of its cell (cells bounded by centroid midpoints),
    # checked against an independent fp64 integration of the exact density.
    centroids = lloyd_max_centroids(head_dim, bits)
    assert np.all(np.diff(centroids) > 0)
    np.testing.assert_allclose(centroids, -centroids[::-1], atol=1e-12)
    points, weights = coordinate_density_grid(head_dim)
    cell = np.searchsorted((centroids[:-1] + centroids[1:]) / 2, points)
    mass = np.bincount(cell, weights, minlength=centroids.size)
    means = np.bincount(cell, weights * points, minlength=centroids.size) / mass
    spacing = np.min(np.diff(centroids))
    assert np.max(np.abs(means - centroids)) < 1e-3 * spacing


def test_codebooks_are_deterministic_and_fast():
    from tq_core import codebook

    codebook._lloyd_max_fp64.cache_clear()
    start = time.perf_counter()
    first = lloyd_max_centroids(256, 8)
    elapsed = time.perf_counter() - start
    codebook._lloyd_max_fp64.cache_clear()
    assert np.array_equal(first, lloyd_max_centroids(256, 8))
    print(f"8-bit codebook at d=256: {elapsed * 1000:.0f} ms")


def test_unit_mse_shrinks_about_fourfold_per_bit(generator):
    unit = random_unit_vectors(5000, 128, generator).float()
    mses = []
    for bits in range(1, 9):
        codec = TQCodec(128, k_bits=bits, v_bits=bits, norm_correction=False)
        decoded = codec.decode_keys(codec.encode_keys(unit))
        mses.append(((decoded - unit) ** 2).sum(-1).mean().item())
    ratios = [mses[i] / mses[i + 1] for i in range(7)]
    assert all(2.5 < ratio < 4.5 for ratio in ratios), ratios
    assert torch.isfinite(torch.tensor(mses)).all()


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("bits", [3, 4, 5])
def test_uniform_levels_are_evenly_spaced_symmetric_and_mse_optimal(head_dim, bits):
    levels = uniform_levels(head_dim, bits)
    steps = np.diff(levels)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-12)
    np.testing.assert_allclose(levels, -levels[::-1], atol=1e-15)
    # Against the fp64 MSE on the density grid: any other spacing of the same shape is worse.
    points, weights = coordinate_density_grid(head_dim)

    def mse(scale):
        scaled = levels * scale
        nearest = scaled[np.searchsorted((scaled[:-1] + scaled[1:]) / 2, points)]
        return float(np.sum(weights * (points - nearest) ** 2))

    best = mse(1.0)
    assert all(mse(scale) > best for scale in (0.98, 0.995, 1.005, 1.02))
    # Lloyd-Max is the optimum over all codebooks, so evenly spaced levels cost more MSE.
    assert expected_unit_mse(head_dim, bits, "uniform") > expected_unit_mse(head_dim, bits)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_uniform_codec_decodes_to_the_nearest_even_level(head_dim, generator):
    """The codec with the uniform codebook against fp64 math: rotate, then the nearest level
    step * (n - 7.5) of each coordinate of the unit vector, times the norm."""
    from tq_core.rotation import rotation_matrix

    codec = TQCodec(head_dim, 4, 4, norm_correction=False, value_codebook="uniform")
    x = torch.randn(500, head_dim, generator=generator, dtype=torch.float64) * 2 + 0.3
    decoded = codec.decode_values(codec.encode_values(x.float())).double()
    rotation = rotation_matrix(head_dim, codec.seed, "cpu", torch.float64)
    y = x @ rotation  # R x (rotation_matrix is R^T)
    norm = y.norm(dim=-1, keepdim=True)
    levels = torch.tensor(uniform_levels(head_dim, 4))
    nearest = levels[(y / norm - levels[:, None, None]).abs().argmin(dim=0)]
    expected = (nearest * norm) @ rotation.T
    # float32 codec arithmetic: a coordinate within rounding of a boundary may round the other
    # way, so compare vectors, allowing one in a hundred to differ.
    close = ((decoded - expected).abs() <= 1e-4 * norm).all(dim=-1)
    assert close.float().mean().item() >= 0.99


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_the_lloyd_max_grid_rounds_the_centroids_to_7_bit_codes_at_little_mse(head_dim):
    """lloyd-max-grid at 4 bits: symmetric integer codes in 0..127 (what the kernel's permutes
    need), each level within half a grid step of the exact centroid, and the coordinate MSE
    within 1.5% of the exact optimum's (fp64 on the density grid); other widths are exact."""
    codes, offset, step = grid_codes(head_dim, "lloyd-max-grid")
    codes = np.array(codes)
    assert codes.min() >= 0 and codes.max() <= 127 and offset == 63.5
    np.testing.assert_array_equal(codes + codes[::-1], 127)
    exact = lloyd_max_centroids(head_dim, 4)
    grid = levels(head_dim, 4, "lloyd-max-grid")
    np.testing.assert_allclose(grid, step * (codes - offset), rtol=1e-12)
    assert np.abs(grid - exact).max() <= step / 2 + 1e-12
    ratio = expected_unit_mse(head_dim, 4, "lloyd-max-grid") / expected_unit_mse(head_dim, 4)
    assert 1.0 < ratio < 1.015
    five = lloyd_max_centroids(head_dim, 5)
    np.testing.assert_array_equal(levels(head_dim, 5, "lloyd-max-grid"), five)
    with pytest.raises(TQConfigError, match="no integer grid"):
        grid_codes(head_dim, "lloyd-max")


def _density_fp64(head_dim: int, low: float, high: float, points: int = 200_001):
    """(t, f(t) dt) on [low, high] by the trapezoid rule, f ~ (1 - t^2)^((d-3)/2) unnormalized:
    an integration of its own, not codebook.coordinate_density_grid."""
    t = np.linspace(low, high, points)
    f = np.exp((head_dim - 3) / 2 * np.log1p(-(t**2)))
    w = np.full(points, (high - low) / (points - 1))
    w[0] = w[-1] = w[0] / 2
    return t, f * w


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_companded_cells_are_the_cubics_level_sets_and_levels_their_means(head_dim):
    """companded at 4 bits: edge k is where g(t) = t (a + b t^2) crosses k - 7 (fp64), with
    a and b float32 numbers and g increasing over the cells; each level is the mean of the
    density over its cell (integrated here by the trapezoid rule, to 1e-4); the coordinate MSE
    within 0.2% of Lloyd-Max's and below the uniform codebook's; other widths are Lloyd-Max's."""
    a, b = compander(head_dim)
    assert np.float32(a) == a and np.float32(b) == b
    edges = boundaries(head_dim, 4, "companded")
    np.testing.assert_allclose(edges * (a + b * edges**2), np.arange(-7.0, 8.0), atol=1e-9)
    assert (a + 3 * b * edges**2 > 0).all()  # g' > 0: one cell per code
    # (The density is 0 at +-1; the grid stops just inside.)
    cells = np.concatenate(([-1.0 + 1e-12], edges, [1.0 - 1e-12]))
    means = []
    for low, high in itertools.pairwise(cells):
        t, w = _density_fp64(head_dim, low, high)
        means.append(np.sum(t * w) / np.sum(w))
    # codebook.py assigns its density grid's points (bins 1e-5 wide at head_dim 64) to cells.
    np.testing.assert_allclose(levels(head_dim, 4, "companded"), means, rtol=1e-4, atol=1e-9)
    ratio = expected_unit_mse(head_dim, 4, "companded") / expected_unit_mse(head_dim, 4)
    assert 1.0 < ratio < 1.002
    assert expected_unit_mse(head_dim, 4, "companded") < expected_unit_mse(head_dim, 4, "uniform")
    np.testing.assert_array_equal(
        levels(head_dim, 3, "companded"), lloyd_max_centroids(head_dim, 3)
    )


@pytest.mark.parametrize("head_dim", [64, 128])
def test_companded_codec_takes_the_cell_of_the_cubic_and_decodes_to_its_level(head_dim, generator):
    """The codec with the companded codebook against fp64 math: rotate, code = the cell of
    each unit coordinate among the edges g^-1(k) (checked above), decode to that level times
    the norm."""
    from tq_core.rotation import rotation_matrix

    codec = TQCodec(head_dim, 4, 4, norm_correction=False, key_codebook="companded",
                    value_codebook="companded")  # fmt: skip
    x = torch.randn(500, head_dim, generator=generator, dtype=torch.float64) * 2 - 0.4
    decoded = codec.decode_values(codec.encode_values(x.float())).double()
    rotation = rotation_matrix(head_dim, codec.seed, "cpu", torch.float64)
    y = x @ rotation
    norm = y.norm(dim=-1, keepdim=True)
    t = y / norm
    edges = torch.tensor(boundaries(head_dim, 4, "companded"))
    codes = torch.searchsorted(edges, t.contiguous())
    expected = (torch.tensor(levels(head_dim, 4, "companded"))[codes] * norm) @ rotation.T
    close = ((decoded - expected).abs() <= 1e-4 * norm).all(dim=-1)
    assert close.float().mean().item() >= 0.99
