"""The quality harness behind `tq eval`: teacher-forced perplexity with K/V in tq, per bit config.

Each chunk of text is one forward pass with a fresh cache: with a `TQCache` every token attends
to the compressed K/V of all earlier tokens (and its own), exactly what serving does. The same
numbers through a plain "fake-quantize, then sdpa" cache (`FakeQuantCache`) check that the
cache and attention path add no error of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from tq_core import TQCodec, TQConfig
from tq_core.centering import key_mean
from tq_hf.cache import TQCache, supported_shape

BF16_LABEL = "bf16"


@dataclass
class EvalRow:
    label: str  # "bf16", "K4V4", "K4V4+qjl+first1"
    k_bits: int
    v_bits: int
    bytes_per_token: int  # K+V bytes of one token over all layers and KV heads (no padding)
    perplexity: float
    delta_percent: float  # perplexity increase over bf16 KV, in percent
    # The same config through FakeQuantCache + sdpa, when asked for (None otherwise).
    fake_quant_perplexity: float | None = None
    options: dict = field(default_factory=dict)  # the TQConfig keywords of this row


class FakeQuantCache(DynamicCache):
    """A DynamicCache that stores K/V after the codec's encode + decode (original domain).

    Attention over it is ordinary sdpa, so it is the independent twin of TQCache's path. Its key
    mean (``center_keys``) counts every token of the first chunk: give it unpadded input."""

    def __init__(self, config, *, center_keys: bool = True, **tq_options) -> None:
        super().__init__(config=config)
        self.center_keys = center_keys
        self.key_means: dict[int, torch.Tensor] = {}
        shape = supported_shape(config)
        tq = TQConfig.from_env(head_dim=shape.head_dim, **tq_options)
        self.codecs = [
            TQCodec.from_config(tq, i, shape.num_layers) for i in range(shape.num_layers)
        ]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        codec = self.codecs[layer_idx]
        if self.center_keys:  # as TQCache: first chunk's mean per head, kept
            if layer_idx not in self.key_means:
                self.key_means[layer_idx] = key_mean(key_states)
            key_states = key_states - self.key_means[layer_idx]
        # float64 models: rotate back in float64, so both paths share the model's precision.
        dtype = torch.promote_types(key_states.dtype, torch.float32)
        keys = codec.decode_keys(codec.encode_keys(key_states), dtype).to(key_states.dtype)
        values = codec.decode_values(codec.encode_values(value_states), dtype)
        values = values.to(value_states.dtype)
        return super().update(keys, values, layer_idx, *args, **kwargs)


def chunked_ids(tokenizer, text: str, tokens: int, chunk: int) -> list[torch.Tensor]:
    """The first ``tokens`` tokens of ``text`` as [1, chunk] id tensors (whole chunks only)."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    usable = min(tokens, ids.numel()) // chunk * chunk
    if usable == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one chunk of {chunk}")
    return [ids[i : i + chunk].unsqueeze(0) for i in range(0, usable, chunk)]


