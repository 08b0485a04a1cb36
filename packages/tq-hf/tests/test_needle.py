"""The needle-in-a-haystack check of `tq eval --needle`, on the real SmolLM2 (CPU)."""

from __future__ import annotations

import json

from tq_core.cli import main as tq_main
from tq_core.cli import smollm2
from tq_hf import TQCache, needle

TEXT_CHARS = 40_000


def test_the_prompt_hides_the_passcode_at_the_asked_depth(smollm2_model):
    tokenizer, _ = smollm2_model
    text = smollm2.prose_text(TEXT_CHARS)
    for depth in (0.0, 0.5, 0.9):
        passcode = needle.passcode_for(depth)
        ids = needle.needle_prompt(tokenizer, text, 1024, depth, passcode)[0].tolist()
        assert abs(len(ids) - 1024) <= 64  # the chat template and re-tokenization vary it
        prompt = tokenizer.decode(ids)
        assert prompt.count(passcode) == 1
        assert prompt.rstrip().endswith(needle.ANSWER_START)
        where = prompt.index(passcode) / prompt.index(needle.QUESTION)
        assert abs(where - depth) < 0.05, (depth, where)


def test_k8v8_answers_as_uncompressed_kv_finds_the_needle(smollm2_model, restore_attention):
    tokenizer, model = smollm2_model
    configs = [
        ("bf16", lambda: None),
        ("K8V8", lambda: TQCache(model.config, k_bits=8, v_bits=8)),
        ("K4V4", lambda: TQCache(model.config, k_bits=4, v_bits=4)),
    ]
    text = smollm2.prose_text(TEXT_CHARS)
    results = needle.needle_test(model, tokenizer, text, 1024, [0.25], configs)
    print(needle.needle_table(results), *(repr(r.answer) for r in results), sep="\n")
    by_label = {r.label: r for r in results}
    assert by_label["bf16"].found
    assert by_label["K8V8"].answer == by_label["bf16"].answer
    assert results[0].context_tokens == results[2].context_tokens > 900


def test_tq_eval_needle_prints_and_records_each_depth(tmp_path, capsys, restore_attention):
    json_path = tmp_path / "needle.json"
    code = tq_main.main(
        ["eval", "--no-perplexity", "--needle", "512", "--needle-depths", "0.2,0.8",
         "--bits", "K8V8", "--json", str(json_path)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "d=0.2" in printed and "d=0.8" in printed
    record = json.loads(json_path.read_text())
    results = record["needle"]["results"]
    assert [(r["label"], r["depth"]) for r in results] == [
        ("bf16", 0.2), ("K8V8", 0.2), ("bf16", 0.8), ("K8V8", 0.8),
    ]  # fmt: skip
    assert "rows" not in record  # --no-perplexity
