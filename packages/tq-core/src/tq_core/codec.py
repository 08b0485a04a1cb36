"""TQCodec: TurboQuant encode/decode of K and V vectors for one layer's bit widths.

Encoding a vector x (any float dtype, original domain):
  y = R x (randomized Hadamard), n = ||y||, idx = nearest Lloyd-Max centroid of each y_i / n,
  stored norm = n / ||c(idx)|| with norm correction (so the decoded norm is exactly n), else n.
Decoding gives c(idx) * stored norm in the rotated domain, and R^T of that in the original one.
Keys with a QJL residual spend one bit on a sign sketch of r = y - decoded: the stored signs of
S r (S a seeded Gaussian d x d matrix) and ||r|| give r_hat = ||r|| sqrt(pi/2) / d * S^T sign(S r),
an unbiased estimate of r, so <q, k_hat> is the paper's unbiased inner-product estimator.
"""

from __future__ import annotations

import functools
import math

import torch

from tq_core.codebook import codebook_tensors
from tq_core.config import UNCOMPRESSED_BITS, TQConfig, check_bits, check_qjl_bits
from tq_core.errors import TQInputError
from tq_core.layout import CacheLayout, VectorFormat
from tq_core.packing import pack_codes, pack_plane, plane_widths, unpack_codes, unpack_plane
from tq_core.rotation import rotate, unrotate

_NORM_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@functools.cache
def _qjl_matrix_cpu(head_dim: int, seed: int) -> torch.Tensor:
    # Its own stream (seed + 1) so the sketch is independent of the rotation signs.
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randn(head_dim, head_dim, generator=generator, dtype=torch.float32)


