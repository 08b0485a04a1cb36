"""What the user asked tq to do inside SGLang, and which SGLang settings tq cannot serve.

SGLang's ``--kv-cache-dtype`` is a closed set of names (auto, bf16, fp8_*, fp4_*) that a plugin
cannot extend, and its server arguments have no free-form section for plugins. SGLang itself
configures kernels and caches through environment variables (``SGLANG_*``), so tq follows that
convention: ``--attention-backend tq`` switches tq on, and ``TQ_K_BITS`` / ``TQ_V_BITS`` /
``TQ_SKIP_FIRST_LAYERS`` / ``TQ_LAYER_BITS`` ... (``tq_core.config.TQConfig.from_env``) choose
the bits and ``TQ_CENTER_KEYS=0`` turns key centering off; they reach SGLang's scheduler
processes because those inherit the environment.
"""

from __future__ import annotations

import os

from tq_core.config import TQConfig
from tq_core.errors import TQConfigError, TQUnsupportedModelError

BACKEND_NAME = "tq"
#: kv_cache_dtype values that mean "store what the model computes": tq then stores its pages.
PLAIN_KV_CACHE_DTYPES = ("auto", "bf16", "bfloat16", "float16", "fp16")


def backends_of(server_args) -> tuple[str | None, str | None]:
    """(prefill, decode) attention backend names, the split flags winning over the shared one."""
    shared = getattr(server_args, "attention_backend", None)
    prefill = getattr(server_args, "prefill_attention_backend", None) or shared
    decode = getattr(server_args, "decode_attention_backend", None) or shared
    return prefill, decode


def tq_requested(server_args) -> bool:
    """True when tq serves this engine; refuses tq for one phase and another backend for the
    other, because both phases read the same compressed pool."""
    prefill, decode = backends_of(server_args)
    if (prefill == BACKEND_NAME) != (decode == BACKEND_NAME):
        raise TQConfigError(
            f"prefill attention backend {prefill!r} and decode backend {decode!r}: tq stores a "
            "compressed pool that only tq reads, so use --attention-backend tq for both"
        )
    return prefill == BACKEND_NAME


def check_server_args(server_args) -> None:
    """One clear line for each SGLang setting that tq cannot serve (called before the pool)."""
    dtype = getattr(server_args, "kv_cache_dtype", "auto")
    if dtype not in PLAIN_KV_CACHE_DTYPES:
        raise TQConfigError(
            f"--kv-cache-dtype {dtype} conflicts with --attention-backend tq, which stores its "
            "own compressed pages: leave --kv-cache-dtype at auto and choose bits with "
            "TQ_K_BITS / TQ_V_BITS"
        )
    refused = {
        "speculative_algorithm": "speculative decoding",
        "enable_hierarchical_cache": "the hierarchical (host memory) cache",
        "disaggregation_mode": "prefill/decode disaggregation",
        "enable_dp_attention": "data-parallel attention",
    }
    for name, what in refused.items():
        value = getattr(server_args, name, None)
        if value not in (None, False, "null", ""):
            raise TQConfigError(f"tq-sglang does not support {what} yet ({name}={value!r})")
    # Refused here, at launch, rather than when the model runner asks the backend for graph
    # buffers after loading the weights. SGLang never captures graphs on CPU.
    on_cpu = getattr(server_args, "device", None) == "cpu"
    if not getattr(server_args, "disable_cuda_graph", False) and not on_cpu:
        raise TQConfigError(
            "tq-sglang does not capture CUDA graphs yet: launch SGLang with --disable-cuda-graph"
        )


CENTER_KEYS_ENV = "TQ_CENTER_KEYS"


def center_keys() -> bool:
    """Key centering, on unless ``TQ_CENTER_KEYS=0``: tq-hf's default too (docs/sglang.md)."""
    raw = os.environ.get(CENTER_KEYS_ENV, "1").strip().lower()
    if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise TQConfigError(f"{CENTER_KEYS_ENV}={raw!r}; use 1 or 0")
    return raw in ("1", "true", "yes", "on")


def config_for(head_dim: int) -> TQConfig:
    """The engine's TQConfig from ``TQ_*`` (unknown TQ_ names are an error, not a default)."""
    return TQConfig.from_env(head_dim=head_dim)


def refuse_model(reason: str) -> None:
    raise TQUnsupportedModelError(
        f"tq-sglang cannot serve this model: {reason}; serve it with another attention backend"
    )
