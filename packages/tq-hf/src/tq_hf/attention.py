"""The "tq" attention function: transformers' attention interface over TQCache pages.

Registered once under the name "tq" (with the sdpa mask function, so masks are built as for
sdpa). For a layer whose K/V went into a TQCache it rotates the query, runs
``tq_core.ops.decode_attention`` (up to 8 new tokens) or ``prefill_attention`` over the
compressed pages, and rotates the output back; for any other cache it is sdpa.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from tq_core import ops
from tq_core.errors import TQInputError
from tq_core.rotation import rotate_query, unrotate_output
from tq_hf.cache import take_just_updated

NAME = "tq"
_DECODE_MAX_QUERY = 8


def tq_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [B, Hq, S, D] -> (output [B, S, Hq, D], None), as transformers expects."""
    layer = take_just_updated(getattr(module, "layer_idx", -1))
    if layer is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if attention_mask is not None:
        # The sdpa mask function returns None for plain causal attention; a mask means padding
        # or a custom pattern, which the pages do not encode yet.
        raise TQInputError(
            "TQCache does not support padded batches or custom attention masks yet; "
            "generate one sequence (or equal-length sequences without padding) at a time"
        )
    batch, num_q_heads, new, head_dim = query.shape
    scale = scaling if scaling is not None else head_dim**-0.5
    seed = layer.codec.seed
    rotated = rotate_query(query.transpose(1, 2), seed)  # [B, S, Hq, D]
    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    pages = (layer.kv_cache, layer.block_table)
    if new <= _DECODE_MAX_QUERY:
        out = ops.decode_attention(
            rotated.contiguous(), *pages, layer.seq_lens(), layer.layout, scale,
            sliding_window=window, logit_softcap=softcap,
        )  # fmt: skip
    else:
        starts = torch.arange(0, (batch + 1) * new, new, dtype=torch.int32, device=query.device)
        out = ops.prefill_attention(
            rotated.reshape(batch * new, num_q_heads, head_dim), *pages, starts,
            layer.seq_lens(), layer.layout, scale, sliding_window=window, logit_softcap=softcap,
        ).view(batch, new, num_q_heads, head_dim)  # fmt: skip
    return unrotate_output(out, seed).to(query.dtype), None


def register() -> None:
    """Make "tq" a transformers attention implementation (idempotent)."""
    AttentionInterface.register(NAME, tq_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_tq_attention(config) -> None:
    """Switch a model (through its config) to the "tq" attention implementation."""
    register()
    for sub in {id(c): c for c in (config, _text_config(config))}.values():
        sub._attn_implementation = NAME


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config
