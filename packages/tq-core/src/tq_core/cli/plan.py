"""`tq plan`: how many KV tokens fit in a GPU memory budget, for bf16, fp8 and tq bit configs.

Every tq figure comes from :class:`tq_core.layout.CacheLayout` (page bytes, alignment padding
included), so the plan is what an adapter would allocate; this module does no byte arithmetic
of codes. bf16 and fp8 rows are plain 2 and 1 bytes per element.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from tq_core.cli.bits import parse_bit_configs
from tq_core.codec import TQCodec
from tq_core.config import NORM_DTYPES, TQConfig
from tq_core.errors import TQConfigError
from tq_core.model_shape import ModelShape, model_shape

DEFAULT_BITS = "K8V8,K6V4,K5V4,K4V4,K3V3,K2V2"
# Two-letter-or-more units only: a bare "G" could mean GB or GiB, and a plan that is off by 7%
# is worse than an error.
UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """``"40GiB"`` / ``"80GB"`` / ``"512MiB"`` / ``"1073741824"`` -> bytes."""
    match = _MEMORY.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in UNITS | {"": 1}:
        raise TQConfigError(
            f"--kv-memory {text!r} is not a memory size; write a number with a unit such as "
            "40GiB, 80GB or 512MiB (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    nbytes = int(Fraction(match.group(1)) * UNITS.get(unit, 1))
    if nbytes <= 0:
        raise TQConfigError(f"--kv-memory {text!r} must be more than 0 bytes")
    return nbytes


def load_model_config(path: str | Path) -> dict:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TQConfigError(f"model config {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TQConfigError(f"cannot read model config {str(path)!r}: {error}") from None
    if not isinstance(config, dict):
        raise TQConfigError(f"model config {str(path)!r} is not a JSON object")
    return config


@dataclass(frozen=True)
class Row:
    """K+V bytes of one token, summed over full-attention and over sliding-window layers.

    Fractions keep capacities exact when block_size makes page padding fractional per token.
    """

    label: str
    full: Fraction
    sliding: Fraction

    @property
    def bytes_per_token(self) -> Fraction:
        return self.full + self.sliding


def plain_row(label: str, bytes_per_element: int, shape: ModelShape) -> Row:
    per_layer = Fraction(2 * shape.num_kv_heads * shape.head_dim * bytes_per_element)
    sliding = sum(s and a for s, a in zip(shape.sliding, shape.attention, strict=True))
    full = sum(shape.attention) - sliding
    return Row(label, per_layer * full, per_layer * sliding)


def tq_row(shape: ModelShape, config: TQConfig, block_size: int) -> Row:
    """Per-layer bits come from the config's policy, so skipped boundary layers count as bf16."""
    sums = {False: Fraction(0), True: Fraction(0)}
    for layer, is_sliding in enumerate(shape.sliding):
        if not shape.attention[layer]:  # a hybrid model's recurrent layer: no K/V
            continue
        layout = TQCodec.from_config(config, layer, shape.num_layers).cache_layout(
            shape.num_kv_heads, block_size
        )
        sums[is_sliding] += Fraction(layout.page_bytes, layout.block_size)
    label = f"K{config.k_bits}V{config.v_bits}" + ("+qjl" if config.key_qjl else "")
    return Row(label, sums[False], sums[True])


