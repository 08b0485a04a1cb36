"""What a model's KV cache depends on, read from its Hugging Face config (a dict).

Shared by `tq plan` (config.json files) and the adapters (an engine's config object as a dict),
so every place reads layer counts, KV heads, head_dim and sliding-window layers the same way
and refuses the same unsupported models.
"""

from __future__ import annotations

from dataclasses import dataclass

from tq_core.errors import TQConfigError, TQUnsupportedModelError

_MLA_MODEL_TYPES = ("deepseek_v2", "deepseek_v3")
# Layer types (HF ``layer_types``) that keep per-token K/V, and those that keep none (a fixed
# recurrent or convolution state, or nothing): hybrid models mix both, and tq compresses the
# first kind only. Chunked (Llama 4) and indexed/compressed attention are refused.
_KV_LAYER_TYPES = ("full_attention", "sliding_attention")
_NO_KV_LAYER_TYPES = ("linear_attention", "conv", "mamba", "moe", "mlp")


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache of a model depends on; ``sliding[i]`` says layer i is sliding-window,
    ``attention[i]`` that it keeps per-token K/V at all (False: a hybrid model's linear-attention,
    convolution or Mamba layer, whose state is not tq's business)."""

    model_type: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    sliding: tuple[bool, ...]
    sliding_window: int | None
    attention: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if not self.attention:
            object.__setattr__(self, "attention", (True,) * self.num_layers)


def model_shape(config: dict) -> ModelShape:
    """Read an HF config.json; multimodal configs (Gemma 3) keep the LM in ``text_config``."""
    text = config.get("text_config")
    cfg = {**config, **text} if isinstance(text, dict) else config
    model_type = str(cfg.get("model_type") or "unknown")
    if cfg.get("kv_lora_rank") is not None or model_type in _MLA_MODEL_TYPES:
        raise TQUnsupportedModelError(
            f"{model_type} uses multi-head latent attention (MLA, kv_lora_rank), whose cache is "
            "one compressed latent, not per-head K/V; tq supports MHA, GQA and MQA models"
        )
    if cfg.get("is_encoder_decoder"):
        raise TQUnsupportedModelError(
            f"{model_type} is an encoder-decoder model; tq supports decoder-only models"
        )

    def positive_int(key: str, default: int | None = None) -> int:
        value = cfg.get(key)
        value = default if value is None else value
        if value is None:
            raise TQConfigError(f"model config has no {key}; is it a decoder LM's config.json?")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TQConfigError(f"model config {key}={value!r} must be a positive integer")
        return value

    num_layers = positive_int("num_hidden_layers")
    num_heads = positive_int("num_attention_heads")
    num_kv_heads = positive_int("num_key_value_heads", num_heads)
    head_dim = cfg.get("head_dim") or positive_int("hidden_size") // num_heads
    head_dim = positive_int("head_dim", head_dim)
    sliding = _sliding_layers(cfg, model_type, num_layers)
    attention = tuple(kind in _KV_LAYER_TYPES for kind in cfg.get("layer_types") or ())
    window = positive_int("sliding_window") if any(sliding) else None
    return ModelShape(model_type, num_layers, num_kv_heads, head_dim, sliding, window, attention)


def _sliding_layers(cfg: dict, model_type: str, num_layers: int) -> tuple[bool, ...]:
    # Qwen-style configs carry a sliding_window that is off unless use_sliding_window is true.
    if cfg.get("use_sliding_window") is False:
        return (False,) * num_layers
    layer_types = cfg.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != num_layers:
            raise TQConfigError(f"layer_types must list one type per layer ({num_layers})")
        unknown = sorted(set(map(str, layer_types)) - {*_KV_LAYER_TYPES, *_NO_KV_LAYER_TYPES})
        if unknown:
            raise TQUnsupportedModelError(
                f"layer type {unknown[0]!r} is not supported; tq compresses full_attention and "
                "sliding_attention layers and leaves " + ", ".join(_NO_KV_LAYER_TYPES) + " layers "
                "to the engine"
            )
        if not any(kind in _KV_LAYER_TYPES for kind in layer_types):
            raise TQUnsupportedModelError(
                f"{model_type} has no attention layer: there is no K/V to compress"
            )
        return tuple(kind == "sliding_attention" for kind in layer_types)
    if cfg.get("sliding_window") is None:
        return (False,) * num_layers
    # Gemma 2 alternates sliding and full layers; Gemma 3 / Cohere 2 name the period.
    pattern = cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern")
    pattern = pattern or (2 if model_type == "gemma2" else None)
    if pattern:
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            raise TQConfigError(f"sliding_window_pattern={pattern!r} must be a positive integer")
        return tuple((layer + 1) % pattern != 0 for layer in range(num_layers))
    # Mistral: every layer slides. Qwen 2 with use_sliding_window: layers below
    # max_window_layers stay full (it is only read when the switch is on, as in transformers).
    first_sliding = (cfg.get("max_window_layers") or 0) if cfg.get("use_sliding_window") else 0
    return tuple(layer >= first_sliding for layer in range(num_layers))
