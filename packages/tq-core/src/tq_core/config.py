"""TQConfig: what to compress and how, from keyword arguments or TQ_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from tq_core.errors import TQConfigError, TQUnsupportedModelError

#: Bit widths a compressed K or V vector may use. 5 and 6 are where keys get their best
#: quality per byte on small-head models (DESIGN.md); 1 and 7 come free with bit planes.
SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
#: A layer policy may keep a layer uncompressed; its K/V are stored as bf16.
UNCOMPRESSED_BITS = 16
#: head_dim values the randomized Hadamard rotation handles (powers of two).
SUPPORTED_HEAD_DIMS = (64, 128, 256)
NORM_DTYPES = ("float32", "float16")
#: How code n maps to a coordinate (codebook.py): Lloyd-Max levels, or evenly spaced ones that
#: decode faster at 4 bits for ~1.2x the coordinate MSE, Lloyd-Max levels on an integer grid,
#: or companded cells that the store finds by arithmetic for ~1.001x Lloyd-Max's MSE.
CODEBOOKS = ("lloyd-max", "uniform", "lloyd-max-grid", "companded")

# Environment variables that share the prefix but are not codec settings, read by other parts
# of tq: the model cache folder (cli), the kernel choice (ops/__init__.py), an adapter's key
# centering (which leaves the page format as it is) and the Triton kernels' launch settings
# (ops/triton_attention.py).
_NON_CONFIG_ENV = frozenset({"TQ_CACHE_DIR", "TQ_KERNELS", "TQ_CENTER_KEYS", "TQ_TRITON_TUNING"})
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def check_bits(name: str, bits: int, allow_uncompressed: bool = False) -> int:
    allowed = SUPPORTED_BITS + ((UNCOMPRESSED_BITS,) if allow_uncompressed else ())
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        choices = ", ".join(str(b) for b in allowed)
        raise TQConfigError(f"{name}={bits!r} is not supported; choose one of {choices}")
    return bits


def check_codebook(name: str, codebook: str) -> str:
    if codebook not in CODEBOOKS:
        raise TQConfigError(f"{name}={codebook!r} is not supported; choose one of "
                            + ", ".join(CODEBOOKS))  # fmt: skip
    return codebook


def check_head_dim(head_dim: int) -> int:
    if head_dim not in SUPPORTED_HEAD_DIMS:
        choices = ", ".join(str(d) for d in SUPPORTED_HEAD_DIMS)
        raise TQUnsupportedModelError(
            f"head_dim={head_dim!r} is not supported; tq supports head_dim {choices} "
            "(80, 96 and 112 need a non-power-of-two rotation that is not built yet)"
        )
    return head_dim


@dataclass(frozen=True)
class TQConfig:
    """Every codec setting, validated on construction.

    ``key_codebook`` / ``value_codebook``: "lloyd-max" (default), "uniform", "lloyd-max-grid"
    or "companded" (codebook.py).
    ``layer_bits`` maps a layer index to ``(k_bits, v_bits)`` and wins over the skip counts;
    16 means "keep this layer uncompressed (bf16)". ``skip_first_layers`` / ``skip_last_layers``
    keep boundary layers uncompressed, where errors hurt most.
    """

    head_dim: int = 128
    k_bits: int = 4
    v_bits: int = 4
    norm_dtype: str = "float32"
    seed: int = 0
    norm_correction: bool = True
    key_qjl: bool = False
    key_codebook: str = "lloyd-max"
    value_codebook: str = "lloyd-max"
    skip_first_layers: int = 0
    skip_last_layers: int = 0
    layer_bits: Mapping[int, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_head_dim(self.head_dim)
        check_bits("k_bits", self.k_bits)
        check_bits("v_bits", self.v_bits)
        if self.norm_dtype not in NORM_DTYPES:
            raise TQConfigError(
                f"norm_dtype={self.norm_dtype!r} is not supported; choose one of "
                + ", ".join(NORM_DTYPES)
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise TQConfigError(f"seed={self.seed!r} is not supported; use an integer >= 0")
        for name in ("norm_correction", "key_qjl"):
            if not isinstance(getattr(self, name), bool):
                raise TQConfigError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.key_qjl:
            check_qjl_bits(self.k_bits)
        check_codebook("key_codebook", self.key_codebook)
        check_codebook("value_codebook", self.value_codebook)
        for name in ("skip_first_layers", "skip_last_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TQConfigError(f"{name}={value!r} is not supported; use an integer >= 0")
        for layer, bits in self.layer_bits.items():
            if not isinstance(layer, int) or layer < 0:
                raise TQConfigError(f"layer_bits key {layer!r} must be a layer index >= 0")
            if not (isinstance(bits, tuple) and len(bits) == 2):
                raise TQConfigError(f"layer_bits[{layer}]={bits!r} must be (k_bits, v_bits)")
            check_bits(f"layer_bits[{layer}] k_bits", bits[0], allow_uncompressed=True)
            check_bits(f"layer_bits[{layer}] v_bits", bits[1], allow_uncompressed=True)
            if self.key_qjl and bits[0] != UNCOMPRESSED_BITS:
                check_qjl_bits(bits[0])

    def bits_for_layer(self, layer: int, num_layers: int) -> tuple[int, int]:
        """``(k_bits, v_bits)`` of one layer; 16 means the layer stays uncompressed."""
        if not 0 <= layer < num_layers:
            raise TQConfigError(f"layer={layer} is out of range for num_layers={num_layers}")
        if layer in self.layer_bits:
            return self.layer_bits[layer]
        if layer < self.skip_first_layers or layer >= num_layers - self.skip_last_layers:
            return (UNCOMPRESSED_BITS, UNCOMPRESSED_BITS)
        return (self.k_bits, self.v_bits)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> TQConfig:
        """Build a config from ``TQ_*`` variables; keyword arguments win over the environment.

        Variables: TQ_K_BITS, TQ_V_BITS, TQ_HEAD_DIM, TQ_NORM_DTYPE, TQ_SEED,
        TQ_NORM_CORRECTION, TQ_KEY_QJL, TQ_KEY_CODEBOOK, TQ_VALUE_CODEBOOK,
        TQ_SKIP_FIRST_LAYERS, TQ_SKIP_LAST_LAYERS and TQ_LAYER_BITS (``"0:8,8;29:16,16"``).
        An unknown TQ_ name is an error, because a typo would otherwise silently serve with
        the defaults.
        """
        environ = os.environ if environ is None else environ
        known = {name: parse for name, (_, parse) in _ENV_FIELDS.items()}
        values = {}
        for name, raw in environ.items():
            if not name.startswith("TQ_") or name in _NON_CONFIG_ENV:
                continue
            if name not in known:
                raise TQConfigError(
                    f"unknown environment variable {name}; tq reads " + ", ".join(_ENV_FIELDS)
                )
            values[_ENV_FIELDS[name][0]] = known[name](name, raw)
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The TQ_* variables that rebuild this config, e.g. for engine worker processes."""
        layer_bits = ";".join(
            f"{layer}:{k},{v}" for layer, (k, v) in sorted(self.layer_bits.items())
        )
        return {
            "TQ_HEAD_DIM": str(self.head_dim),
            "TQ_K_BITS": str(self.k_bits),
            "TQ_V_BITS": str(self.v_bits),
            "TQ_NORM_DTYPE": self.norm_dtype,
            "TQ_SEED": str(self.seed),
            "TQ_NORM_CORRECTION": "1" if self.norm_correction else "0",
            "TQ_KEY_QJL": "1" if self.key_qjl else "0",
            "TQ_KEY_CODEBOOK": self.key_codebook,
            "TQ_VALUE_CODEBOOK": self.value_codebook,
            "TQ_SKIP_FIRST_LAYERS": str(self.skip_first_layers),
            "TQ_SKIP_LAST_LAYERS": str(self.skip_last_layers),
            "TQ_LAYER_BITS": layer_bits,
        }


