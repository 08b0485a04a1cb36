"""An independent Hadamard matrix for tests: Sylvester's construction in fp64."""

import math

import torch


def hadamard_matrix(size: int) -> torch.Tensor:
    """Normalized Sylvester Hadamard matrix [size, size], fp64, built by Kronecker products."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while matrix.shape[0] < size:
        matrix = torch.kron(matrix, block)
    return matrix / math.sqrt(size)
