"""tq's SGLang attention backend (``--attention-backend tq``): translation only.

SGLang hands each layer the batch's ``ForwardBatch``; its ``req_to_token`` rows, read every
``page_size`` columns and divided by ``page_size``, are tq's block table, ``seq_lens`` (new
tokens included) are tq's, and the extend lengths give the query start offsets. Extends
(prefills, chunked prefills, radix-cache hits, mixed batches) run ``ops.prefill_attention``
over everything cached before them; decodes run ``ops.decode_attention``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.layers.radix_attention import AttentionType

from tq_core import ops
from tq_core.errors import TQConfigError, TQUnsupportedModelError
from tq_sglang.pool import TQTokenToKVPool


@dataclass
class TQForwardMetadata:
    block_table: torch.Tensor  # [batch, pages], int32
    seq_lens: torch.Tensor  # [batch], new tokens included
    query_start_loc: torch.Tensor | None  # [batch + 1] for extends, None for decodes


def block_table_of(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, page_size: int):
    """Each request's page ids: the slot of every page's first position, divided by page_size."""
    return torch.div(
        req_to_token[req_pool_indices][:, ::page_size], page_size, rounding_mode="floor"
    ).to(torch.int32)


def query_start_loc_of(extend_seq_lens: torch.Tensor) -> torch.Tensor:
    """[0, l0, l0 + l1, ...]: where each request's new tokens start in the batch."""
    starts = torch.cumsum(extend_seq_lens, dim=0).to(torch.int32)
    return torch.nn.functional.pad(starts, (1, 0))


def window_of(layer) -> int | None:
    """SGLang's ``sliding_window_size`` s lets a query see keys at positions q-s .. q, which is
    tq's window of s + 1 tokens; -1 or None means full attention."""
    size = getattr(layer, "sliding_window_size", None)
    return None if size is None or size < 0 else size + 1


class TQAttnBackend(AttentionBackend):
    def __init__(self, model_runner) -> None:
        super().__init__()
        pool = model_runner.token_to_kv_pool
        if not isinstance(pool, TQTokenToKVPool):
            raise TQConfigError(
                f"--attention-backend tq found SGLang's {type(pool).__name__}, not tq's pool: the "
                "tq plugin's hooks did not run (is SGLANG_PLUGINS excluding 'tq'?)"
            )
        self.pool = pool
        self.req_to_token = model_runner.req_to_token_pool.req_to_token
        self.device = model_runner.device
        self.forward_metadata: TQForwardMetadata | None = None

    def init_forward_metadata(self, forward_batch) -> None:
        mode = forward_batch.forward_mode
        if mode.is_idle():
            self.forward_metadata = None
            return
        if mode.is_target_verify():
            raise TQConfigError("tq-sglang does not support speculative decoding yet")
        starts = None if mode.is_decode() else query_start_loc_of(forward_batch.extend_seq_lens)
        self.forward_metadata = TQForwardMetadata(
            block_table=block_table_of(
                self.req_to_token, forward_batch.req_pool_indices, self.pool.page_size
            ),
            seq_lens=forward_batch.seq_lens.to(torch.int32),
            query_start_loc=starts,
        )

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        raise TQConfigError(
            "tq-sglang does not capture CUDA graphs yet: launch SGLang with --disable-cuda-graph"
        )

    def support_triton(self) -> bool:
        # SGLang's own Triton helpers (positions, req_to_token writes): GPU only.
        return self.device != "cpu" and torch.device(self.device).type != "cpu"

    def _check_layer(self, layer) -> None:
        if layer.is_cross_attention or layer.attn_type != AttentionType.DECODER:
            raise TQUnsupportedModelError("tq-sglang supports decoder self-attention only")
        if layer.qk_head_dim != layer.v_head_dim:
            raise TQUnsupportedModelError("tq-sglang needs equal key and value head sizes")

    def _save(self, layer, forward_batch, k, v, save_kv_cache: bool) -> None:
        if save_kv_cache and k is not None and v is not None:
            self.pool.set_kv_buffer(layer, forward_batch.out_cache_loc, k, v)

    @staticmethod
    def _options(layer) -> dict:
        cap = getattr(layer, "logit_cap", 0.0) or None
        return {"sliding_window": window_of(layer), "logit_softcap": cap}

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        self._check_layer(layer)
        self._save(layer, forward_batch, k, v, save_kv_cache)
        meta = self.forward_metadata
        heads, head_dim = layer.tp_q_head_num, layer.qk_head_dim
        # rotate=True: query and output stay in the model's domain (the op rotates whichever
        # side is cheaper: the keys while decompressing them, or both inside its kernel).
        out = ops.prefill_attention(
            q.reshape(-1, heads, head_dim), self.pool.pages(layer.layer_id), meta.block_table,
            meta.query_start_loc, meta.seq_lens, self.pool.layout(layer.layer_id),
            layer.scaling, rotate=True, **self._options(layer),
        )  # fmt: skip
        return out.to(q.dtype).reshape(-1, heads * head_dim)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        self._check_layer(layer)
        self._save(layer, forward_batch, k, v, save_kv_cache)
        meta = self.forward_metadata
        heads, head_dim = layer.tp_q_head_num, layer.qk_head_dim
        query = q.reshape(-1, 1, heads, head_dim)
        out = ops.decode_attention(
            query, self.pool.pages(layer.layer_id), meta.block_table, meta.seq_lens,
            self.pool.layout(layer.layer_id), layer.scaling, rotate=True, **self._options(layer),
        )  # fmt: skip
        return out.to(q.dtype).reshape(-1, heads * head_dim)
