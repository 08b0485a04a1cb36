import pytest

from tq_core import TQConfig, TQConfigError, TQUnsupportedModelError


def test_keyword_config_round_trips_through_environment_variables():
    config = TQConfig(
        head_dim=64,
        k_bits=6,
        v_bits=4,
        norm_dtype="float16",
        seed=7,
        norm_correction=False,
        key_qjl=True,
        key_codebook="uniform",
        value_codebook="uniform",
        skip_first_layers=1,
        skip_last_layers=2,
        layer_bits={3: (8, 8), 5: (16, 16)},
    )
    assert TQConfig.from_env(config.to_env()) == config


def test_keyword_overrides_win_over_environment():
    config = TQConfig.from_env({"TQ_K_BITS": "5", "TQ_V_BITS": "3"}, v_bits=4)
    assert (config.k_bits, config.v_bits) == (5, 4)


def test_layer_policy_keeps_boundary_layers_uncompressed_and_map_wins():
    config = TQConfig(skip_first_layers=2, skip_last_layers=1, layer_bits={0: (8, 4), 10: (6, 4)})
    bits = [config.bits_for_layer(layer, 12) for layer in range(12)]
    assert bits[0] == (8, 4)  # the explicit map wins over the skip count
    assert bits[1] == (16, 16)
    assert bits[2:10] == [(4, 4)] * 8
    assert bits[10] == (6, 4)
    assert bits[11] == (16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_bits": 9}, "k_bits=9 is not supported; choose one of 1, 2, 3, 4, 5, 6, 7, 8"),
        ({"v_bits": 0}, "v_bits=0 is not supported"),
        ({"k_bits": 4.0}, "k_bits=4.0 is not supported"),
        ({"k_bits": 16}, "k_bits=16 is not supported"),
        ({"norm_dtype": "bfloat16"}, "norm_dtype='bfloat16' is not supported"),
        ({"seed": -1}, "seed=-1"),
        ({"key_qjl": True, "k_bits": 1}, "k_bits=1 cannot carry a QJL residual"),
        ({"skip_first_layers": -2}, "skip_first_layers=-2"),
        ({"value_codebook": "nf4"}, "value_codebook='nf4' is not supported; choose one of"),
        ({"layer_bits": {2: (9, 4)}}, r"layer_bits\[2\] k_bits=9"),
        ({"layer_bits": {2: 4}}, r"layer_bits\[2\]=4 must be \(k_bits, v_bits\)"),
    ],
)
def test_bad_values_raise_one_line_errors_naming_the_value(kwargs, message):
    with pytest.raises(TQConfigError, match=message) as error:
        TQConfig(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("head_dim", [80, 96, 112, 100, 512])
def test_unsupported_head_dim_names_the_supported_ones(head_dim):
    with pytest.raises(TQUnsupportedModelError, match=f"head_dim={head_dim} .*64, 128, 256"):
        TQConfig(head_dim=head_dim)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TQ_K_BITS": "four"}, "TQ_K_BITS='four' is not an integer"),
        ({"TQ_KEY_QJL": "maybe"}, "TQ_KEY_QJL='maybe' is not a boolean"),
        ({"TQ_KBITS": "4"}, "unknown environment variable TQ_KBITS"),
        ({"TQ_LAYER_BITS": "0=8,8"}, "TQ_LAYER_BITS='0=8,8' is not a layer map"),
        ({"TQ_V_BITS": "12"}, "v_bits=12 is not supported"),
    ],
)
def test_bad_environment_values_raise_clear_errors(environ, message):
    with pytest.raises(TQConfigError, match=message):
        TQConfig.from_env(environ)


def test_environment_layer_map_and_booleans_parse():
    config = TQConfig.from_env(
        {"TQ_LAYER_BITS": "0:8,8; 29:16,16", "TQ_NORM_CORRECTION": "off", "PATH": "/bin"}
    )
    assert config.layer_bits == {0: (8, 8), 29: (16, 16)}
    assert config.norm_correction is False
