import sys

import pytest

from tq_core.cli.bits import QualityConfig, parse_bit_configs, parse_quality_configs
from tq_core.cli.main import main
from tq_core.errors import TQConfigError


def test_demo_without_its_optional_packages_says_what_to_install(monkeypatch, tmp_path, capsys):
    # None in sys.modules makes the import fail, as on a machine without the demo extra.
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setenv("TQ_CACHE_DIR", str(tmp_path))
    assert main(["demo", "--tokens", "16"]) == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(error_lines) == 1
    assert "pip install" in error_lines[0]


def test_bit_configs_parse_and_bad_ones_name_the_problem():
    assert parse_bit_configs("K4V4, k6v4+qjl") == [(4, 4, False), (6, 4, True)]
    with pytest.raises(TQConfigError, match="'K4' is not understood"):
        parse_bit_configs("K4")
    with pytest.raises(TQConfigError, match="v_bits=9 is not supported"):
        parse_bit_configs("K4V9")
    with pytest.raises(TQConfigError, match="k_bits=1 cannot carry a QJL residual"):
        parse_bit_configs("K1V4+qjl")


def test_quality_configs_take_levers_in_any_order_and_refuse_unknown_ones():
    configs = parse_quality_configs("K4V4, k4v4+last2+QJL+first1")
    assert configs == [QualityConfig(4, 4), QualityConfig(4, 4, True, 1, 2)]
    assert configs[1].label == "K4V4+qjl+first1+last2"
    assert configs[1].options == {
        "k_bits": 4, "v_bits": 4, "key_qjl": True, "skip_first_layers": 1, "skip_last_layers": 2,
    }  # fmt: skip
    for bad in ("K4V4+middle1", "K4V4first1", "K4V4+qjlx", "+qjl"):
        with pytest.raises(TQConfigError, match="not understood"):
            parse_quality_configs(bad)
    with pytest.raises(TQConfigError, match="k_bits=1 cannot carry a QJL residual"):
        parse_quality_configs("K1V4+qjl")
