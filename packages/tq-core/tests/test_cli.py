import sys

import pytest

from tq_core.cli.bits import parse_bit_configs
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
