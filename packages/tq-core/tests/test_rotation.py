import pytest
import torch

from hadamard_reference import hadamard_matrix
from tq_core.rotation import hadamard_signs, rotate, rotate_query, unrotate, unrotate_output


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_rotation_equals_explicit_fp64_hadamard_times_signs(head_dim, generator):
    x = torch.randn(10, head_dim, generator=generator, dtype=torch.float64)
    signs = hadamard_signs(head_dim, seed=3).double()
    expected = x @ (hadamard_matrix(head_dim) @ torch.diag(signs)).T
    torch.testing.assert_close(rotate(x, seed=3), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_rotation_is_orthonormal_and_inverted_by_unrotate(head_dim, generator):
    x = torch.randn(50, 4, head_dim, generator=generator, dtype=torch.float64)
    y = rotate(x, seed=11)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(unrotate(y, seed=11), x, rtol=1e-12, atol=1e-12)


def test_inner_products_survive_rotation_so_attention_can_run_rotated(generator):
    q = torch.randn(6, 128, generator=generator, dtype=torch.float64)
    k = torch.randn(9, 128, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(rotate_query(q, 5) @ rotate(k, 5).T, q @ k.T)
    v = torch.randn(9, 128, generator=generator, dtype=torch.float64)
    weights = torch.softmax(q @ k.T, dim=-1)
    torch.testing.assert_close(unrotate_output(weights @ rotate(v, 5), 5), weights @ v)


def test_signs_depend_on_seed_and_are_reproducible():
    assert torch.equal(hadamard_signs(128, 1), hadamard_signs(128, 1))
    assert not torch.equal(hadamard_signs(128, 1), hadamard_signs(128, 2))
    assert set(hadamard_signs(128, 1).tolist()) == {-1.0, 1.0}


def test_half_precision_inputs_keep_their_dtype(generator):
    x = torch.randn(3, 64, generator=generator).to(torch.bfloat16)
    assert rotate(x, 0).dtype == torch.bfloat16
