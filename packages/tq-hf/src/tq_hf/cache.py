"""TQCache: a transformers Cache whose attention layers hold K/V in tq's paged byte format.

Each attention layer owns one uint8 paged cache (``tq_core`` layout) for the whole batch: row b
of the batch gets its own run of pages. A full-attention layer's run grows by doubling; a
sliding-window layer's run is a ring that holds only the pages the window (plus the tokens of
the current forward pass) can still see, so its size is bounded by the window however long the
context grows: logical block j of a row lives in page ``j % ring``, and blocks that have left
the window are overwritten (attention masks them anyway). ``update`` keeps the new K/V aside
and returns them (cheap placeholders); the "tq" attention function (attention.py), which runs
next and sees the attention mask, has them encoded by ``tq_core.ops.store`` without the padding
tokens and then reads the compressed pages, so no layer's full-precision history ever exists.
Codec math and byte layout stay in tq_core; this module only keeps block tables and lengths.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache

from tq_core import TQCodec, TQConfig, ops
from tq_core.centering import key_mean
from tq_core.errors import TQConfigError
from tq_core.model_shape import ModelShape, model_shape

BLOCK_SIZE = 16  # tokens per page; any size works, 16 keeps the tail page small

# The layer that most recently received K/V for each layer index. transformers calls
# ``Cache.update`` right before the attention function of the same layer, and the attention
# function never sees the cache, so this is how it finds the pages (one model at a time).
_JUST_UPDATED: dict[int, TQLayer] = {}


def take_just_updated(layer_idx: int) -> TQLayer | None:
    """The TQLayer updated for ``layer_idx`` since the last attention call there, if any."""
    return _JUST_UPDATED.pop(layer_idx, None)


class TQLayer(CacheLayerMixin):
    """One attention layer's compressed K/V for a batch: pages, block table, lengths.

    ``sliding_window``: the layer attends to the last W tokens only (Gemma 2/3, Mistral); its
    pages then form a ring bounded by the window (see the module docstring)."""

    is_compileable = False
    is_croppable = False

    def __init__(
        self,
        layer_idx: int,
        codec: TQCodec,
        num_kv_heads: int,
        center_keys: bool = False,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.center_keys = center_keys
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        # Per (batch row, KV head) mean key of the first chunk, subtracted before encoding.
        self.key_mean: torch.Tensor | None = None
        self.codec = codec
        self.layout = codec.cache_layout(num_kv_heads, BLOCK_SIZE)
        self.seen = 0  # tokens transformers has handed over per row, padding included
        self.lengths: torch.Tensor | None = None  # real tokens held per row (host, int64)
        self.batch_size = 0
        self.ring = 0  # pages per row; logical block j of a row lives in page j % ring
        self.ring_of_table = 0  # the ring the block table was built for
        self.kv_cache: torch.Tensor | None = None
        self.block_table: torch.Tensor | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- transformers' layer interface ------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.batch_size = key_states.shape[0]
        self.lengths = torch.zeros(self.batch_size, dtype=torch.int64)
        # The same counts on the device, kept in step there, so a decode step computes its
        # slots and seq_lens without a host-to-device copy (each such copy waits for the GPU).
        self.device_lengths = torch.zeros(self.batch_size, dtype=torch.int32, device=self.device)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        """Take the new K/V [B, Hkv, S, D]; they are encoded by :meth:`commit`, which the "tq"
        attention function calls next, once the attention mask says which are padding."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._pending = (key_states, value_states)
        self.seen += key_states.shape[2]
        _JUST_UPDATED[self.layer_idx] = self
        return key_states, value_states

    def commit(self, valid: torch.Tensor | None) -> None:
        """Encode the pending K/V into the pages, skipping tokens where ``valid`` [B, S] is
        False (left padding): each row keeps only its real tokens, back to back."""
        key_states, value_states = self._pending
        self._pending = None
        batch, _, new, head_dim = key_states.shape
        if valid is not None:
            valid = valid.to("cpu", torch.bool)
        counts = torch.full((batch,), new) if valid is None else valid.sum(1)
        self._reserve(counts)
        if self.center_keys:  # attention-neutral (tq_core.centering); first chunk's mean
            if self.key_mean is None:
                self.key_mean = key_mean(key_states, valid)
            key_states = key_states - self.key_mean
        if valid is None:  # every token real (decode, unpadded prefill): slots on the device
            steps = torch.arange(new, device=self.device, dtype=torch.int32)
            positions = self.device_lengths[:, None] + steps
            rows = torch.arange(batch, device=self.device, dtype=torch.int32)[:, None]
        else:
            positions = self.lengths[:, None] + valid.cumsum(1) - 1
            rows = torch.arange(batch)[:, None]
        pages = rows * self.ring + (positions // BLOCK_SIZE) % self.ring
        slots = pages * BLOCK_SIZE + positions % BLOCK_SIZE
        if valid is not None:
            slots = torch.where(valid, slots, -1).to(self.device)
        # [B, Hkv, S, D] -> tokens [B*S, Hkv, D], row-major over (b, s) like the slots.
        ops.store(
            key_states.transpose(1, 2).reshape(batch * new, -1, head_dim),
            value_states.transpose(1, 2).reshape(batch * new, -1, head_dim),
            self.kv_cache, slots.reshape(-1), self.layout,
        )  # fmt: skip
        self.lengths += counts
        if valid is None:
            self.device_lengths += new
        else:
            self.device_lengths.copy_(self.lengths)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kv_length, kv_offset) of the mask transformers builds: every position for a full
        layer; for a sliding layer the last W - 1 cached positions and the new ones, as
        transformers' own sliding layer. Either way the new tokens are the last columns."""
        if self.sliding_window is None or self.seen < self.sliding_window:
            return self.seen + query_length, 0
        return self.sliding_window - 1 + query_length, self.seen - self.sliding_window + 1

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1 if self.sliding_window is None else self.sliding_window

    def reset(self) -> None:
        self.seen = 0
        if self.lengths is not None:
            self.lengths.zero_()
            self.device_lengths.zero_()
        self.key_mean = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise TQConfigError("TQCache does not support beam search yet; use sampling or greedy")

    # -- pages ------------------------------------------------------------------------------

    def seq_lens(self) -> torch.Tensor:
        """Real tokens held per row, int32 on the cache's device (tq_core's ``seq_lens``)."""
        return self.device_lengths

    def nbytes(self) -> int:
        """Bytes this layer holds on its device (pages and block table), from the tensors."""
        tensors = (self.kv_cache, self.block_table, self.key_mean)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _reserve(self, new_tokens: torch.Tensor) -> None:
        """Make room for ``new_tokens`` [B] more tokens per row: enough pages for every token a
        query of this pass can see, and block-table columns for every logical block."""
        ends = self.lengths + new_tokens
        blocks = -(-int(ends.max()) // BLOCK_SIZE)  # logical blocks per row after this pass
        if self.sliding_window is None:
            ring = blocks if blocks <= self.ring else max(blocks, 2 * self.ring)
        else:
            # The oldest token this pass's first query sees is W - 1 before it: those tokens
            # and the new ones span at most this many blocks, so they never share a page.
            visible = self.sliding_window - 1 + int(new_tokens.max())
            ring = min(blocks, -(-visible // BLOCK_SIZE) + 1)
        if ring != self.ring:
            self._resize_ring(ring)
        columns = 0 if self.block_table is None else self.block_table.shape[1]
        if blocks > columns:
            self._build_block_table(max(blocks, 2 * columns))
        elif self.ring != self.ring_of_table:
            self._build_block_table(columns)

    def _resize_ring(self, ring: int) -> None:
        """Move every page that a future query can still see into a ring of ``ring`` pages.
        Zero-filled: pages the window has dropped may still be read (and masked), never NaN."""
        cache = torch.zeros(
            self.batch_size * ring, self.layout.page_bytes, dtype=torch.uint8, device=self.device
        )
        if self.kv_cache is not None:
            window = self.sliding_window
            for row, length in enumerate(self.lengths.tolist()):
                first = 0 if window is None else max(0, length - window + 1) // BLOCK_SIZE
                logical = torch.arange(first, -(-length // BLOCK_SIZE), device=self.device)
                old = self.kv_cache[row * self.ring + logical % self.ring]
                cache[row * ring + logical % ring] = old
        self.kv_cache = cache
        self.ring = ring

    def _build_block_table(self, columns: int) -> None:
        rows = torch.arange(self.batch_size, device=self.device, dtype=torch.int32)
        logical = torch.arange(columns, device=self.device, dtype=torch.int32)
        self.block_table = (rows[:, None] * self.ring + logical[None, :] % self.ring).contiguous()
        self.ring_of_table = self.ring


class TQCache(Cache):
    """A transformers ``Cache`` storing every attention layer's K/V compressed by tq.

    ``TQCache(model.config, k_bits=4, v_bits=4)`` (any ``TQConfig`` field as a keyword, or
    ``TQ_*`` environment variables). ``center_keys`` (on by default) subtracts each head's mean
    key (from the first chunk) before encoding, which leaves attention unchanged and took K4V4
    from +5.8% to +3.3% perplexity on SmolLM2 (docs/hf.md); ``center_keys=False`` is plain
    TurboQuant. Constructing it switches the model's attention to "tq" (attention.py), which
    reads these pages and behaves exactly like "sdpa" for any other cache
    (``replaced_attention`` keeps what it replaced). Sliding-window layers keep a ring of pages
    bounded by the window; a hybrid model's linear-attention, convolution or Mamba layers keep
    transformers' own state layers.
    """

    def __init__(self, config, *, center_keys: bool = True, **tq_options) -> None:
        shape = supported_shape(config)
        head_dim, num_kv_heads, num_layers = shape.head_dim, shape.num_kv_heads, shape.num_layers
        self.tq_config = TQConfig.from_env(head_dim=head_dim, **tq_options)
        # Hybrid models: transformers builds its own state layers (linear attention, conv)
        # exactly as for a DynamicCache; tq takes over the layers that keep K/V.
        own = None if all(shape.attention) else DynamicCache(config=config).layers
        layers = []
        for i in range(num_layers):
            if not shape.attention[i]:
                layers.append(own[i])
                continue
            codec = TQCodec.from_config(self.tq_config, i, num_layers)
            window = shape.sliding_window if shape.sliding[i] else None
            layers.append(TQLayer(i, codec, num_kv_heads, center_keys, window))
        super().__init__(layers=layers)
        from tq_hf.attention import NAME, use_tq_attention

        #: The attention implementation "tq" replaced (None if it was "tq" already).
        self.replaced_attention = use_tq_attention(config)
        self._config, self._attention_name = config, NAME

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        # Any other attention would attend to the placeholders update returns, not to the
        # pages: silently wrong text. Refuse instead (e.g. the config was set back to sdpa).
        current = getattr(self._config, "_attn_implementation", None)
        if current != self._attention_name:
            raise TQConfigError(
                f"the model's attention implementation is {current!r}, but TQCache needs "
                f"{self._attention_name!r}, which reads its pages (creating a TQCache sets it): "
                "create the TQCache after changing the attention implementation"
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def nbytes(self) -> int:
        """Bytes all tq layers hold (a hybrid model's recurrent state is not counted)."""
        return sum(layer.nbytes() for layer in self.layers if isinstance(layer, TQLayer))


def supported_shape(config) -> ModelShape:
    """The model's KV shape (tq_core's reading of the HF config), or one clear error for a
    model this cache does not handle (tq_core refuses MLA, encoder-decoder models, chunked or
    unknown layer types, and unsupported head_dim)."""
    return model_shape(config.to_dict())
