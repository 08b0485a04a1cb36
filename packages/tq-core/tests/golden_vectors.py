"""Golden vectors of the byte format (docs/format.md): small fixed inputs and their exact bytes.

`python packages/tq-core/tests/golden_vectors.py` prints the JSON block that docs/format.md
carries; test_format.py checks that the code still produces exactly those bytes. Change the
bytes only together with FORMAT_VERSION.
"""

from __future__ import annotations

import json

import torch

from tq_core import FORMAT_VERSION, TQCodec

CASES = [
    {"head_dim": 64, "k_bits": 4, "v_bits": 4, "norm_dtype": "float32", "key_qjl": False},
    {"head_dim": 64, "k_bits": 3, "v_bits": 2, "norm_dtype": "float32", "key_qjl": False},
    {"head_dim": 64, "k_bits": 6, "v_bits": 5, "norm_dtype": "float16", "key_qjl": False},
    {"head_dim": 64, "k_bits": 4, "v_bits": 8, "norm_dtype": "float32", "key_qjl": True},
]


def golden_key(head_dim: int) -> torch.Tensor:
    """k[i] = 3 sin(0.37 (i + 1)) + 0.5: a key with a shared offset, as real keys have."""
    i = torch.arange(head_dim, dtype=torch.float64)
    return (3 * torch.sin(0.37 * (i + 1)) + 0.5).float()


def golden_value(head_dim: int) -> torch.Tensor:
    """v[i] = cos(1.3 i) / (1 + i / 16)."""
    i = torch.arange(head_dim, dtype=torch.float64)
    return (torch.cos(1.3 * i) / (1 + i / 16)).float()


def compute_golden() -> dict:
    cases = []
    for case in CASES:
        codec = TQCodec(
            case["head_dim"],
            case["k_bits"],
            case["v_bits"],
            norm_dtype=case["norm_dtype"],
            seed=0,
            key_qjl=case["key_qjl"],
        )
        key_bytes = codec.encode_keys(golden_key(case["head_dim"]))
        value_bytes = codec.encode_values(golden_value(case["head_dim"]))
        cases.append(
            {
                **case,
                "seed": 0,
                "norm_correction": True,
                "key_hex": bytes(key_bytes.tolist()).hex(),
                "value_hex": bytes(value_bytes.tolist()).hex(),
            }
        )
    return {"format_version": FORMAT_VERSION, "cases": cases}


if __name__ == "__main__":
    print(json.dumps(compute_golden(), indent=1))
