"""`tq plan`: capacities checked against numbers worked out by hand from the model shape and the
documented byte format (codes of head_dim * bits / 8 bytes plus one norm per vector, regions
16-byte aligned), not against numbers the code printed."""

import json
import re

import pytest

from tq_core.cli import plan
from tq_core.cli.main import main
from tq_core.errors import TQUnsupportedModelError

GiB = 2**30

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 4096,  # no head_dim key: it must come out as 4096 / 32 = 128
}
# Gemma 3 multimodal: the language model lives in text_config; every 6th layer is global.
GEMMA3 = {
    "model_type": "gemma3",
    "architectures": ["Gemma3ForConditionalGeneration"],
    "text_config": {
        "model_type": "gemma3_text",
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_size": 2560,
        "sliding_window": 1024,
        "sliding_window_pattern": 6,
    },
    "vision_config": {"model_type": "siglip_vision_model", "num_hidden_layers": 27},
}
MISTRAL = {
    "model_type": "mistral",
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 4096,
    "sliding_window": 4096,
}
DEEPSEEK_V3 = {
    "model_type": "deepseek_v3",
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "hidden_size": 7168,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
}
T5 = {
    "model_type": "t5",
    "is_encoder_decoder": True,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_size": 768,
}
HEAD_DIM_80 = {
    "model_type": "phi",
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "hidden_size": 2560,
}


@pytest.fixture
def write_cfg(tmp_path):
    """write_cfg(config) -> path of a config.json holding it, in this test's tmp_path."""

    def write(config):
        path = tmp_path / f"config{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(config))
        return str(path)

    return write


def bf16_bytes_per_layer(num_kv_heads, head_dim):
    return 2 * num_kv_heads * head_dim * 2  # K and V, 2 bytes per element


def tq_vector_bytes(head_dim, bits, norm_bytes=4):
    return head_dim * bits // 8 + norm_bytes  # exact-density codes + one norm


