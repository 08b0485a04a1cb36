"""SGLang's token-to-KV pool holding tq pages: one uint8 tensor of pages per layer.

SGLang addresses the KV cache by token slot (``out_cache_loc``; ``req_to_token`` maps a
request's positions to slots). With ``--page-size P`` the allocator hands out whole pages, so
slot ``s`` is token ``s % P`` of page ``s // P``: exactly tq's slot mapping over pages of P
tokens. A layer's cache is ``[num_pages, CacheLayout.page_bytes]`` uint8; the layout (and so the
bits, under ``TQ_SKIP_*`` / ``TQ_LAYER_BITS``) may differ per layer. Writes go through
``tq_core.ops.store``; only the tq attention backend reads the pages.

Key centering (``center_keys``): each layer stores keys minus one mean key per KV head, taken
from the first batch the layer ever stores (the engine's first prefill) and kept for the
pool's lifetime. q . (k - m) shifts all of a query's scores by q . m, which softmax ignores, so
attention is unchanged for every request, radix-cache hits included, while the codec stops
spending bits on the offset a few key channels share (``tq_core.centering``). One mean per
layer and head, not per request: the shared offset is the model's, not the text's.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from sglang.srt.constants import GPU_MEMORY_TYPE_KV_CACHE
from sglang.srt.mem_cache.memory_pool import KvBufferDesc, MHATokenToKVPool, unwrap_write_loc

from tq_core import CacheLayout, TQCodec, ops
from tq_core.config import TQConfig
from tq_core.errors import TQConfigError, TQUnsupportedModelError


def layer_layouts(
    config: TQConfig, num_kv_heads: int, page_size: int, layer_ids: range, num_model_layers: int
) -> list[CacheLayout]:
    """The page layout of each layer the pool holds, under the config's per-layer policy."""
    return [
        CacheLayout(TQCodec.from_config(config, layer, num_model_layers), num_kv_heads, page_size)
        for layer in layer_ids
    ]


