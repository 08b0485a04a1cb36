"""Randomized Hadamard rotation: seeded +-1 signs, then a normalized Walsh-Hadamard transform.

The rotation R = H D / sqrt(d) is orthonormal, so <q, k> = <Rq, Rk>: attention runs entirely in
the rotated domain with a pre-rotated query, and only the output is rotated back. Stored K/V
never leave the rotated domain.
"""

from __future__ import annotations

import functools
import math

import torch

from tq_core.config import check_head_dim


@functools.cache
def _signs_cpu(head_dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (head_dim,), generator=generator)
    return (bits * 2 - 1).to(torch.float32)


_SIGNS_ON_DEVICE: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def hadamard_signs(head_dim: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The seeded sign vector D of the rotation, float32 [head_dim] of +-1.

    Generated on the CPU with torch's seeded generator so every device and engine gets the same
    signs for the same seed (they are part of the stored format).
    """
    check_head_dim(head_dim)
    device = torch.device(device)
    key = (head_dim, seed, device)
    if key not in _SIGNS_ON_DEVICE:
        _SIGNS_ON_DEVICE[key] = _signs_cpu(head_dim, seed).to(device)
    return _SIGNS_ON_DEVICE[key]


def walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """Normalized fast Walsh-Hadamard transform over the last dimension (a power of two).

    O(d log d) butterflies; H / sqrt(d) is symmetric and its own inverse.
    """
    head_dim = x.shape[-1]
    lead = x.shape[:-1]
    y = x.reshape(-1, head_dim)
    half = 1
    while half < head_dim:
        pairs = y.view(-1, head_dim // (2 * half), 2, half)
        y = torch.stack((pairs[:, :, 0] + pairs[:, :, 1], pairs[:, :, 0] - pairs[:, :, 1]), dim=2)
        y = y.reshape(-1, head_dim)
        half *= 2
    return (y / math.sqrt(head_dim)).reshape(*lead, head_dim)


_MATRIX_ON_DEVICE: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}


def rotation_matrix(head_dim: int, seed: int, device, dtype=torch.float32) -> torch.Tensor:
    """R^T as a dense [head_dim, head_dim] matrix: ``x @ rotation_matrix(...)`` is R x."""
    key = (head_dim, seed, torch.device(device), dtype)
    if key not in _MATRIX_ON_DEVICE:
        eye = torch.eye(head_dim, dtype=torch.float64)
        matrix = walsh_hadamard(eye * hadamard_signs(head_dim, seed).double())
        _MATRIX_ON_DEVICE[key] = matrix.to(device=device, dtype=dtype).contiguous()
    return _MATRIX_ON_DEVICE[key]


def _use_matrix(x: torch.Tensor) -> bool:
    # On a GPU one fp32 GEMM (full fp32: torch does not use TF32 for matmul by default) costs
    # one launch where the butterflies cost ~20 small ones; on the CPU the butterflies are the
    # O(d log d) path.
    return x.is_cuda


def rotate(x: torch.Tensor, seed: int) -> torch.Tensor:
    """R x for x [..., head_dim]; keeps x's dtype (math in float32 for half inputs)."""
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if _use_matrix(x):
        return (work @ rotation_matrix(x.shape[-1], seed, x.device, work.dtype)).to(x.dtype)
    signs = hadamard_signs(x.shape[-1], seed, x.device)
    return walsh_hadamard(work * signs.to(work.dtype)).to(x.dtype)


def unrotate(y: torch.Tensor, seed: int) -> torch.Tensor:
    """R^T y for y [..., head_dim], the inverse of :func:`rotate`."""
    work = y.float() if y.dtype in (torch.float16, torch.bfloat16) else y
    if _use_matrix(y):
        return (work @ rotation_matrix(y.shape[-1], seed, y.device, work.dtype).T).to(y.dtype)
    signs = hadamard_signs(y.shape[-1], seed, y.device)
    return (walsh_hadamard(work) * signs.to(work.dtype)).to(y.dtype)


def rotate_query(query: torch.Tensor, seed: int) -> torch.Tensor:
    """Rotate queries [..., num_heads, head_dim] into the domain the cache is stored in."""
    return rotate(query, seed)


def unrotate_output(output: torch.Tensor, seed: int) -> torch.Tensor:
    """Rotate attention output [..., num_heads, head_dim] back (a sum of rotated values)."""
    return unrotate(output, seed)