def run_plan(capsys, *argv):
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def table(out):
    """{label: [cells...]} of the printed table (label is the first column)."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and re.fullmatch(r"bf16|fp8|K\d+V\d+(\+qjl)?", cells[0]):
            rows[cells[0]] = cells[1:]
    return rows


def num(cell):
    return float(cell.replace(",", "").removesuffix("x"))


def test_llama3_8b_bf16_fp8_and_k4v4_from_first_principles(capsys, write_cfg):
    code, out, err = run_plan(capsys, write_cfg(LLAMA3_8B), "--kv-memory", "80GiB")
    assert code == 0 and err == ""
    rows = table(out)
    assert list(rows) == ["bf16", "fp8", "K8V8", "K6V4", "K5V4", "K4V4", "K3V3", "K2V2"]
    bf16 = 32 * 8 * 128 * 2 * 2
    assert bf16 == 131072
    assert num(rows["bf16"][0]) == bf16
    assert num(rows["bf16"][2]) == 80 * GiB // bf16 == 655360
    assert num(rows["fp8"][0]) == bf16 // 2
    k4v4 = (128 * 4 // 8 + 4) * 2 * 8 * 32  # 68 bytes per K and per V, 8 heads, 32 layers
    assert num(rows["K4V4"][0]) == k4v4 == 34816
    assert num(rows["K4V4"][1]) == round(bf16 / k4v4, 2)
    assert num(rows["K4V4"][2]) == 80 * GiB // k4v4
    assert num(rows["K4V4"][3]) == 80 * GiB // k4v4  # one sequence gets it all
    assert "CacheLayout" in out


@pytest.mark.parametrize("block_size", [16, 32, 128])
@pytest.mark.parametrize("k_bits,v_bits", [(8, 8), (6, 4), (5, 4), (4, 4), (3, 3), (2, 2)])
def test_every_tq_config_matches_the_format_when_pages_need_no_padding(block_size, k_bits, v_bits):
    shape = plan.model_shape(LLAMA3_8B)
    result = plan.plan(shape, 40 * GiB, [(k_bits, v_bits, False)], block_size=block_size)
    row = result["rows"][2]
    expected = 32 * 8 * (tq_vector_bytes(128, k_bits) + tq_vector_bytes(128, v_bits))
    assert row["kv"] == f"K{k_bits}V{v_bits}"
    assert row["bytes_per_token"] == expected
    assert row["kv_tokens"] == 40 * GiB // expected
    assert row["vs_bf16"] == pytest.approx(131072 / expected)


def test_float16_norms_and_skipped_boundary_layers_count_as_bf16():
    shape = plan.model_shape(LLAMA3_8B)
    result = plan.plan(
        shape, 80 * GiB, [(4, 4, False)], norm_dtype="float16",
        skip_first_layers=2, skip_last_layers=1,
    )  # fmt: skip
    compressed = 2 * 8 * tq_vector_bytes(128, 4, norm_bytes=2)  # 66 bytes per vector
    expected = 29 * compressed + 3 * bf16_bytes_per_layer(8, 128)
    assert result["rows"][2]["bytes_per_token"] == expected
    assert result["rows"][2]["kv_tokens"] == 80 * GiB // expected


def test_page_padding_is_included():
    # One KV head and one token per page: the 4-byte norm region is padded to 16 bytes.
    mqa = {**LLAMA3_8B, "num_key_value_heads": 1}
    shape = plan.model_shape(mqa)
    result = plan.plan(shape, GiB, [(4, 4, False)], block_size=1)
    assert result["rows"][2]["bytes_per_token"] == 32 * 2 * (64 + 16)


def test_num_seqs_splits_context_and_json_is_written(capsys, tmp_path, write_cfg):
    out_json = tmp_path / "plan.json"
    code, out, _ = run_plan(
        capsys, write_cfg(LLAMA3_8B), "--kv-memory", "80GB", "--bits", "K4V4,K6V4",
        "--num-seqs", "4", "--json", str(out_json),
    )  # fmt: skip
    assert code == 0
    data = json.loads(out_json.read_text())
    assert [row["kv"] for row in data["rows"]] == ["bf16", "fp8", "K4V4", "K6V4"]
    assert data["kv_memory_bytes"] == 80 * 10**9
    k6v4 = 32 * 8 * (tq_vector_bytes(128, 6) + tq_vector_bytes(128, 4))
    row = data["rows"][3]
    assert row["bytes_per_token"] == k6v4
    assert row["kv_tokens"] == 80 * 10**9 // k6v4
    assert row["context_per_seq"] == (80 * 10**9 // k6v4) // 4
    assert num(table(out)["K6V4"][3]) == row["context_per_seq"]


def test_gemma3_text_config_and_sliding_pattern():
    shape = plan.model_shape(GEMMA3)
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (12, 4, 256)
    assert [i for i, s in enumerate(shape.sliding) if not s] == [5, 11]
    assert shape.sliding_window == 1024
    layer = bf16_bytes_per_layer(4, 256)
    full, sliding = 2 * layer, 10 * layer
    memory, seqs = GiB, 2
    result = plan.plan(shape, memory, [(4, 4, False)], num_seqs=seqs)
    bf16 = result["rows"][0]
    assert bf16["bytes_per_token"] == full + sliding
    # memory = full * tokens + seqs * window * sliding
    expected = (memory - seqs * 1024 * sliding) // full
    assert bf16["kv_tokens"] == expected
    assert bf16["context_per_seq"] == expected // seqs
    tq_layer = 2 * 4 * tq_vector_bytes(256, 4)
    k4v4 = result["rows"][2]
    assert k4v4["kv_tokens"] == (memory - seqs * 1024 * 10 * tq_layer) // (2 * tq_layer)


def test_gemma3_layer_types_give_the_same_shape():
    text = {k: v for k, v in GEMMA3["text_config"].items() if k != "sliding_window_pattern"}
    text["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                           for i in range(12)]  # fmt: skip
    assert plan.model_shape({**GEMMA3, "text_config": text}) == plan.model_shape(GEMMA3)


def test_hybrid_models_count_only_their_attention_layers(capsys, write_cfg):
    """LFM2-style: convolution layers keep a fixed state, not K/V; only attention layers count."""
    config = {"model_type": "lfm2", "num_hidden_layers": 6, "num_attention_heads": 8,
              "num_key_value_heads": 2, "hidden_size": 512,
              "layer_types": ["conv", "conv", "full_attention"] * 2}  # fmt: skip
    shape = plan.model_shape(config)
    assert shape.attention == (False, False, True) * 2
    bf16 = plan.plan(shape, 2**30, [])["rows"][0]
    assert bf16["bytes_per_token"] == 2 * bf16_bytes_per_layer(2, 64)
    assert main(["plan", str(write_cfg(config)), "--kv-memory", "1GiB"]) == 0
    assert "Hybrid model: 2 of 6 layers keep K/V" in capsys.readouterr().out
    for kinds, message in ((["conv", "chunked_attention"], "chunked_attention"),
                           (["conv", "mamba"], "no attention layer")):  # fmt: skip
        with pytest.raises(TQUnsupportedModelError, match=message):
            plan.model_shape({**config, "num_hidden_layers": 2, "layer_types": kinds})


def test_sequences_shorter_than_the_window_fill_sliding_layers_too():
    shape = plan.model_shape(GEMMA3)
    per_token = 12 * bf16_bytes_per_layer(4, 256)
    memory = 10 * 2**20  # far less than two windows
    row = plan.plan(shape, memory, [], num_seqs=2)["rows"][0]
    assert row["context_per_seq"] == memory // (2 * per_token) < 1024


def test_gemma3_cli_footnote(capsys, write_cfg):
    code, out, _ = run_plan(capsys, write_cfg(GEMMA3), "--kv-memory", "16GiB")
    assert code == 0
    assert "10 of 12 layers are sliding-window (1,024 tokens)" in out


def test_all_sliding_mistral_reports_window_sequences(capsys, write_cfg):
    code, out, _ = run_plan(capsys, write_cfg(MISTRAL), "--kv-memory", "80GiB", "--bits", "K4V4")
    assert code == 0
    assert "window seqs" in out and "at most 4,096 tokens" in out
    rows = table(out)
    assert num(rows["bf16"][3]) == 80 * GiB // (4096 * 131072) == 160
    k4v4 = 32 * 8 * 2 * tq_vector_bytes(128, 4)
    assert num(rows["K4V4"][3]) == 80 * GiB // (4096 * k4v4)


def test_use_sliding_window_false_ignores_the_window():
    shape = plan.model_shape({**MISTRAL, "model_type": "qwen2", "use_sliding_window": False})
    assert not any(shape.sliding) and shape.sliding_window is None
    row = plan.plan(shape, 80 * GiB, [])["rows"][0]
    assert row["kv_tokens"] == row["context_per_seq"] == 655360


def test_qwen2_max_window_layers_and_gemma2_alternation():
    qwen = {**MISTRAL, "use_sliding_window": True, "max_window_layers": 28}
    assert [i for i, s in enumerate(plan.model_shape(qwen).sliding) if s] == [28, 29, 30, 31]
    gemma2 = {**MISTRAL, "model_type": "gemma2", "num_hidden_layers": 4}
    assert plan.model_shape(gemma2).sliding == (True, False, True, False)


@pytest.mark.parametrize(
    "text,expected",
    [("40GiB", 40 * GiB), ("80GB", 80 * 10**9), ("512MiB", 512 * 2**20), ("1.5 gib", 3 * GiB // 2),
     ("1024", 1024)],
)  # fmt: skip
def test_parse_memory(text, expected):
    assert plan.parse_memory(text) == expected


def assert_one_line_error(capsys, argv, *needles):
    code, out, err = run_plan(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("tq plan: error: ")
    for needle in needles:
        assert needle in err
    return err


@pytest.mark.parametrize("memory", ["80G", "lots", "0GiB", "-5GiB", "5 PiB"])
def test_bad_memory_is_one_line_error(capsys, memory, write_cfg):
    assert_one_line_error(capsys, [write_cfg(LLAMA3_8B), f"--kv-memory={memory}"], "--kv-memory")


@pytest.mark.parametrize(
    "config,needles",
    [(DEEPSEEK_V3, ["MLA"]), ({**LLAMA3_8B, "kv_lora_rank": 512}, ["MLA"]),
     (T5, ["encoder-decoder"]), (HEAD_DIM_80, ["head_dim=80", "64, 128, 256"])],
)  # fmt: skip
def test_unsupported_models_are_one_line_errors(capsys, config, needles, write_cfg):
    assert_one_line_error(capsys, [write_cfg(config), "--kv-memory", "80GiB"], *needles)


def test_missing_and_invalid_config_files(capsys, tmp_path, write_cfg):
    missing = str(tmp_path / "nope.json")
    assert_one_line_error(capsys, [missing, "--kv-memory", "1GiB"], "does not exist")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_one_line_error(capsys, [str(bad), "--kv-memory", "1GiB"], "cannot read")
    no_layers = {k: v for k, v in LLAMA3_8B.items() if k != "num_hidden_layers"}
    assert_one_line_error(capsys, [write_cfg(no_layers), "--kv-memory", "1GiB"], "num_hidden")


@pytest.mark.parametrize(
    "option", [["--bits", "K9V4"], ["--bits", "Q4"], ["--norm-dtype", "int8"], ["--num-seqs", "0"]]
)
def test_bad_options_are_one_line_errors(capsys, option, write_cfg):
    assert_one_line_error(capsys, [write_cfg(LLAMA3_8B), "--kv-memory", "1GiB", *option])