def bytes_per_token(layouts: list[CacheLayout]) -> int:
    """What one token costs over all layers: SGLang's "cell size" (pages padded, rounded up)."""
    return -(-sum(layout.page_bytes for layout in layouts) // layouts[0].block_size)


class TQTokenToKVPool(MHATokenToKVPool):
    """``MHATokenToKVPool`` with SGLang's constructor; ``tq_config`` and ``num_model_layers``
    come from the plugin (``_compat`` binds them)."""

    def __init__(
        self,
        size: int,
        page_size: int,
        dtype: torch.dtype,
        head_num: int,
        head_dim: int,
        layer_num: int,
        device: str,
        enable_memory_saver: bool,
        *,
        tq_config: TQConfig,
        num_model_layers: int | None = None,
        center_keys: bool = False,
        **options,
    ) -> None:
        v_head_dim = options.get("v_head_dim")
        if v_head_dim not in (None, head_dim):
            raise TQUnsupportedModelError(
                f"tq-sglang needs equal key and value head sizes, got {head_dim} and {v_head_dim}"
            )
        start = options.get("start_layer") or 0
        self.tq_config = replace(tq_config, head_dim=head_dim)
        self.layouts = layer_layouts(
            self.tq_config, head_num, page_size, range(start, start + layer_num),
            num_model_layers or start + layer_num,
        )  # fmt: skip
        self.center_keys = center_keys
        self.key_means: list[torch.Tensor | None] = [None] * layer_num
        # The slot-to-slot copy kernel moves plain K/V rows (speculative decoding): not ours.
        options["enable_kv_cache_copy"] = False
        super().__init__(
            size, page_size, dtype, head_num, head_dim, layer_num, device, enable_memory_saver,
            **options,
        )  # fmt: skip

    @property
    def num_pages(self) -> int:
        # Slots 0 .. page_size-1 are SGLang's padding page (it absorbs writes of padded tokens).
        return -(-(self.size + self.page_size) // self.page_size)

    def _create_buffers(self) -> None:
        if self.post_capture_active:
            raise TQConfigError("tq-sglang does not support post-capture KV cache backing")
        for name in ("k_scale_buffer", "v_scale_buffer", "native_k_scale_buffer",
                     "native_v_scale_buffer", "dq_k_buffer", "dq_v_buffer"):  # fmt: skip
            setattr(self, name, None)
        with self.memory_saver_adapter.region(GPU_MEMORY_TYPE_KV_CACHE):
            self.k_buffer = [
                torch.zeros(
                    self.num_pages, layout.page_bytes, dtype=torch.uint8, device=self.device
                )
                for layout in self.layouts
            ]
        # One page holds a token's K and V: SGLang's value-buffer list stays empty.
        self.v_buffer = []
        self.store_dtype = torch.uint8
        self._kv_buffer_descs = self._build_kv_buffer_descs()
        self._init_data_ptrs_and_strides()

    def _build_kv_buffer_descs(self) -> list[KvBufferDesc]:
        descs = []
        for i, (pages, layout) in enumerate(zip(self.k_buffer, self.layouts, strict=True)):
            descs.append(
                KvBufferDesc(
                    f"tq{i}",
                    pages.shape,
                    row_bytes=layout.page_bytes,
                    tokens_per_row=self.page_size,
                )
            )
        return descs

    def get_kv_size_bytes(self) -> tuple[int, int]:
        """(key bytes, value bytes) of the whole pool, page padding included."""
        key = value = 0
        for layout in self.layouts:
            value_start = min(r.offset for r in layout.regions_of("value"))
            key += self.num_pages * value_start
            value += self.num_pages * (layout.page_bytes - value_start)
        return key, value

    # -- what the tq attention backend reads -------------------------------------------------
    def pages(self, layer_id: int) -> torch.Tensor:
        return self.k_buffer[layer_id - self.start_layer]

    def layout(self, layer_id: int) -> CacheLayout:
        return self.layouts[layer_id - self.start_layer]

    def _packed_only(self, *unused, **unused_kw):
        raise TQConfigError(
            "this SGLang KV pool holds tq's compressed pages: only --attention-backend tq "
            "reads them"
        )

    get_key_buffer = get_value_buffer = get_kv_buffer = _packed_only

    def set_kv_buffer(
        self, layer, loc_info, cache_k, cache_v, k_scale=None, v_scale=None,
        layer_id_override=None, dcp_kv_mask=None,
    ) -> None:  # fmt: skip
        if dcp_kv_mask is not None:
            raise TQConfigError("tq-sglang does not support decode context parallelism")
        loc, _, _ = unwrap_write_loc(loc_info)
        layer_id = layer_id_override if layer_id_override is not None else layer.layer_id
        shape = (-1, self.head_num, self.head_dim)
        keys = cache_k.reshape(shape)
        if self.center_keys:
            keys = (keys.float() - self._key_mean(layer_id, keys)).to(keys.dtype)
        ops.store(keys, cache_v.reshape(shape), self.pages(layer_id), loc, self.layout(layer_id))

    def _key_mean(self, layer_id: int, keys: torch.Tensor) -> torch.Tensor:
        """The layer's mean key per KV head [1, heads, head_dim] (float32), set by its first
        write and fixed from then on: every stored key of the layer shares it."""
        index = layer_id - self.start_layer
        if self.key_means[index] is None:
            self.key_means[index] = keys.float().mean(dim=0, keepdim=True)
        return self.key_means[index]

    # -- SGLang features that copy plain K/V rows: refused, not silently wrong ---------------
    def _refuse(self, feature: str):
        raise TQConfigError(f"tq-sglang does not support {feature} yet")

    def move_kv_cache(self, tgt_loc, src_loc):
        self._refuse("moving KV slots (speculative decoding)")

    def get_cpu_copy(self, *args, **kwargs):
        self._refuse("copying the KV cache to host memory")

    def load_cpu_copy(self, *args, **kwargs):
        self._refuse("loading the KV cache from host memory")

    def get_contiguous_buf_infos(self):
        self._refuse("KV transfer between prefill and decode servers")
