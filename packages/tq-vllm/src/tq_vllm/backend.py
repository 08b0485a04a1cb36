"""tq's vLLM attention backend: vLLM's paged blocks hold tq pages; tq_core computes.

Translation only: vLLM's metadata (slot mapping, block table, seq_lens, query_start_loc) maps
one to one onto ``tq_core.ops``' conventions, which follow vLLM's. Each layer's cache is one
uint8 page of ``CacheLayout.page_bytes`` per block; ``customize_spec`` tells vLLM that size, so
vLLM's own block manager, prefix cache and scheduler work on compressed pages unchanged.
Decodes (the first requests of a batch, which vLLM orders decodes first for this backend) run
``ops.decode_attention``; the rest (prefills, chunked prefills, prefix-cache hits) run
``ops.prefill_attention`` against everything cached before them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from vllm.config import get_current_vllm_config
from vllm.logger import init_logger
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)
from vllm.v1.attention.backends.utils import split_decodes_and_prefills

from tq_core import CacheLayout, TQCodec, ops
from tq_core.centering import FirstWriteKeyMean
from tq_core.config import SUPPORTED_HEAD_DIMS
from tq_core.errors import TQConfigError, TQUnsupportedModelError
from tq_core.layout import REGION_ALIGNMENT
from tq_vllm import _compat, settings

logger = init_logger("vllm.tq_vllm")  # under "vllm": vLLM's log configuration applies
#: Block sizes must be multiples of the core's region alignment: then a page is exactly
#: block_size x the packed bytes of one token, which is how vLLM's spec counts bytes.
BLOCK_MULTIPLE = REGION_ALIGNMENT
#: ``ops.decode_attention`` takes 1-8 query tokens per sequence (speculative verification).
DECODE_MAX_QUERY = 8


def packed_bytes_per_token(num_kv_heads: int, head_size: int) -> int:
    """K + V bytes of one token of one layer under the engine's tq settings."""
    codec = TQCodec.from_config(replace(settings.active_config(), head_dim=head_size))
    return CacheLayout(codec, num_kv_heads, BLOCK_MULTIPLE).packed_bytes_per_token


class TQAttentionBackend(AttentionBackend):
    """Selected with ``--attention-backend CUSTOM`` once the tq plugin is installed."""

    accept_output_buffer: bool = True
    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]

    @staticmethod
    def get_name() -> str:
        # vLLM checks the name of a CUSTOM backend against its enum: it must be "CUSTOM".
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[TQAttentionImpl]:
        return TQAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[TQMetadataBuilder]:
        return TQMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list:
        return [MultipleOf(BLOCK_MULTIPLE)]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(SUPPORTED_HEAD_DIMS)

    @classmethod
    def supports_kv_cache_dtype(cls, kv_cache_dtype) -> bool:
        # Any: the impl refuses a conflicting one with a message that says what to do instead.
        return True

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER

    @classmethod
    def customize_spec(cls, spec):
        """One head slot of ``packed_bytes_per_token`` uint8 per token: a block of B tokens
        is then exactly one tq page of B tokens."""
        return replace(
            spec,
            dtype=torch.uint8,
            num_head_slots=1,
            state_content_bytes=packed_bytes_per_token(spec.num_kv_heads, spec.head_size),
        )

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size, cache_dtype_str="auto"):
        """vLLM < 0.30 shapes each layer's cache from this (0.30+ from customize_spec's
        spec): the same [num_blocks, 1, block_size, packed bytes per token] uint8 view."""
        return (num_blocks, 1, block_size, packed_bytes_per_token(num_kv_heads, head_size))

    @classmethod
    def supported_kv_cache_layouts(cls):
        from vllm.v1.kv_cache_interface import KVCacheLayout

        # Layer-compact: one layer's pages are rows of one [num_blocks, page_bytes] tensor.
        return (KVCacheLayout.LBHNC,)


@dataclass
class TQMetadata:
    num_actual_tokens: int
    num_decodes: int
    num_decode_tokens: int
    decode_query_len: int
    prefill_query_start_loc: torch.Tensor  # [num_prefills + 1], from the first prefill token
    seq_lens: torch.Tensor  # [num_reqs], new tokens included
    block_table: torch.Tensor  # [num_reqs, max_blocks]
    # The prefills' query_start_loc and seq_lens from vLLM's CPU copies, read once per step so
    # no layer reads them back from the GPU (None where vLLM keeps no copy).
    prefill_query_start_loc_host: list[int] | None = None
    prefill_seq_lens_host: list[int] | None = None

    @property
    def num_prefills(self) -> int:
        return self.prefill_query_start_loc.shape[0] - 1


