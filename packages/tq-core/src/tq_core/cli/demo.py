"""`tq demo`: compress the real K/V of a real model (SmolLM2-135M, on CPU) at each bit width.

It runs the model once over real prose, takes every layer's K and V as attention sees them
(keys after RoPE), encodes and decodes them with the codec and prints, per bit config, the
bytes per token from CacheLayout, the compression against bf16 and the reconstruction error.
With tq-hf installed it then generates from one prompt with bf16 KV and with a TQCache
(--generate, K4V4 by default) and prints both texts, the bytes each cache holds and the
perplexity change on a short text.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import torch

from tq_core.cli.bits import parse_bit_configs
from tq_core.cli.provenance import environment_record
from tq_core.codec import TQCodec
from tq_core.errors import TQConfigError

DEFAULT_BITS = "K8V8,K6V4,K5V4,K4V4,K3V3,K2V2"
BLOCK_SIZE = 16


def add_parser(verbs) -> None:
    parser = verbs.add_parser(
        "demo",
        help="encode a real model's K/V at each bit width and print size and error",
        description=__doc__,
    )
    parser.add_argument("--tokens", type=int, default=1024, help="prose tokens to run (1024)")
    parser.add_argument("--bits", default=DEFAULT_BITS, help=f"bit configs ({DEFAULT_BITS})")
    parser.add_argument(
        "--cache-dir",
        type=pathlib.Path,
        default=None,
        help="where the converted model folder is kept ($TQ_CACHE_DIR)",
    )
    parser.add_argument(
        "--generate",
        default="K4V4",
        help="also generate with bf16 KV and this config through tq-hf's TQCache (K4V4; off)",
    )
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write JSON here")
    parser.set_defaults(run=run)


def _relative_error(decoded: torch.Tensor, original: torch.Tensor) -> float:
    return ((decoded - original).pow(2).sum() / original.pow(2).sum()).item()


def _mean_cosine(decoded: torch.Tensor, original: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(decoded, original, dim=-1).mean().item()


def measure(keys, values, info, k_bits: int, v_bits: int, key_qjl: bool = False) -> dict:
    """Encode/decode every layer at one bit config; sizes come from CacheLayout."""
    codec = TQCodec(info["head_dim"], k_bits, v_bits, key_qjl=key_qjl)
    layout = codec.cache_layout(info["num_kv_heads"], BLOCK_SIZE)
    bf16_bytes = 2 * 2 * info["num_kv_heads"] * info["head_dim"] * info["num_layers"]
    tq_bytes = layout.bytes_per_token * info["num_layers"]
    k_err = v_err = k_cos = v_cos = 0.0
    for layer_keys, layer_values in zip(keys, values, strict=True):
        k_hat = codec.decode_keys(codec.encode_keys(layer_keys))
        v_hat = codec.decode_values(codec.encode_values(layer_values))
        k_err += _relative_error(k_hat, layer_keys) / len(keys)
        v_err += _relative_error(v_hat, layer_values) / len(keys)
        k_cos += _mean_cosine(k_hat, layer_keys) / len(keys)
        v_cos += _mean_cosine(v_hat, layer_values) / len(keys)
    return {
        "k_bits": k_bits,
        "v_bits": v_bits,
        "key_qjl": key_qjl,
        "bytes_per_token": tq_bytes,
        "bf16_bytes_per_token": bf16_bytes,
        "compression_vs_bf16": bf16_bytes / tq_bytes,
        "key_relative_mse": k_err,
        "value_relative_mse": v_err,
        "key_cosine": k_cos,
        "value_cosine": v_cos,
    }


def print_table(rows: list[dict], info: dict) -> None:
    tokens = info["tokens"]
    print(
        f"\n{info['model']}: {info['num_layers']} layers, {info['num_kv_heads']} KV heads, "
        f"head_dim {info['head_dim']}; K/V of {tokens} tokens of CPython docstrings\n"
    )
    header = (
        f"{'KV':<10}{'bytes/token':>12}{'vs bf16':>9}{'KV MiB':>8}"
        f"{'K rel MSE':>11}{'V rel MSE':>11}{'K cos':>9}{'V cos':>9}"
    )
    print(header)
    print("-" * len(header))
    bf16 = rows[0]["bf16_bytes_per_token"]
    print(
        f"{'bf16':<10}{bf16:>12,}{1:>8.2f}x{bf16 * tokens / 2**20:>8.2f}"
        f"{0:>11}{0:>11}{1:>9.4f}{1:>9.4f}"
    )
    for row in rows:
        name = f"K{row['k_bits']}V{row['v_bits']}" + ("+qjl" if row["key_qjl"] else "")
        print(
            f"{name:<10}{row['bytes_per_token']:>12,.0f}{row['compression_vs_bf16']:>8.2f}x"
            f"{row['bytes_per_token'] * tokens / 2**20:>8.2f}{row['key_relative_mse']:>11.2e}"
            f"{row['value_relative_mse']:>11.2e}{row['key_cosine']:>9.4f}"
            f"{row['value_cosine']:>9.4f}"
        )
    print("\nrel MSE = ||x_hat - x||^2 / ||x||^2 over all layers; cos = mean cosine per vector.")


def run(args) -> int:
    from tq_core.cli import smollm2

    configs = parse_bit_configs(args.bits)
    start = time.perf_counter()
    model_dir = smollm2.ensure_model_folder(args.cache_dir, progress=_progress)
    _progress(f"running {smollm2.MODEL_NAME} over {args.tokens} tokens of prose")
    text = smollm2.prose_text(args.tokens * 8)
    keys, values, info = smollm2.capture_kv(model_dir, text, args.tokens)
    rows = []
    for index, (k_bits, v_bits, key_qjl) in enumerate(configs, start=1):
        name = f"K{k_bits}V{v_bits}" + ("+qjl" if key_qjl else "")
        _progress(f"[{index}/{len(configs)}] encoding {name} over all {info['num_layers']} layers")
        rows.append(measure(keys, values, info, k_bits, v_bits, key_qjl))
    print_table(rows, info)
    generation = _generate(model_dir, text, args.generate) if args.generate != "off" else None
    _progress(f"done in {time.perf_counter() - start:.0f} s")
    if args.json:
        record = {
            "command": "tq demo " + " ".join(sys.argv[2:]),
            "info": info,
            "rows": rows,
            "generation": generation,
            "environment": environment_record(),
            "seconds": time.perf_counter() - start,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _generate(model_dir, text: str, bits: str) -> dict | None:
    """Generation with bf16 KV and with TQCache (tq-hf), printed; None without tq-hf."""
    try:
        from tq_hf import demo as hf_demo
    except ImportError:
        print("\n(generation with a compressed cache: pip install tq-hf)")
        return None
    from tq_core.cli import smollm2

    configs = parse_bit_configs(bits)
    if len(configs) != 1 or configs[0][2]:
        raise TQConfigError(f"--generate takes one config without +qjl, got {bits!r}")
    k_bits, v_bits, _ = configs[0]
    tokenizer, model = smollm2.load_model(model_dir)
    _progress(f"generating with bf16 KV and K{k_bits}V{v_bits} (tq-hf TQCache)")
    result = hf_demo.compare(model, tokenizer, k_bits, v_bits, text)
    name = result["config"]
    print(f"\nprompt: {result['prompt']!r}")
    print(f"bf16 KV: {result['bf16_text']!r}")
    print(f"{name} KV: {result['tq_text']!r}")
    print(
        f"KV cache after {result['tokens_held']} tokens: bf16 {result['bf16_cache_bytes']:,} B, "
        f"{name} {result['tq_cache_bytes']:,} B ({result['compression']:.2f}x smaller, measured "
        f"from the caches' tensors); greedy tokens agree for {result['greedy_agreement_tokens']}"
    )
    print(
        f"perplexity over {result['perplexity_tokens']} tokens: bf16 KV "
        f"{result['perplexity_bf16']:.3f}, {name} {result['perplexity_tq']:.3f} "
        f"({result['perplexity_delta_percent']:+.2f}%)"
    )
    return result


def _progress(message: str) -> None:
    print(f"tq demo: {message}", file=sys.stderr, flush=True)
