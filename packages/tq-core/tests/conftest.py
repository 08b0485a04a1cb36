import os

import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A fresh seeded generator per test: random inputs, reproducible failures."""
    return torch.Generator().manual_seed(20261127)


def random_unit_vectors(count: int, head_dim: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(count, head_dim, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


# Without a GPU the Triton kernels run in Triton's interpreter (numpy). The flag is read when a
# kernel module is imported, so it is set here, before any test module imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