class TQMetadataBuilder(AttentionMetadataBuilder[TQMetadata]):
    # Batches of single-token decodes replay as full CUDA graphs: the decode and store kernels
    # neither sync with the host nor depend on values of the metadata beyond its shapes.
    # Anything else (prefills, speculative verification) runs outside the graph.
    _cudagraph_support: ClassVar[AttentionCGSupport] = (
        AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    )

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        # Decodes (and speculative verifications of up to DECODE_MAX_QUERY tokens) first.
        self._init_reorder_batch_threshold(1, supports_spec_as_decode=True)

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> TQMetadata:
        meta = common_attn_metadata
        threshold = min(self.reorder_batch_threshold or 1, DECODE_MAX_QUERY)
        num_decodes, _, num_decode_tokens, _ = split_decodes_and_prefills(
            meta, decode_threshold=threshold, require_uniform=True
        )
        decode_len = num_decode_tokens // num_decodes if num_decodes else 0
        if num_decodes and decode_len * num_decodes != num_decode_tokens:
            # Padded requests of no tokens: the ragged op handles any mix.
            num_decodes, num_decode_tokens, decode_len = 0, 0, 0
        starts = meta.query_start_loc[: meta.num_reqs + 1]
        starts_host = lens_host = None
        # Exact for prefill rows (vLLM's upper bound is loose only on speculative decode rows).
        lens_cpu = getattr(meta, "seq_lens_cpu_upper_bound", None)
        if meta.num_reqs > num_decodes and lens_cpu is not None:
            starts_cpu = meta.query_start_loc_cpu[num_decodes : meta.num_reqs + 1]
            starts_host = (starts_cpu - num_decode_tokens).tolist()
            lens_host = lens_cpu[num_decodes : meta.num_reqs].tolist()
        return TQMetadata(
            num_actual_tokens=meta.num_actual_tokens,
            num_decodes=num_decodes,
            num_decode_tokens=num_decode_tokens,
            decode_query_len=decode_len,
            prefill_query_start_loc=starts[num_decodes:] - num_decode_tokens,
            seq_lens=meta.seq_lens[: meta.num_reqs],
            block_table=meta.block_table_tensor[: meta.num_reqs],
            prefill_query_start_loc_host=starts_host,
            prefill_seq_lens_host=lens_host,
        )


