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


class FirstWriteKeyMean:
    """A serving engine's key mean for one layer: one mean key per KV head, taken from the first
    write that stores a real token and fixed from then on, so every key of the layer's cache
    shares it (prefix-cache hits and recomputed requests included). The shared offset is the
    model's, not the text's, so one mean serves every request.

    Built for engines that capture CUDA graphs: ``mean`` is allocated once, here, and only ever
    updated in place, outside capture, so a captured graph reads the current mean at replay. The
    first real write costs one read of a token count back to the host; until then each eager
    write does (an engine's warm-up writes store no real token).
    """

    def __init__(self, num_kv_heads: int, head_dim: int, device: torch.device | str) -> None:
        self.mean = torch.zeros(num_kv_heads, head_dim, dtype=torch.float32, device=device)
        self.ready = False

    def center(self, keys: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        """``keys`` [tokens, num_kv_heads, head_dim] minus the mean, in keys' dtype; ``written``:
        bool [tokens], True where the token is stored (an engine's padding and warm-up tokens
        are not). The first call with a written token sets the mean from those tokens."""
        if not self.ready and not _capturing(keys) and written.any().item():
            # key_mean's [B, heads, tokens, head_dim] view of these rows, kept in float32.
            self.mean.copy_(key_mean(keys.float().transpose(0, 1)[None], written[None])[0, :, 0])
            self.ready = True
        return (keys.float() - self.mean).to(keys.dtype)


def _capturing(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()
