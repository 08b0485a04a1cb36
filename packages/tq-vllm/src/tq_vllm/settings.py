"""What the user asked tq to do, read inside vLLM: ``additional_config["tq"]`` over ``TQ_*``.

vLLM's ``kv_cache_dtype`` is a closed set of names a plugin cannot extend, so tq settings travel
as ``--additional-config '{"tq": {"k_bits": 4, "v_bits": 4}}'`` (any ``TQConfig`` field, plus
``center_keys``) or as ``TQ_*`` environment variables; the JSON wins. The attention layers read
them while the model is built (inside vLLM's config context) and remember the result here,
because vLLM asks the backend for its page size later, outside that context
(``TQAttentionBackend.customize_spec``).
"""

from __future__ import annotations

import os

from tq_core.config import TQConfig
from tq_core.errors import TQConfigError

ADDITIONAL_CONFIG_KEY = "tq"
#: kv_cache_dtype values that mean "store what the model computes": tq then stores its pages.
PLAIN_KV_CACHE_DTYPES = ("auto", "bfloat16", "float16")
#: Options the vLLM plugin does not take yet (vLLM sizes every layer's page alike here).
_NOT_IN_VLLM = ("skip_first_layers", "skip_last_layers", "layer_bits")

#: Key centering (tq_core.centering): an option of the engine, not of the page format.
CENTER_KEYS_OPTION = "center_keys"
CENTER_KEYS_ENV = "TQ_CENTER_KEYS"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

_active: TQConfig | None = None


def config_from_vllm(vllm_config, head_dim: int) -> TQConfig:
    """The TQConfig of this engine: checks the options and remembers them for the process."""
    global _active
    options = dict(getattr(vllm_config, "additional_config", None) or {}).get(
        ADDITIONAL_CONFIG_KEY, {}
    )
    if not isinstance(options, dict):
        raise TQConfigError(
            f'additional_config["{ADDITIONAL_CONFIG_KEY}"] must be an object of TQConfig '
            f'fields such as {{"k_bits": 4, "v_bits": 4}}, got {options!r}'
        )
    cache_dtype = vllm_config.cache_config.cache_dtype
    if cache_dtype not in PLAIN_KV_CACHE_DTYPES:
        raise TQConfigError(
            f"kv_cache_dtype={cache_dtype!r} conflicts with tq, which stores its own compressed "
            "pages: leave kv_cache_dtype at 'auto' and choose bits in --additional-config "
            '\'{"tq": {"k_bits": 4, "v_bits": 4}}\''
        )
    options = {k: v for k, v in options.items() if k != CENTER_KEYS_OPTION}
    config = TQConfig.from_env(head_dim=head_dim, **options)
    unsupported = [name for name in _NOT_IN_VLLM if getattr(config, name)]
    if unsupported:
        raise TQConfigError(
            f"tq-vllm does not support {', '.join(unsupported)} yet: vLLM sizes the pages of "
            "every attention layer alike here; use one k_bits/v_bits for all layers"
        )
    if _active is not None and _active != config:
        raise TQConfigError(
            f"two different tq configs in one process ({_active} and {config}); tq-vllm serves "
            "one config per engine"
        )
    _active = config
    return config


def center_keys_from_vllm(vllm_config) -> bool:
    """Key centering: ``additional_config["tq"]["center_keys"]`` over ``TQ_CENTER_KEYS``; off
    unless asked for (docs/vllm.md: the GPU end-to-end test passed with it on, but the mean comes
    from the engine's first stored tokens, so chunked and one-step prefills of the same prompt
    store different bytes, and three of the CPU tests' exact-token checks parted with it)."""
    options = dict(getattr(vllm_config, "additional_config", None) or {}).get(
        ADDITIONAL_CONFIG_KEY, {}
    )
    raw = options.get(CENTER_KEYS_OPTION) if isinstance(options, dict) else None
    if raw is None:
        raw = os.environ.get(CENTER_KEYS_ENV, "0")
    text = str(raw).strip().lower()
    if text not in _TRUE + _FALSE:
        raise TQConfigError(f"{CENTER_KEYS_OPTION}={raw!r}: use true or false (1 or 0)")
    return text in _TRUE


def active_config() -> TQConfig:
    """The config the attention layers registered (set before vLLM sizes the KV cache)."""
    if _active is None:
        raise TQConfigError(
            "tq's backend was asked for its KV-cache page before any attention layer read the "
            "tq settings: this vLLM builds layers in an order tq-vllm does not know"
        )
    return _active