class TQAttentionImpl(AttentionImpl):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
        **unused,
    ) -> None:
        if alibi_slopes is not None:
            raise TQUnsupportedModelError("tq-vllm does not support ALiBi attention")
        if sinks is not None:
            raise TQUnsupportedModelError("tq-vllm does not support attention sinks")
        if attn_type != AttentionType.DECODER:
            raise TQUnsupportedModelError(f"tq-vllm supports decoder attention, not {attn_type}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap or None
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.attn_type = attn_type
        self.kv_cache_dtype = kv_cache_dtype
        vllm_config = get_current_vllm_config()
        self.config = settings.config_from_vllm(vllm_config, head_size)
        self.codec = TQCodec.from_config(self.config)
        # Centered keys shift each query's scores by one constant, which softmax ignores but a
        # logit soft-cap does not: such layers store plain keys.
        self.key_centering = None
        if settings.center_keys_from_vllm(vllm_config) and not self.logits_soft_cap:
            # Allocated now, outside any CUDA-graph capture; updated in place from then on.
            device = torch.device(vllm_config.device_config.device_type)
            self.key_centering = FirstWriteKeyMean(self.num_kv_heads, head_size, device)
        self._layouts: dict[int, CacheLayout] = {}
        self._prefill_compiled: set[tuple[CacheLayout, torch.dtype]] = set()
        per_token = CacheLayout(self.codec, self.num_kv_heads, BLOCK_MULTIPLE)
        logger.info_once(
            "tq-vllm: attention over TurboQuant K%dV%d pages, %d bytes per token per layer "
            "(bf16: %d)",
            self.config.k_bits, self.config.v_bits, per_token.packed_bytes_per_token,
            4 * self.num_kv_heads * head_size,
        )  # fmt: skip

    def _layout_for(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, CacheLayout]:
        """vLLM's [num_blocks, 1, block_size, packed_bytes] view as tq's [num_blocks,
        page_bytes] rows, and the layout of that block size."""
        block_size = kv_cache.shape[-2]
        layout = self._layouts.get(block_size)
        if layout is None:
            if block_size % BLOCK_MULTIPLE:
                raise TQConfigError(
                    f"block_size={block_size}: tq-vllm needs a multiple of {BLOCK_MULTIPLE}"
                )
            layout = CacheLayout(self.codec, self.num_kv_heads, block_size)
            self._layouts[block_size] = layout
        return kv_cache.view(kv_cache.shape[0], layout.page_bytes), layout

    @staticmethod
    def _dense_attention(query: torch.Tensor, layout: CacheLayout) -> dict:
        """Prefill's dense kernel behind the decompressed pages: vLLM's own FlashAttention where
        the Triton ops run and it exists (GPU, half precision), else tq_core's default."""
        flash = _compat.flash_attention_varlen() if query.is_cuda else None
        usable = query.dtype in (torch.float16, torch.bfloat16)
        if flash is None or not usable or ops.implementation(query.device, layout) != "triton":
            return {}
        return {"dense_attention": flash}

    def _compile_prefill(self, pages: torch.Tensor, layout: CacheLayout, dtype) -> None:
        """The prefill path's kernels, compiled without a launch. The first call with a cache
        is vLLM's CUDA-graph capture of decodes, before serving; its warm-up hands this backend
        no prefill, so they would otherwise compile during the first request. Only an
        optimization: if it fails, they compile then, as before, and the log says why."""
        self._prefill_compiled.add((layout, dtype))
        try:
            ops.compile_prefill(pages, layout, dtype, rotate=True)
        except Exception as error:  # any failure costs the first request its compile, no more
            logger.warning_once(
                "tq-vllm: the prefill kernels could not be compiled ahead (%s: %s); they will "
                "compile during the first prefill", type(error).__name__, error,
            )  # fmt: skip

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        pages, layout = self._layout_for(kv_cache)
        n = slot_mapping.shape[0]
        keys = key[:n]
        if self.key_centering is not None:  # slot -1: padding and warm-up tokens, not stored
            keys = self.key_centering.center(keys, slot_mapping >= 0)
        ops.store(keys, value[:n], pages, slot_mapping, layout)

    def forward(
        self,
        layer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: TQMetadata | None,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("tq-vllm does not fuse output quantization")
        if attn_metadata is None:  # profiling / warm-up run: no cache yet
            return output
        pages, layout = self._layout_for(kv_cache)
        if (layout, query.dtype) not in self._prefill_compiled:
            self._compile_prefill(pages, layout, query.dtype)
        meta = attn_metadata
        n, nd = meta.num_actual_tokens, meta.num_decode_tokens
        query = query[:n].view(n, self.num_heads, self.head_size)
        out = output[:n].view(n, self.num_heads, self.head_size)
        common = dict(sliding_window=self.sliding_window, logit_softcap=self.logits_soft_cap)
        if meta.num_decodes:
            shape = (meta.num_decodes, meta.decode_query_len, self.num_heads, self.head_size)
            # Written straight into vLLM's output buffer when the dtypes agree (they do on GPU).
            target = out[:nd].view(shape) if out.dtype == query.dtype else None
            decoded = ops.decode_attention(
                query[:nd].reshape(shape).contiguous(), pages,
                meta.block_table[: meta.num_decodes], meta.seq_lens[: meta.num_decodes],
                layout, self.scale, rotate=True, out=target, **common,
            )  # fmt: skip
            if target is None:
                out[:nd] = decoded.reshape(nd, *query.shape[1:]).to(out.dtype)
        if meta.num_prefills:
            # Query and output stay in the model's domain (rotate=True): the op rotates the
            # decompressed keys back instead, no pass over the query or the output.
            target = out[nd:] if out.dtype == query.dtype else None
            prefilled = ops.prefill_attention(
                query[nd:], pages, meta.block_table[meta.num_decodes :],
                meta.prefill_query_start_loc, meta.seq_lens[meta.num_decodes :], layout,
                self.scale, rotate=True, out=target, **common,
                query_start_loc_host=meta.prefill_query_start_loc_host,
                seq_lens_host=meta.prefill_seq_lens_host,
                **self._dense_attention(query, layout),
            )  # fmt: skip
            if target is None:
                out[nd:] = prefilled.to(out.dtype)
        return output