def capacity(row: Row, shape: ModelShape, memory: int, num_seqs: int) -> dict:
    """Tokens that fit. A sliding layer keeps at most ``window`` tokens of each sequence, so
    ``num_seqs`` sequences of c tokens cost ``num_seqs * (c * full + min(c, window) * sliding)``.
    """
    window = shape.sliding_window
    if not window:
        kv_tokens = math.floor(memory / row.full)
    elif row.full == 0:
        # Every layer is sliding: no sequence grows past the window, so count whole windows.
        window_seqs = math.floor(memory / (window * row.sliding))
        return {"kv_tokens": math.floor(memory / row.sliding), "window_seqs": window_seqs}
    elif memory >= num_seqs * window * row.bytes_per_token:
        # Sequences longer than the window: their sliding layers are full at a window each.
        kv_tokens = math.floor((memory - num_seqs * window * row.sliding) / row.full)
    else:
        # Sequences shorter than the window: sliding layers hold every token too.
        kv_tokens = num_seqs * math.floor(memory / (num_seqs * row.bytes_per_token))
    return {"kv_tokens": kv_tokens, "context_per_seq": kv_tokens // num_seqs}


def plan(shape: ModelShape, memory: int, bits, block_size=16, num_seqs=1, **tq_options) -> dict:
    """The plan as a JSON-able dict. ``tq_options`` (norm_dtype, skip_first_layers,
    skip_last_layers, ...) go to TQConfig, which validates them and says which layers stay bf16."""
    if isinstance(num_seqs, bool) or not isinstance(num_seqs, int) or num_seqs < 1:
        raise TQConfigError(f"--num-seqs={num_seqs!r} must be an integer >= 1")
    rows = [plain_row("bf16", 2, shape), plain_row("fp8", 1, shape)]
    for k_bits, v_bits, key_qjl in bits:
        config = TQConfig(shape.head_dim, k_bits, v_bits, key_qjl=key_qjl, **tq_options)
        rows.append(tq_row(shape, config, block_size))
    entries = [
        {
            "kv": row.label,
            "bytes_per_token": float(row.bytes_per_token),
            "vs_bf16": float(rows[0].bytes_per_token / row.bytes_per_token),
            **capacity(row, shape, memory, num_seqs),
        }
        for row in rows
    ]
    model = {**shape.__dict__, "sliding": list(shape.sliding), "attention": list(shape.attention)}
    settings = {"kv_memory_bytes": memory, "block_size": block_size, "num_seqs": num_seqs}
    return {"model": model, **settings, "tq_options": tq_options, "rows": entries}


def format_plan(result: dict, source: str = "model") -> str:
    """An aligned table with a header naming the model and footnotes saying how we counted."""
    model, seqs, options = result["model"], result["num_seqs"], result["tq_options"]
    window, num_kv_layers = model["sliding_window"], sum(model["attention"])
    num_sliding = sum(s and a for s, a in zip(model["sliding"], model["attention"], strict=True))
    all_sliding = num_sliding == num_kv_layers
    gib = result["kv_memory_bytes"] / 2**30
    capped = "window seqs" if all_sliding else "context per seq"
    table = [["KV", "bytes/token", "vs bf16", "KV tokens", capped]] + [
        [row["kv"], f"{row['bytes_per_token']:,.2f}".removesuffix(".00"), f"{row['vs_bf16']:.2f}x",
         f"{row['kv_tokens']:,}", f"{row['window_seqs' if all_sliding else 'context_per_seq']:,}"]
        for row in result["rows"]
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [
        f"{source}: {model['model_type']}, {model['num_layers']} layers, "
        f"{model['num_kv_heads']} KV heads, head_dim {model['head_dim']}",
        f"KV memory {gib:,.2f}".removesuffix(".00")
        + f" GiB ({result['kv_memory_bytes']:,} bytes), block size {result['block_size']}, "
        f"{seqs} sequence{'s' if seqs > 1 else ''}",
        "",
    ]
    for line in table:
        # Labels left-aligned, numbers right-aligned so digits line up.
        cells = [cell.rjust(width) for cell, width in zip(line, widths, strict=True)]
        lines.append("  ".join([line[0].ljust(widths[0]), *cells[1:]]))
    lines += [
        "",
        "bytes/token: K+V of one token summed over all layers; tq rows from CacheLayout "
        f"(norms {options.get('norm_dtype', 'float32')}, page padding included).",
    ]
    if num_kv_layers < model["num_layers"]:
        lines.append(
            f"Hybrid model: {num_kv_layers} of {model['num_layers']} layers keep K/V (the others "
            "keep a fixed-size recurrent state the engine manages); only those are counted."
        )
    first, last = options.get("skip_first_layers", 0), options.get("skip_last_layers", 0)
    if first or last:
        lines.append(f"tq rows keep the first {first} and last {last} layers in bf16.")
    if all_sliding:
        lines.append(
            f"Every layer is sliding-window: each sequence holds at most {window:,} tokens; "
            "'window seqs' is how many sequences of a full window fit."
        )
    elif num_sliding:
        lines.append(
            f"{num_sliding} of {model['num_layers']} layers are sliding-window ({window:,} "
            f"tokens) and hold at most {window:,} tokens of each of the {seqs} sequence(s); "
            "KV tokens and context count what fits in the full-attention layers after that."
        )
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="KV tokens that fit in GPU memory, per bit width",
        description="KV-cache capacity of a model (HF config.json) at bf16, fp8 and tq bits.",
    )
    add = parser.add_argument
    add("config", help="path to the model's HF config.json")
    add("--kv-memory", required=True, help="GPU memory for the KV cache: 40GiB, 80GB, 512MiB")
    add("--bits", default=DEFAULT_BITS, help=f"tq configs, +qjl allowed (default {DEFAULT_BITS})")
    add("--block-size", type=int, default=16, help="tokens per page (default 16)")
    add("--norm-dtype", default="float32", help="norm dtype: " + " or ".join(NORM_DTYPES))
    add("--skip-first-layers", type=int, default=0, help="keep the first N layers in bf16")
    add("--skip-last-layers", type=int, default=0, help="keep the last N layers in bf16")
    add("--num-seqs", type=int, default=1, help="sequences sharing the cache (default 1)")
    add("--json", metavar="PATH", help="also write the plan as JSON to PATH")
    parser.set_defaults(run=run)


def run(args) -> int:
    memory, bits = parse_memory(args.kv_memory), parse_bit_configs(args.bits)
    shape = model_shape(load_model_config(args.config))
    names = ("norm_dtype", "skip_first_layers", "skip_last_layers")
    tq_options = {name: getattr(args, name) for name in names}
    result = plan(shape, memory, bits, args.block_size, args.num_seqs, **tq_options)
    print(format_plan(result, args.config))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise TQConfigError(f"cannot write --json {args.json!r}: {error}") from None
    return 0