def check_qjl_bits(k_bits: int) -> None:
    if k_bits < 2:
        raise TQConfigError(
            f"k_bits={k_bits} cannot carry a QJL residual (it takes 1 of the key bits); "
            "use k_bits >= 2 with key_qjl"
        )


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise TQConfigError(f"{name}={raw!r} is not an integer") from None


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise TQConfigError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no, on/off")


def _parse_str(name: str, raw: str) -> str:
    return raw.strip()


def _parse_layer_bits(name: str, raw: str) -> dict[int, tuple[int, int]]:
    result: dict[int, tuple[int, int]] = {}
    for item in filter(None, (part.strip() for part in raw.split(";"))):
        try:
            layer, bits = item.split(":")
            k_bits, v_bits = bits.split(",")
            result[int(layer)] = (int(k_bits), int(v_bits))
        except ValueError:
            raise TQConfigError(
                f"{name}={raw!r} is not a layer map; write 'layer:k_bits,v_bits;...' "
                "such as '0:8,8;29:16,16'"
            ) from None
    return result


_ENV_FIELDS = {
    "TQ_HEAD_DIM": ("head_dim", _parse_int),
    "TQ_K_BITS": ("k_bits", _parse_int),
    "TQ_V_BITS": ("v_bits", _parse_int),
    "TQ_NORM_DTYPE": ("norm_dtype", _parse_str),
    "TQ_SEED": ("seed", _parse_int),
    "TQ_NORM_CORRECTION": ("norm_correction", _parse_bool),
    "TQ_KEY_QJL": ("key_qjl", _parse_bool),
    "TQ_KEY_CODEBOOK": ("key_codebook", _parse_str),
    "TQ_VALUE_CODEBOOK": ("value_codebook", _parse_str),
    "TQ_SKIP_FIRST_LAYERS": ("skip_first_layers", _parse_int),
    "TQ_SKIP_LAST_LAYERS": ("skip_last_layers", _parse_int),
    "TQ_LAYER_BITS": ("layer_bits", _parse_layer_bits),
}
