import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A fresh seeded generator per test: random inputs, reproducible failures."""
    return torch.Generator().manual_seed(20261127)


def random_unit_vectors(count: int, head_dim: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(count, head_dim, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)