def perplexity(model, chunks: Iterable[torch.Tensor], make_cache: Callable, step=None) -> float:
    """exp(mean next-token NLL) over all chunks, each run as one forward with a fresh cache."""
    total, count = 0.0, 0
    for ids in chunks:
        with torch.inference_mode():
            logits = model(ids, past_key_values=make_cache(), use_cache=True).logits[0, :-1]
        total += F.cross_entropy(logits.float(), ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
        if step is not None:
            step()
    return math.exp(total / count)


def bytes_per_token(config, **tq_options) -> int:
    """Packed K+V bytes of one token over every K/V layer and KV head, for ``TQConfig``
    keywords; ``k_bits=16, v_bits=16`` is the bf16 cache. A hybrid model's layers without
    K/V (linear attention, convolutions) count nothing."""
    shape = supported_shape(config)
    kv_layers = [i for i in range(shape.num_layers) if shape.attention[i]]
    if (tq_options.get("k_bits"), tq_options.get("v_bits")) == (16, 16):
        return 2 * 2 * shape.head_dim * shape.num_kv_heads * len(kv_layers)
    tq = TQConfig(head_dim=shape.head_dim, **tq_options)
    return sum(
        TQCodec.from_config(tq, i, shape.num_layers)
        .cache_layout(shape.num_kv_heads, 16)
        .packed_bytes_per_token
        for i in kv_layers
    )


def evaluate(
    model,
    chunks: list[torch.Tensor],
    configs: list[tuple[str, dict]],
    progress=None,
    compare_fake_quant: bool = False,
    center_keys: bool = True,
) -> list[EvalRow]:
    """bf16 KV first, then each ``(label, TQConfig keywords)`` through TQCache (and
    FakeQuantCache when ``compare_fake_quant``). ``progress``: a callable given the number of
    forward passes to expect, returning a per-pass step callable."""
    passes = len(chunks) * (1 + len(configs) * (2 if compare_fake_quant else 1))
    step = progress(passes) if progress else None
    config = model.config
    baseline = perplexity(model, chunks, lambda: DynamicCache(config=config), step)
    bf16_size = bytes_per_token(config, k_bits=16, v_bits=16)
    rows = [EvalRow(BF16_LABEL, 16, 16, bf16_size, baseline, 0.0)]
    for label, options in configs:
        value = perplexity(
            model, chunks, lambda o=options: TQCache(config, center_keys=center_keys, **o), step
        )
        size = bytes_per_token(config, **options)
        delta = 100 * (value / baseline - 1)
        row = EvalRow(
            label, options["k_bits"], options["v_bits"], size, value, delta, options=options
        )
        if compare_fake_quant:
            row.fake_quant_perplexity = perplexity(
                model, chunks,
                lambda o=options: FakeQuantCache(config, center_keys=center_keys, **o),
                step,
            )  # fmt: skip
        rows.append(row)
    return rows


def recommend(rows: list[EvalRow], budget_percent: float) -> EvalRow | None:
    """The config with the fewest bytes per token whose perplexity increase is within budget."""
    fits = [r for r in rows if r.label != BF16_LABEL and r.delta_percent <= budget_percent]
    return min(fits, key=lambda r: (r.bytes_per_token, r.delta_percent), default=None)


def table(rows: list[EvalRow]) -> str:
    bf16 = rows[0].bytes_per_token
    fake = any(r.fake_quant_perplexity is not None for r in rows)
    width = max(6, *(len(r.label) for r in rows))
    header = f"{'KV':<{width}} {'bytes/token':>12} {'vs bf16':>8} {'perplexity':>11} {'delta':>8}"
    lines = [header + ("  fake-quant ppl  cache vs fake" if fake else "")]
    for r in rows:
        line = (
            f"{r.label:<{width}} {r.bytes_per_token:>12,} {bf16 / r.bytes_per_token:>7.2f}x "
            f"{r.perplexity:>11.4f} {r.delta_percent:>+7.2f}%"
        )
        if r.fake_quant_perplexity is not None:
            gap = 100 * (r.perplexity / r.fake_quant_perplexity - 1)
            line += f"  {r.fake_quant_perplexity:>14.4f}  {gap:>+12.3f}%"
        lines.append(line)
    return "\n".join(lines)


def as_json(rows: list[EvalRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def plot(rows: list[EvalRow], path, title: str, budget_percent: float | None = None) -> None:
    """PNG: perplexity increase against bytes per token, one labelled point per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        ax.scatter(r.bytes_per_token, r.delta_percent, color="tab:blue" if r.k_bits < 16 else "k")
        ax.annotate(r.label, (r.bytes_per_token, r.delta_percent), xytext=(4, 4),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    if budget_percent is not None:
        ax.axhline(budget_percent, color="tab:red", linestyle="--", linewidth=1,
                   label=f"budget +{budget_percent:g}%")  # fmt: skip
        ax.legend(loc="upper right")
    ax.set_xscale("log")
    # Linear below 1%, logarithmic above: 2-bit configs cost 100x what 6-bit ones do.
    ax.set_yscale("symlog", linthresh=1.0)
    deltas = [r.delta_percent for r in rows]
    ax.set_ylim(min(-0.5, 1.5 * min(deltas)), max(2.0, 3 * max(deltas)))
    ax.set_xlabel("KV bytes per token (all layers, log scale)")
    ax.set_ylabel("perplexity increase over bf16 KV (%, symlog)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
