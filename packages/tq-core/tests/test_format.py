"""docs/format.md is the contract: its golden bytes must come out of the codec, and a decoder
written from the document's words alone must read them back as the codec does."""

import json
import pathlib
import re

import numpy as np
import pytest
import torch

from golden_vectors import compute_golden, golden_key, golden_value
from hadamard_reference import hadamard_matrix
from tq_core import FORMAT_VERSION, TQCodec
from tq_core.codebook import lloyd_max_centroids
from tq_core.rotation import hadamard_signs

FORMAT_DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "format.md"
NORM_NUMPY = {"float32": "<f4", "float16": "<f2"}
PLANES = {1: [1], 2: [2], 3: [2, 1], 4: [4], 5: [4, 1], 6: [4, 2], 7: [4, 2, 1], 8: [8]}


def documented_golden() -> dict:
    block = re.search(
        r"<!-- golden:begin -->\s*```json\n(.*?)```\s*<!-- golden:end -->",
        FORMAT_DOC.read_text(),
        re.DOTALL,
    )
    assert block, "docs/format.md lost its golden block"
    return json.loads(block.group(1))


def test_codec_produces_exactly_the_documented_golden_bytes():
    assert documented_golden() == compute_golden()
    assert documented_golden()["format_version"] == FORMAT_VERSION


def decode_from_spec(
    raw: bytes, head_dim: int, bits: int, norm_dtype: str, qjl: bool, seed: int
) -> np.ndarray:
    """Reads one vector following docs/format.md, in fp64 numpy (original domain)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    mse_bits = bits - 1 if qjl else bits
    codes = np.zeros(head_dim, dtype=np.int64)
    offset = 0
    shift = mse_bits
    for width in PLANES[mse_bits]:
        shift -= width
        plane = data[offset : offset + head_dim * width // 8]
        offset += plane.size
        per_byte = 8 // width
        for i in range(head_dim):
            value = (int(plane[i // per_byte]) >> ((i % per_byte) * width)) & ((1 << width) - 1)
            codes[i] |= value << shift
    norm_size = 4 if norm_dtype == "float32" else 2
    norm = float(
        np.frombuffer(data[offset : offset + norm_size].tobytes(), NORM_NUMPY[norm_dtype])[0]
    )
    rotated = lloyd_max_centroids(head_dim, mse_bits)[codes] * norm
    if qjl:
        offset += norm_size
        sign_bits = np.unpackbits(data[offset : offset + head_dim // 8], bitorder="little")
        offset += head_dim // 8
        residual_norm = float(np.frombuffer(data[offset:].tobytes(), NORM_NUMPY[norm_dtype])[0])
        generator = torch.Generator().manual_seed(seed + 1)
        sketch = torch.randn(head_dim, head_dim, generator=generator).double().numpy()
        signs = sign_bits.astype(np.float64) * 2 - 1
        rotated = rotated + residual_norm * np.sqrt(np.pi / 2) / head_dim * (signs @ sketch)
    rotation = hadamard_matrix(head_dim).numpy() @ np.diag(hadamard_signs(head_dim, seed).numpy())
    return rotation.T @ rotated


@pytest.mark.parametrize(
    "case", documented_golden()["cases"], ids=lambda c: f"K{c['k_bits']}V{c['v_bits']}"
)
def test_a_decoder_written_from_the_document_reads_the_golden_bytes(case):
    codec = TQCodec(
        case["head_dim"],
        case["k_bits"],
        case["v_bits"],
        norm_dtype=case["norm_dtype"],
        seed=case["seed"],
        key_qjl=case["key_qjl"],
    )
    for hex_bytes, bits, qjl, original, decode in (
        (case["key_hex"], case["k_bits"], case["key_qjl"], golden_key, codec.decode_keys),
        (case["value_hex"], case["v_bits"], False, golden_value, codec.decode_values),
    ):
        raw = bytes.fromhex(hex_bytes)
        from_spec = decode_from_spec(
            raw, case["head_dim"], bits, case["norm_dtype"], qjl, case["seed"]
        )
        from_codec = decode(torch.tensor(list(raw), dtype=torch.uint8)).double().numpy()
        np.testing.assert_allclose(from_codec, from_spec, rtol=1e-5, atol=1e-5)
        # And the bytes are a faithful encoding of the input, not just self-consistent.
        cosine = (
            from_spec
            @ original(case["head_dim"]).double().numpy()
            / (np.linalg.norm(from_spec) * np.linalg.norm(original(case["head_dim"]).numpy()))
        )
        assert cosine > (0.9 if bits >= 3 else 0.8)
