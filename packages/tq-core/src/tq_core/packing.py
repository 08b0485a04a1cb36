"""Exact-density bit packing of codes as bit planes.

A b-bit code is split into planes of 8, 4, 2 or 1 bits (3 = 2+1, 5 = 4+1, 6 = 4+2, 7 = 4+2+1),
so a kernel only ever unpacks whole bytes, nibbles, 2-bit crumbs or single bits, and every plane
of a head_dim >= 64 vector is a multiple of 8 bytes. Planes are listed widest first; the plane
of width w at shift s holds bits [s, s + w) of each code, so the widest plane holds the high
bits. Within a plane, byte i holds codes i*k .. i*k + k - 1 (k = 8 / w), code i*k + j at bit
j*w (little-endian within the byte).
"""

from __future__ import annotations

import torch

from tq_core.config import check_bits
from tq_core.errors import TQInputError

_PLANE_WIDTHS = {
    1: (1,),
    2: (2,),
    3: (2, 1),
    4: (4,),
    5: (4, 1),
    6: (4, 2),
    7: (4, 2, 1),
    8: (8,),
}


def plane_widths(bits: int) -> tuple[int, ...]:
    """Widths of the planes a ``bits``-bit code is stored in, widest (highest bits) first."""
    return _PLANE_WIDTHS[check_bits("bits", bits)]


def plane_shifts(bits: int) -> tuple[int, ...]:
    """Bit position of the lowest bit each plane holds, in :func:`plane_widths` order."""
    widths = plane_widths(bits)
    return tuple(sum(widths[i + 1 :]) for i in range(len(widths)))


def packed_bytes(num_codes: int, bits: int) -> int:
    """Bytes that ``num_codes`` codes of ``bits`` bits take: exactly num_codes * bits / 8."""
    if num_codes % 8:
        raise TQInputError(f"num_codes={num_codes} must be a multiple of 8 to pack exactly")
    return num_codes * bits // 8


def pack_plane(values: torch.Tensor, width: int) -> torch.Tensor:
    """uint8 [..., n] values < 2**width -> uint8 [..., n * width / 8]."""
    per_byte = 8 // width
    grouped = values.to(torch.int32).reshape(*values.shape[:-1], -1, per_byte)
    shifts = torch.arange(per_byte, device=values.device, dtype=torch.int32) * width
    return (grouped << shifts).sum(dim=-1).to(torch.uint8)


def unpack_plane(plane: torch.Tensor, width: int) -> torch.Tensor:
    """uint8 [..., n * width / 8] -> uint8 [..., n], the inverse of :func:`pack_plane`."""
    per_byte = 8 // width
    shifts = torch.arange(per_byte, device=plane.device, dtype=torch.int32) * width
    values = (plane.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << width) - 1)
    return values.reshape(*plane.shape[:-1], -1).to(torch.uint8)


def pack_codes(codes: torch.Tensor, bits: int) -> list[torch.Tensor]:
    """Codes uint8 [..., n] of ``bits`` bits -> one uint8 plane per width, widest first."""
    if codes.dtype != torch.uint8:
        raise TQInputError(f"codes must be uint8, got {codes.dtype}")
    packed_bytes(codes.shape[-1], bits)
    as_int = codes.to(torch.int32)
    return [
        pack_plane(((as_int >> shift) & ((1 << width) - 1)).to(torch.uint8), width)
        for width, shift in zip(plane_widths(bits), plane_shifts(bits), strict=True)
    ]


def unpack_codes(planes: list[torch.Tensor], bits: int) -> torch.Tensor:
    """Planes from :func:`pack_codes` -> codes uint8 [..., n]."""
    widths, shifts = plane_widths(bits), plane_shifts(bits)
    if len(planes) != len(widths):
        raise TQInputError(f"{bits}-bit codes need {len(widths)} planes, got {len(planes)}")
    codes = None
    for plane, width, shift in zip(planes, widths, shifts, strict=True):
        part = unpack_plane(plane, width).to(torch.int32) << shift
        codes = part if codes is None else codes | part
    return codes.to(torch.uint8)
