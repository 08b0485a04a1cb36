"""What a uniform 4-bit codebook would cost in quality: perplexity with Lloyd-Max and with
evenly spaced levels, on SmolLM2 on this CPU.

    python benchmarks/uniform_codebook_quality.py \
        --out benchmarks/results/uniform-codebook-smollm2-cpu

Why: decode's 4-bit Lloyd-Max lookup (byte permutes over the codebook's magnitudes) is about a
quarter of the kernel's time. The uniform codebook (``codebook.uniform_levels``, TQConfig's
``key_codebook`` / ``value_codebook``) has levels affine in the code, so the kernel reads a
nibble as fp16 1024 + n with one OR per two codes; on an H200 K4V4 decode at head_dim 128 ran
1.15-1.19x faster with uniform values and 1.30-1.41x with both
(kernels-decode-llama-h200-6ad2e20). This measures the other side of that trade: the same
`tq eval` perplexity (teacher-forced, stdlib docstrings, key centering on), first with the
Lloyd-Max codebooks, then with every 4-bit codebook uniform. K4V8 isolates the keys, K8V4 the
values. (`tq eval --bits K4V4+uniformv,...` measures any config the same way.) Writes
``<out>.json`` and ``<out>.txt``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from tq_core import codebook
from tq_core.cli.provenance import environment_record


def use_uniform_4bit() -> None:
    """Every 4-bit codebook becomes the uniform one from here on (codec, reference, kernels), as
    if every config asked for ``key_codebook`` and ``value_codebook = "uniform"``."""
    lloyd_max = codebook._lloyd_max_fp64

    def levels(head_dim: int, bits: int) -> np.ndarray:
        return codebook.uniform_levels(head_dim, bits) if bits == 4 else lloyd_max(head_dim, bits)

    codebook._lloyd_max_fp64 = levels
    codebook._ON_DEVICE.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path prefix for .json and .txt")
    parser.add_argument("--bits", default="K4V4,K4V8,K8V4")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=1024)
    args = parser.parse_args()

    from tq_core.cli import smollm2
    from tq_core.cli.bits import parse_quality_configs
    from tq_core.cli.eval import _progress_bar
    from tq_hf import eval as harness

    started = time.time()
    model_dir = smollm2.ensure_model_folder(progress=lambda line: print(line, file=sys.stderr))
    tokenizer, model = smollm2.load_model(model_dir)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    text = smollm2.prose_text(min_chars=6 * args.tokens)
    chunks = harness.chunked_ids(tokenizer, text, args.tokens, args.chunk)
    configs = [(c.label, c.options) for c in parse_quality_configs(args.bits)]
    mse = {
        "lloyd_max": codebook.expected_unit_mse(head_dim, 4),
        "uniform": codebook.expected_unit_mse(head_dim, 4, "uniform"),
    }
    rows = {"lloyd_max": harness.evaluate(model, chunks, configs, _progress_bar, False, True)}
    use_uniform_4bit()
    rows["uniform"] = harness.evaluate(model, chunks, configs, _progress_bar, False, True)

    lines = [
        f"# python benchmarks/uniform_codebook_quality.py --bits {args.bits} "
        f"--tokens {args.tokens}; {model_dir.name}, head_dim {head_dim}",
        f"# expected unit-vector MSE at 4 bits: Lloyd-Max {mse['lloyd_max']:.5f}, "
        f"uniform {mse['uniform']:.5f} ({mse['uniform'] / mse['lloyd_max']:.3f}x)",
        f"{'config':8} {'codebook':10} {'perplexity':>11} {'delta':>8}",
    ]
    record_rows = []
    for name, table in rows.items():
        for row in table:
            lines.append(
                f"{row.label:8} {name:10} {row.perplexity:11.4f} {row.delta_percent:+7.2f}%"
            )
            record_rows.append({"codebook": name, **harness.as_json([row])[0]})
    text_out = "\n".join(lines)
    print(text_out)
    env = environment_record()
    env["seconds"] = round(time.time() - started, 1)
    record = {
        "model": model_dir.name, "head_dim": head_dim, "tokens_scored": sum(
            c.shape[1] - 1 for c in chunks
        ), "center_keys": True, "unit_mse_4bit": mse, "rows": record_rows, "environment": env,
    }  # fmt: skip
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".txt").write_text(text_out + "\n")


if __name__ == "__main__":
    main()