def qjl_matrix(head_dim: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The seeded Gaussian sketch S, float32 [head_dim (sketch rows), head_dim]."""
    return _qjl_matrix_cpu(head_dim, seed).to(device)


class TQCodec:
    """Encode and decode K/V vectors of one layer.

    ``k_bits`` / ``v_bits`` take 1-8 bits, or 16 for an uncompressed (bf16) layer.
    """

    def __init__(
        self,
        head_dim: int = 128,
        k_bits: int = 4,
        v_bits: int = 4,
        *,
        norm_dtype: str = "float32",
        seed: int = 0,
        norm_correction: bool = True,
        key_qjl: bool = False,
        key_codebook: str = "lloyd-max",
        value_codebook: str = "lloyd-max",
    ) -> None:
        check_bits("k_bits", k_bits, allow_uncompressed=True)
        check_bits("v_bits", v_bits, allow_uncompressed=True)
        key_qjl = key_qjl and k_bits != UNCOMPRESSED_BITS
        if key_qjl:
            check_qjl_bits(k_bits)
        self.head_dim = head_dim
        self.seed = seed
        self.norm_correction = norm_correction
        self.key_format = VectorFormat(head_dim, k_bits, norm_dtype, key_qjl, key_codebook)
        self.value_format = VectorFormat(head_dim, v_bits, norm_dtype, False, value_codebook)

    @classmethod
    def from_config(
        cls, config: TQConfig, layer: int | None = None, num_layers: int | None = None
    ) -> TQCodec:
        """The codec of ``layer`` under the config's per-layer policy (or its default bits)."""
        if layer is None:
            k_bits, v_bits = config.k_bits, config.v_bits
        else:
            k_bits, v_bits = config.bits_for_layer(layer, num_layers)
        return cls(
            config.head_dim,
            k_bits,
            v_bits,
            norm_dtype=config.norm_dtype,
            seed=config.seed,
            norm_correction=config.norm_correction,
            key_qjl=config.key_qjl,
            key_codebook=config.key_codebook,
            value_codebook=config.value_codebook,
        )

    def __repr__(self) -> str:
        return (
            f"TQCodec(head_dim={self.head_dim}, k_bits={self.key_format.bits}, "
            f"v_bits={self.value_format.bits}, norm_dtype={self.key_format.norm_dtype!r}, "
            f"seed={self.seed}, norm_correction={self.norm_correction}, "
            f"key_qjl={self.key_format.qjl}, key_codebook={self.key_format.codebook!r}, "
            f"value_codebook={self.value_format.codebook!r})"
        )

    @property
    def key_bytes(self) -> int:
        return self.key_format.nbytes

    @property
    def value_bytes(self) -> int:
        return self.value_format.nbytes

    def cache_layout(self, num_kv_heads: int, block_size: int) -> CacheLayout:
        return CacheLayout(self, num_kv_heads, block_size)

    # -- per-vector packed bytes (the quickstart API) ------------------------------------------

    def encode_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """keys [..., head_dim] float -> uint8 [..., key_bytes]."""
        return self._join(self.encode_fields(keys, self.key_format), self.key_format)

    def decode_keys(self, packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 [..., key_bytes] -> [..., head_dim] in the original domain, rotated back in
        ``dtype`` (float32, or float64 to compare with float64 math without rounding)."""
        fields = self._split(packed, self.key_format)
        return unrotate(self.decode_fields(fields, self.key_format).to(dtype), self.seed)

    def encode_values(self, values: torch.Tensor) -> torch.Tensor:
        """values [..., head_dim] float -> uint8 [..., value_bytes]."""
        return self._join(self.encode_fields(values, self.value_format), self.value_format)

    def decode_values(
        self, packed: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """uint8 [..., value_bytes] -> [..., head_dim] in the original domain (see decode_keys)."""
        fields = self._split(packed, self.value_format)
        return unrotate(self.decode_fields(fields, self.value_format).to(dtype), self.seed)

    # -- fields (what the paged ops scatter and gather) ----------------------------------------

    def encode_fields(self, x: torch.Tensor, fmt: VectorFormat) -> dict[str, torch.Tensor]:
        """x [..., head_dim] (original domain) -> {field name: uint8 [..., field bytes]}."""
        self._check_vectors(x)
        rotated = rotate(x.to(torch.float32), self.seed)
        if not fmt.compressed:
            return {"raw": _bytes_of(rotated.to(torch.bfloat16))}
        centroids, boundaries = codebook_tensors(
            self.head_dim, fmt.mse_bits, x.device, fmt.codebook
        )
        norm = rotated.norm(dim=-1, keepdim=True)
        unit = rotated / norm.clamp_min(torch.finfo(torch.float32).tiny)
        codes = torch.bucketize(unit, boundaries).to(torch.uint8)
        quantized = centroids[codes.long()]
        stored_norm = norm / quantized.norm(dim=-1, keepdim=True) if self.norm_correction else norm
        norm_dtype = _NORM_TORCH_DTYPES[fmt.norm_dtype]
        stored_norm = stored_norm.to(norm_dtype)
        planes = pack_codes(codes, fmt.mse_bits)
        widths = plane_widths(fmt.mse_bits)
        fields = {f"plane{width}": plane for width, plane in zip(widths, planes, strict=True)}
        fields["norm"] = _bytes_of(stored_norm)
        if fmt.qjl:
            residual = rotated - quantized * stored_norm.to(torch.float32)
            sketch = residual @ qjl_matrix(self.head_dim, self.seed, x.device).T
            fields["qjl_signs"] = pack_plane((sketch >= 0).to(torch.uint8), 1)
            fields["residual_norm"] = _bytes_of(residual.norm(dim=-1, keepdim=True).to(norm_dtype))
        return fields

    def decode_fields(self, fields: dict[str, torch.Tensor], fmt: VectorFormat) -> torch.Tensor:
        """{field: uint8 [..., bytes]} -> float32 [..., head_dim] in the rotated domain."""
        if not fmt.compressed:
            return _from_bytes(fields["raw"], torch.bfloat16).to(torch.float32)
        planes = [fields[field.name] for field in fmt.fields if field.name.startswith("plane")]
        codes = unpack_codes(planes, fmt.mse_bits)
        centroids, _ = codebook_tensors(self.head_dim, fmt.mse_bits, codes.device, fmt.codebook)
        norm_dtype = _NORM_TORCH_DTYPES[fmt.norm_dtype]
        norm = _from_bytes(fields["norm"], norm_dtype).to(torch.float32)
        decoded = centroids[codes.long()] * norm
        if fmt.qjl:
            signs = unpack_plane(fields["qjl_signs"], 1).to(torch.float32) * 2 - 1
            residual_norm = _from_bytes(fields["residual_norm"], norm_dtype).to(torch.float32)
            sketch = qjl_matrix(self.head_dim, self.seed, codes.device)
            scale = math.sqrt(math.pi / 2) / self.head_dim
            decoded = decoded + residual_norm * scale * (signs @ sketch)
        return decoded

    def _split(self, packed: torch.Tensor, fmt: VectorFormat) -> dict[str, torch.Tensor]:
        if packed.dtype != torch.uint8 or packed.shape[-1] != fmt.nbytes:
            raise TQInputError(
                f"packed vectors must be uint8 [..., {fmt.nbytes}], got {packed.dtype} "
                f"{list(packed.shape)}"
            )
        sizes = [field.nbytes for field in fmt.fields]
        parts = torch.split(packed, sizes, dim=-1)
        return {
            field.name: part.contiguous() for field, part in zip(fmt.fields, parts, strict=True)
        }

    @staticmethod
    def _join(fields: dict[str, torch.Tensor], fmt: VectorFormat) -> torch.Tensor:
        return torch.cat([fields[field.name] for field in fmt.fields], dim=-1)

    def _check_vectors(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TQInputError(f"K/V must be a float tensor (fp32, fp16, bf16, fp64), got {got}")
        if x.shape[-1] != self.head_dim:
            raise TQInputError(
                f"K/V last dimension is {x.shape[-1]}, but this codec has head_dim={self.head_dim}"
            )


def _bytes_of(x: torch.Tensor) -> torch.Tensor:
    """Little-endian bytes of x [..., n] as uint8 [..., n * itemsize]."""
    return x.contiguous().view(torch.uint8)


def _from_bytes(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return raw.contiguous().view(dtype)
