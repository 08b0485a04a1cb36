"""Input checks shared by every implementation of the paged ops.

They run before anything is written, so a bad call raises and leaves the cache untouched. The
value checks (slot and block-table ranges) read tensors on the host: the reference ops run them
always, kernels only when asked (``validate=True``), because a host sync breaks CUDA graphs.
"""

from __future__ import annotations

import torch

from tq_core.errors import TQInputError
from tq_core.layout import CacheLayout

# float64 is for precision checks (a float64 model against its float64 twin); ops/__init__.py
# sends it to the reference, never to a kernel.
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INDEX = (torch.int32, torch.int64)


def _fail(message: str) -> None:
    raise TQInputError(message)


def check_float(name: str, x: torch.Tensor, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        _fail(f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dim() != ndim:
        _fail(f"{name} must have {ndim} dimensions, got shape {list(x.shape)}")


def check_index(name: str, x: torch.Tensor, ndim: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in _INDEX:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        _fail(f"{name} must be an int32 or int64 tensor, got {got}")
    if x.dim() != ndim:
        _fail(f"{name} must have {ndim} dimensions, got shape {list(x.shape)}")


def check_cache(kv_cache: torch.Tensor, layout: CacheLayout) -> None:
    """Rows may be longer than page_bytes (engines round pages up to their own sizes); each row
    must be contiguous bytes."""
    if not isinstance(kv_cache, torch.Tensor) or kv_cache.dtype != torch.uint8:
        got = kv_cache.dtype if isinstance(kv_cache, torch.Tensor) else type(kv_cache).__name__
        _fail(f"kv_cache must be a uint8 tensor, got {got}")
    if kv_cache.dim() != 2 or kv_cache.shape[1] < layout.page_bytes:
        _fail(
            f"kv_cache must be uint8 [num_blocks, >= {layout.page_bytes}] for this layout, "
            f"got {list(kv_cache.shape)}"
        )
    if kv_cache.stride(1) != 1:
        _fail("kv_cache rows must be contiguous bytes (stride 1 along the page)")


def check_heads(name: str, x: torch.Tensor, num_heads: int | None, layout: CacheLayout) -> None:
    if x.shape[-1] != layout.head_dim:
        _fail(f"{name} has head_dim {x.shape[-1]}, the layout has {layout.head_dim}")
    if num_heads is not None and x.shape[-2] != num_heads:
        _fail(f"{name} has {x.shape[-2]} heads, the layout has {num_heads} KV heads")


def check_store_inputs(key, value, kv_cache, slot_mapping, layout: CacheLayout) -> None:
    check_float("key", key, 3)
    check_float("value", value, 3)
    if key.shape != value.shape:
        _fail(f"key {list(key.shape)} and value {list(value.shape)} must have the same shape")
    check_heads("key", key, layout.num_kv_heads, layout)
    check_cache(kv_cache, layout)
    check_index("slot_mapping", slot_mapping, 1)
    if slot_mapping.shape[0] != key.shape[0]:
        _fail(f"slot_mapping has {slot_mapping.shape[0]} slots for {key.shape[0]} tokens")
    if slot_mapping.device != key.device or kv_cache.device != key.device:
        _fail("key, value, kv_cache and slot_mapping must be on one device")


def check_store_values(slot_mapping: torch.Tensor, kv_cache: torch.Tensor, layout) -> None:
    num_slots = kv_cache.shape[0] * layout.block_size
    if slot_mapping.numel() == 0:
        return
    low, high = int(slot_mapping.min()), int(slot_mapping.max())
    if low < -1 or high >= num_slots:
        bad = low if low < -1 else high
        _fail(f"slot {bad} is out of range; slots are -1 (skip) or 0..{num_slots - 1}")
    valid = slot_mapping[slot_mapping >= 0]
    if valid.unique().numel() != valid.numel():
        _fail("slot_mapping writes the same slot twice")


def check_attention_inputs(query, kv_cache, block_table, seq_lens, layout, num_seqs) -> None:
    check_heads("query", query, None, layout)
    num_q_heads = query.shape[-2]
    if num_q_heads % layout.num_kv_heads:
        _fail(
            f"{num_q_heads} query heads are not a multiple of {layout.num_kv_heads} KV heads "
            "(GQA needs whole groups)"
        )
    check_cache(kv_cache, layout)
    check_index("block_table", block_table, 2)
    check_index("seq_lens", seq_lens, 1)
    if block_table.shape[0] != num_seqs or seq_lens.shape[0] != num_seqs:
        _fail(
            f"block_table has {block_table.shape[0]} rows and seq_lens {seq_lens.shape[0]} "
            f"entries for {num_seqs} sequences"
        )


def check_attention_values(kv_cache, block_table, seq_lens, query_lens, layout) -> None:
    if seq_lens.numel() == 0:
        return
    if bool((seq_lens < query_lens).any()):
        _fail("every seq_len must count the sequence's new query tokens too")
    max_tokens = block_table.shape[1] * layout.block_size
    longest = int(seq_lens.max())
    if longest > max_tokens:
        _fail(
            f"block_table is too short: a sequence of {longest} tokens needs "
            f"{-(-longest // layout.block_size)} blocks, the table has {block_table.shape[1]}"
        )
    blocks_used = -(-seq_lens // layout.block_size)
    columns = torch.arange(block_table.shape[1], device=block_table.device)
    used = columns.unsqueeze(0) < blocks_used.unsqueeze(1)
    ids = block_table[used]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= kv_cache.shape[0]):
        _fail(f"block_table names a block outside 0..{kv_cache.shape[0] - 1}")


def check_decode_query(query: torch.Tensor) -> tuple[int, int]:
    """(num_seqs, num_query_tokens) of a decode query [num_seqs, 1..8, num_q_heads, head_dim]."""
    check_float("query", query, 4)
    num_seqs, num_query_tokens = query.shape[:2]
    if not 1 <= num_query_tokens <= 8:
        _fail(
            f"decode_attention takes 1 to 8 query tokens per sequence, got {num_query_tokens}; "
            "use prefill_attention for longer chunks"
        )
    return num_seqs, num_query_tokens


def check_window_and_softcap(sliding_window, logit_softcap) -> None:
    if sliding_window is not None and sliding_window < 1:
        _fail(f"sliding_window={sliding_window} must be >= 1 (None = no window)")
    if logit_softcap is not None and not logit_softcap > 0:
        _fail(f"logit_softcap={logit_softcap} must be > 0 (None = no cap)")


def query_lengths(query_start_loc: torch.Tensor, query: torch.Tensor) -> tuple[list, torch.Tensor]:
    """(starts as a host list, query lengths per sequence) after checking that
    ``query_start_loc`` splits the rows of ``query`` (rows past the last start are padding).
    Reads the tensor on the host."""
    starts = query_start_loc.tolist()
    lengths = torch.tensor(
        [starts[i + 1] - starts[i] for i in range(len(starts) - 1)], device=query_start_loc.device
    )
    if starts[0] != 0 or starts[-1] > query.shape[0] or bool((lengths < 0).any()):
        _fail(f"query_start_loc {starts} does not split {query.shape[0]} query tokens")
    return starts, lengths


def check_host_copies(query_start_loc, query_start_loc_host, seq_lens, seq_lens_host) -> None:
    """Host lists given alongside query_start_loc / seq_lens hold the same values (reads the
    tensors on the host: for the reference and ``validate=True``)."""
    for name, tensor, host in (
        ("query_start_loc", query_start_loc, query_start_loc_host),
        ("seq_lens", seq_lens, seq_lens_host),
    ):
        if host is not None and [int(x) for x in host] != tensor.tolist():
            _fail(f"{name}_host {list(host)} differs from {name} {tensor.tolist()}")
