import math
import time

import numpy as np
import pytest
import torch

from conftest import random_unit_vectors
from tq_core import TQCodec
from tq_core.codebook import coordinate_density_grid, lloyd_max_centroids

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
