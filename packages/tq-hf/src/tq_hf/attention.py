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
    batch, num_q_heads, new, head_dim = query.shape
    valid = _new_tokens_valid(attention_mask, new)
    layer.commit(valid)
    scale = scaling if scaling is not None else head_dim**-0.5
    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    pages = (layer.kv_cache, layer.block_table)
    if new <= _DECODE_MAX_QUERY and valid is None:
        # rotate=True: the op rotates the query and un-rotates the output itself (the Triton
        # kernel fuses both into the attention launch).
        out = ops.decode_attention(
            query.transpose(1, 2).contiguous(), *pages, layer.seq_lens(), layer.layout, scale,
            sliding_window=window, logit_softcap=softcap, rotate=True,
        )  # fmt: skip
        return out.to(query.dtype), None
    flat = query.transpose(1, 2).reshape(batch * new, num_q_heads, head_dim)  # [B * S, Hq, D]
    # Ragged: each row's real new tokens, back to back; padding rows get zeros.
    flat_valid = torch.ones(batch * new, dtype=torch.bool) if valid is None else valid.reshape(-1)
    counts = flat_valid.view(batch, new).sum(1)
    starts = torch.zeros(batch + 1, dtype=torch.int32)
    starts[1:] = counts.cumsum(0)
    rows = flat_valid.nonzero().squeeze(1).to(query.device)
    # rotate=True: query and output in the model's domain (the op rotates what is cheaper).
    packed = ops.prefill_attention(
        flat[rows].contiguous(), *pages, starts.to(query.device), layer.seq_lens(),
        layer.layout, scale, sliding_window=window, logit_softcap=softcap, rotate=True,
    )  # fmt: skip
    out = flat.new_zeros(batch * new, num_q_heads, head_dim)
    out[rows] = packed.to(out.dtype)
    return out.view(batch, new, num_q_heads, head_dim), None


def register() -> None:
    """Make "tq" a transformers attention implementation (idempotent)."""
    AttentionInterface.register(NAME, tq_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_tq_attention(config) -> str | None:
    """Switch a model (through its config) to the "tq" attention implementation; returns the
    implementation it replaced (to switch back to: ``config._attn_implementation = that``)."""
    register()
    previous = getattr(_text_config(config), "_attn_implementation", None)
    for sub in {id(c): c for c in (config, _text_config(config))}.values():
        sub._attn_implementation = NAME
    return previous if previous != NAME else None


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _new_tokens_valid(attention_mask: torch.Tensor | None, new: int) -> torch.Tensor | None:
    """Which of the ``new`` tokens of each row are real (not left padding), [B, new] bool on
    the host, or None when every token is real.

    The sdpa mask function gives None for plain causal attention, else a [B, 1, new, kv_len]
    mask (bool: True = attend; float: 0 = attend) whose last ``new`` columns are the new
    tokens (TQLayer.get_mask_sizes). A real token attends to itself, full or sliding-window
    layer alike, and a padding token is masked for every query, itself included: the diagonal
    of those columns marks the real tokens."""
    if attention_mask is None:
        return None
    steps = torch.arange(new, device=attention_mask.device)
    diagonal = attention_mask[:, 0, steps, attention_mask.shape[-1] - new + steps]
    valid = diagonal if diagonal.dtype == torch.bool else diagonal == 0
    valid = valid.cpu()
    return None if bool(valid.all()) else valid
