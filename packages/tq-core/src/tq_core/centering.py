"""Key centering: store keys minus a per-head mean key.

q . (k - m) = q . k - q . m shifts every score of a query by the same amount, which softmax
ignores, so attention is unchanged while the codec no longer spends its bits on the offset a
few channels share (DESIGN.md, docs/hf.md). The mean is taken once, from the first chunk of a
sequence, and subtracted from every key stored after it.
"""

from __future__ import annotations

import torch


def key_mean(keys: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean key per (row, KV head) over real tokens.

    keys: [B, num_kv_heads, tokens, head_dim]; valid: bool [B, tokens] (False = padding) or
    None. Returns [B, num_kv_heads, 1, head_dim] in keys' dtype (computed in float32).
    """
    work = keys.float()
    if valid is None:
        return work.mean(dim=2, keepdim=True).to(keys.dtype)
    weight = valid.to(keys.device, torch.float32)[:, None, :, None]
    count = weight.sum(dim=2, keepdim=True).clamp_min(1)
    return ((work * weight).sum(dim=2, keepdim=True) / count).to(keys.dtype)
