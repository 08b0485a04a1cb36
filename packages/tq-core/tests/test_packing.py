import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tq_core.errors import TQInputError
from tq_core.packing import pack_codes, packed_bytes, plane_widths, unpack_codes

ALL_BITS = [1, 2, 3, 4, 5, 6, 7, 8]


@st.composite
def codes_and_bits(draw):
    bits = draw(st.sampled_from(ALL_BITS))
    groups = draw(st.integers(min_value=1, max_value=48))
    rows = draw(st.integers(min_value=1, max_value=4))
    values = draw(
        st.lists(
            st.integers(0, (1 << bits) - 1), min_size=rows * groups * 8, max_size=rows * groups * 8
        )
    )
    return torch.tensor(values, dtype=torch.uint8).view(rows, groups * 8), bits


@settings(max_examples=300, deadline=None)
@given(codes_and_bits())
def test_pack_unpack_round_trips_at_every_width(case):
    codes, bits = case
    planes = pack_codes(codes, bits)
    assert sum(plane.shape[-1] for plane in planes) == packed_bytes(codes.shape[-1], bits)
    assert torch.equal(unpack_codes(planes, bits), codes)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_packing_is_exact_density(bits):
    # 3 bits: 8 codes in 3 bytes, and so on: n * bits / 8 bytes, nothing more.
    codes = torch.randint(0, 1 << bits, (5, 128), dtype=torch.uint8)
    assert sum(p.shape[-1] for p in pack_codes(codes, bits)) == 128 * bits // 8
    assert sum(plane_widths(bits)) == bits
    assert all(width in (1, 2, 4, 8) for width in plane_widths(bits))


def test_plane_bits_match_an_independent_bit_reader():
    # 3-bit code 0b101 = 5 at position 9: its high 2 bits (0b10) live in the 2-bit plane,
    # byte 9 // 4 = 2, bits (9 % 4) * 2 = 2..3; its low bit in the 1-bit plane, byte 1, bit 1.
    codes = torch.zeros(1, 16, dtype=torch.uint8)
    codes[0, 9] = 5
    two_bit, one_bit = pack_codes(codes, 3)
    assert two_bit.tolist() == [[0, 0, 0b10 << 2, 0]]
    assert one_bit.tolist() == [[0, 1 << 1]]


def test_packing_rejects_non_uint8_codes_and_ragged_lengths():
    with pytest.raises(TQInputError, match="uint8"):
        pack_codes(torch.zeros(8, dtype=torch.int64), 4)
    with pytest.raises(TQInputError, match="multiple of 8"):
        pack_codes(torch.zeros(12, dtype=torch.uint8), 4)
