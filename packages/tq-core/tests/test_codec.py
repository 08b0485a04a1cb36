import math

import pytest
import torch

from tq_core import TQCodec, TQConfig, TQInputError, TQUnsupportedModelError

BF16_BYTES_D128 = 256


@pytest.mark.parametrize(("bits", "limit"), [(2, 36), (3, 52), (4, 68), (5, 84), (6, 100)])
def test_key_bytes_at_head_dim_128_meet_the_budget(bits, limit):
    codec = TQCodec(head_dim=128, k_bits=bits, v_bits=bits)
    print(f"{bits}-bit: {codec.key_bytes} bytes, {BF16_BYTES_D128 / codec.key_bytes:.2f}x")
    assert codec.key_bytes <= limit
    # Exact density: codes take head_dim * bits / 8 bytes, plus one fp32 norm.
    assert codec.key_bytes == 128 * bits // 8 + 4


def test_quickstart_from_the_readme_runs_as_written(generator):
    k = torch.randn(2, 5, 128, generator=generator)
    v = torch.randn(2, 5, 128, generator=generator)
    codec = TQCodec(head_dim=128, k_bits=4, v_bits=4)
    packed = codec.encode_keys(k)
    k_hat = codec.decode_keys(packed)
    packed_v = codec.encode_values(v)
    v_hat = codec.decode_values(packed_v)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 5, codec.key_bytes)
    assert packed_v.shape == (2, 5, codec.value_bytes)
    assert k_hat.dtype == torch.float32 and k_hat.shape == k.shape and v_hat.shape == v.shape


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_norm_correction_restores_each_vectors_norm(bits, generator):
    x = torch.randn(500, 64, generator=generator) * 7
    codec = TQCodec(head_dim=64, k_bits=bits, v_bits=bits)
    decoded = codec.decode_values(codec.encode_values(x))
    torch.testing.assert_close(decoded.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_every_float_input_dtype_encodes_to_the_same_bytes_as_its_fp32_value(dtype, generator):
    x = torch.randn(20, 128, generator=generator).to(dtype)
    codec = TQCodec(head_dim=128, k_bits=3, v_bits=5)
    assert torch.equal(codec.encode_keys(x), codec.encode_keys(x.float()))


def test_fp16_norms_take_two_bytes_and_keep_error_close_to_fp32(generator):
    x = torch.randn(2000, 128, generator=generator)
    errors = {}
    for norm_dtype in ("float32", "float16"):
        codec = TQCodec(head_dim=128, k_bits=4, v_bits=4, norm_dtype=norm_dtype)
        decoded = codec.decode_keys(codec.encode_keys(x))
        errors[norm_dtype] = ((decoded - x) ** 2).sum() / (x**2).sum()
        assert codec.key_bytes == 64 + (4 if norm_dtype == "float32" else 2)
    assert errors["float16"] < errors["float32"] * 1.01


def test_qjl_keys_give_unbiased_inner_products(generator):
    # The paper's estimator: E <q, k_hat> = <q, k>. Average over many keys; the bias must be
    # far below the spread of one estimate (5 standard errors).
    codec = TQCodec(head_dim=128, k_bits=3, v_bits=3, key_qjl=True)
    k = torch.randn(20000, 128, generator=generator)
    q = torch.randn(20000, 128, generator=generator)
    error = (q * codec.decode_keys(codec.encode_keys(k))).sum(-1) - (q * k).sum(-1)
    standard_error = error.std().item() / math.sqrt(error.numel())
    print(f"QJL inner-product bias {error.mean().item():.4f} +- {standard_error:.4f}")
    assert abs(error.mean().item()) < 5 * standard_error
    # QJL spends one bit of the code and adds a sign sketch and a residual norm.
    assert codec.key_bytes == 128 * 2 // 8 + 4 + 128 // 8 + 4


def test_plain_keys_bias_inner_products_towards_zero_which_qjl_removes(generator):
    # Why QJL exists: MSE-optimal codes shrink, so <q, k_hat> underestimates on average.
    k = torch.randn(20000, 128, generator=generator)
    plain = TQCodec(head_dim=128, k_bits=2, v_bits=2, norm_correction=False)
    k_hat = plain.decode_keys(plain.encode_keys(k))
    slope = ((k_hat * k).sum() / (k * k).sum()).item()
    assert slope < 0.95


def test_uncompressed_layers_store_bf16_of_the_rotated_vector(generator):
    x = torch.randn(30, 64, generator=generator)
    codec = TQCodec(head_dim=64, k_bits=16, v_bits=16)
    assert codec.key_bytes == 128
    torch.testing.assert_close(codec.decode_keys(codec.encode_keys(x)), x, rtol=2e-2, atol=2e-2)


def test_codec_from_config_follows_the_layer_policy():
    config = TQConfig(head_dim=64, k_bits=4, v_bits=2, skip_first_layers=1)
    assert TQCodec.from_config(config, layer=0, num_layers=4).key_bytes == 128
    assert TQCodec.from_config(config, layer=1, num_layers=4).value_bytes == 64 * 2 // 8 + 4


def test_zero_vectors_decode_to_zero():
    codec = TQCodec(head_dim=64, k_bits=4, v_bits=4)
    decoded = codec.decode_keys(codec.encode_keys(torch.zeros(3, 64)))
    assert torch.equal(decoded, torch.zeros(3, 64))


def test_bad_inputs_raise_clear_errors():
    codec = TQCodec(head_dim=128, k_bits=4, v_bits=4)
    with pytest.raises(TQInputError, match="float tensor"):
        codec.encode_keys(torch.zeros(2, 128, dtype=torch.int32))
    with pytest.raises(TQInputError, match="last dimension is 64, but this codec has head_dim=128"):
        codec.encode_keys(torch.randn(2, 64))
    with pytest.raises(TQInputError, match=r"uint8 \[\.\.\., 68\]"):
        codec.decode_keys(torch.zeros(2, 67, dtype=torch.uint8))
    with pytest.raises(TQUnsupportedModelError, match="head_dim=96"):
        TQCodec(head_dim=96)
