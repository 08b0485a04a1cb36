"""The byte layout: the one place that says how many bytes everything takes and where it lives.

Format version 1. A compressed vector (one K or V of one token and one KV head) is a sequence of
fields:

- ``plane8`` / ``plane4`` / ``plane2`` / ``plane1``: the codes' bit planes (see packing.py),
  widest first, head_dim * width / 8 bytes each;
- ``norm``: the vector's norm, float32 or float16, little-endian. With norm correction it is
  ``||x|| / ||c(idx)||`` so decoding restores the exact norm;
- keys with a QJL residual add ``qjl_signs`` (head_dim / 8 bytes: the 1-bit sign sketch of the
  residual) and ``residual_norm``; their planes then hold k_bits - 1 bits;
- an uncompressed layer (16 bits) stores one field ``raw``: the rotated vector in bf16.

The codec's ``encode_keys`` returns those fields concatenated in that order. A page of the paged
cache holds ``block_size`` tokens of every KV head, arranged for kernels as regions: for key then
value, for each field, ``[num_kv_heads, block_size, field_bytes]``. Every region starts at a
16-byte aligned offset so kernels can issue 16-byte loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tq_core.config import UNCOMPRESSED_BITS, check_bits, check_codebook, check_head_dim
from tq_core.errors import TQConfigError
from tq_core.packing import plane_widths

if TYPE_CHECKING:
    from tq_core.codec import TQCodec

FORMAT_VERSION = 1
REGION_ALIGNMENT = 16
NORM_BYTES = {"float32": 4, "float16": 2}
BF16_BYTES = 2


@dataclass(frozen=True)
class Field:
    name: str
    nbytes: int


@dataclass(frozen=True)
class VectorFormat:
    """The fields of one compressed K or V vector."""

    head_dim: int
    bits: int
    norm_dtype: str = "float32"
    qjl: bool = False
    codebook: str = "lloyd-max"  # how codes map to coordinates (codebook.py); no extra bytes

    def __post_init__(self) -> None:
        check_head_dim(self.head_dim)
        check_codebook("codebook", self.codebook)
        check_bits("bits", self.bits, allow_uncompressed=True)
        if self.norm_dtype not in NORM_BYTES:
            raise TQConfigError(f"norm_dtype={self.norm_dtype!r}; choose float32 or float16")
        if self.qjl and not 2 <= self.bits <= 8:
            raise TQConfigError(f"a QJL residual needs 2 <= bits <= 8, got bits={self.bits}")

    @property
    def compressed(self) -> bool:
        return self.bits != UNCOMPRESSED_BITS

    @property
    def mse_bits(self) -> int:
        """Bits of the Lloyd-Max codes (one less than ``bits`` when QJL takes one)."""
        return self.bits - 1 if self.qjl else self.bits

    @property
    def fields(self) -> tuple[Field, ...]:
        if not self.compressed:
            return (Field("raw", BF16_BYTES * self.head_dim),)
        norm = NORM_BYTES[self.norm_dtype]
        planes = tuple(
            Field(f"plane{width}", self.head_dim * width // 8)
            for width in plane_widths(self.mse_bits)
        )
        qjl = (Field("qjl_signs", self.head_dim // 8), Field("residual_norm", norm))
        return planes + (Field("norm", norm),) + (qjl if self.qjl else ())

    @property
    def nbytes(self) -> int:
        return sum(field.nbytes for field in self.fields)


@dataclass(frozen=True)
class Region:
    """One field of K or V for all heads and tokens of a page: [num_kv_heads, block_size, bytes]."""

    tensor: str  # "key" or "value"
    field: str
    offset: int
    bytes_per_vector: int
    nbytes: int


def _align(offset: int) -> int:
    return -(-offset // REGION_ALIGNMENT) * REGION_ALIGNMENT


class CacheLayout:
    """Bytes of the paged cache of one layer: ``kv_cache`` is uint8 [num_blocks, page_bytes].

    Adapters size their engine's allocation from ``page_bytes`` (or ``bytes_per_token`` for
    engines that count tokens) and hand this object to every op.
    """

    format_version = FORMAT_VERSION

    def __init__(self, codec: TQCodec, num_kv_heads: int, block_size: int) -> None:
        if num_kv_heads < 1:
            raise TQConfigError(f"num_kv_heads={num_kv_heads} must be >= 1")
        if block_size < 1:
            raise TQConfigError(f"block_size={block_size} must be >= 1")
        self.codec = codec
        self.head_dim = codec.head_dim
        self.num_kv_heads = num_kv_heads
        self.block_size = block_size
        self.key_format = codec.key_format
        self.value_format = codec.value_format
        regions = []
        offset = 0
        for tensor, fmt in (("key", self.key_format), ("value", self.value_format)):
            for field in fmt.fields:
                nbytes = num_kv_heads * block_size * field.nbytes
                regions.append(Region(tensor, field.name, offset, field.nbytes, nbytes))
                offset = _align(offset + nbytes)
        self.regions: tuple[Region, ...] = tuple(regions)
        self.page_bytes = offset

    @property
    def key_bytes(self) -> int:
        """Bytes of one token's key for one KV head."""
        return self.key_format.nbytes

    @property
    def value_bytes(self) -> int:
        return self.value_format.nbytes

    @property
    def bytes_per_token(self) -> float:
        """K + V bytes of one token over all KV heads of the layer, page padding spread out."""
        return self.page_bytes / self.block_size

    @property
    def packed_bytes_per_token(self) -> int:
        """K + V bytes of one token over all KV heads, without alignment padding."""
        return self.num_kv_heads * (self.key_bytes + self.value_bytes)

    def regions_of(self, tensor: str) -> tuple[Region, ...]:
        return tuple(region for region in self.regions if region.tensor == tensor)

    def describe(self) -> dict:
        """A JSON-able summary, for docs, `tq plan` and benchmark records."""
        return {
            "format_version": self.format_version,
            "head_dim": self.head_dim,
            "num_kv_heads": self.num_kv_heads,
            "block_size": self.block_size,
            "k_bits": self.key_format.bits,
            "v_bits": self.value_format.bits,
            "norm_dtype": self.key_format.norm_dtype,
            "key_qjl": self.key_format.qjl,
            "key_codebook": self.key_format.codebook,
            "value_codebook": self.value_format.codebook,
            "key_bytes": self.key_bytes,
            "value_bytes": self.value_bytes,
            "page_bytes": self.page_bytes,
            "regions": [region.__dict__ for region in self.regions],
        }
