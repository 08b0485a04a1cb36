"""Kernel benchmark on one CUDA GPU: tq's Triton ops against bf16 and the TurboQuant peers.

    python benchmarks/kernel_bench.py --suite full --out benchmarks/results/kernels-h100

writes ``<out>.json`` (every row, the machine, versions, git SHA) and ``<out>.md`` (the table).
Timing: CUDA graphs of many calls, replayed; the median replay over the calls in it. Inputs
rotate over enough copies that one pass over them is >= 4x the L2 cache, so no row is served
from cache unless its working set truly fits. Each decode row also times bf16 torch SDPA
(flash and cuDNN; "bf16" is the faster) on contiguous bf16 K/V of the same shape, in the same
process, and the copy bandwidth is measured at the start of the run.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from tq_core import TQCodec
from tq_core.cli.provenance import environment_record
from tq_core.ops import triton_attention, triton_decompress, triton_store
from tq_core.rotation import rotate, unrotate

sys.path.insert(0, str(pathlib.Path(__file__).parent / "gpu"))

L2_BYTES = 50 * 2**20
MODELS = {
    # name: (query heads, KV heads, head_dim)
    "llama3-8b": (32, 8, 128),
    "smollm2": (9, 3, 64),
    "gemma2-9b": (16, 8, 256),
}
ALL_BITS = [(4, 4), (6, 4), (5, 4), (8, 4), (4, 8), (3, 3), (2, 2), (8, 8)]
BLOCK_SIZE = 16


def _suite(name: str) -> dict:
    if name == "tune":
        return {
            "tune": [
                ("llama3-8b", 1, 1024),
                ("llama3-8b", 2, 1024),
                ("llama3-8b", 4, 1024),
                ("llama3-8b", 8, 1024),
                ("llama3-8b", 1, 4096),
                ("llama3-8b", 8, 4096),
                ("llama3-8b", 8, 16384),
            ],
            "tune_store": [2048, 16384, 65536],
        }
    if name == "rotation":
        shapes = [(1, 1024), (8, 1024), (8, 16384), (32, 32768)]
        return {"decode": [("llama3-8b", b, c, (4, 4)) for b, c in shapes]}
    if name == "smoke":
        return {
            "decode": [("llama3-8b", b, c, (4, 4)) for b, c in [(1, 1024), (8, 16384)]],
            "bits_sweep": [],
            "store": [2048],
            "prefill": [(2048, 16384)],
            "decompress": [16384],
            "peers": [(8, 16384)],
        }
    decode = []
    for model, batches, contexts in (
        ("llama3-8b", (1, 8, 32, 128), (1024, 4096, 16384, 32768, 65536)),
        ("smollm2", (1, 8, 32, 128), (1024, 4096, 16384, 32768)),
        ("gemma2-9b", (1, 8, 32), (4096, 16384)),
    ):
        for batch in batches:
            for context in contexts:
                if batch * context <= 4 * 2**20:  # bf16 K/V of 32 GiB at most (Llama shape)
                    decode.append((model, batch, context, (4, 4)))
    sweep = [
        ("llama3-8b", b, c, bits)
        for b, c in ((1, 1024), (8, 16384), (32, 32768))
        for bits in ALL_BITS
        if bits != (4, 4)
    ]
    return {
        "decode": decode,
        "bits_sweep": sweep,
        "store": [32, 128, 2048, 16384, 65536],
        "prefill": [(512, 16384), (2048, 16384), (8192, 0)],
        "decompress": [16384, 65536],
        "peers": [(1, 1024), (8, 16384), (32, 16384), (32, 32768)],
    }


# -- timing -------------------------------------------------------------------------------------


def _eager_ms(fn, count: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(count):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / count


def time_calls(calls: list, *, graph: bool = True, replays: int = 15) -> tuple[float, str]:
    """Median ms per call over ``calls`` run round-robin; ("graph" | "eager") says how."""
    for fn in calls:
        fn()  # compile, autotune, allocate workspaces
    torch.cuda.synchronize()
    estimate = _eager_ms(lambda: [fn() for fn in calls], 3) / len(calls)
    per_replay = max(len(calls), min(400, math.ceil(3.0 / max(estimate, 1e-4))))
    per_replay = math.ceil(per_replay / len(calls)) * len(calls)
    if graph:
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream), torch.cuda.graph(cuda_graph, stream=stream):
                for i in range(per_replay):
                    calls[i % len(calls)]()
            torch.cuda.current_stream().wait_stream(stream)
            cuda_graph.replay()
            times = [_eager_ms(cuda_graph.replay, 1) / per_replay for _ in range(replays)]
            del cuda_graph
            return statistics.median(times), "graph"
        except RuntimeError as error:
            print(f"  (graph capture failed, timing eagerly: {str(error)[:80]})")
            torch.cuda.synchronize()
    times = [
        _eager_ms(lambda: [fn() for fn in calls], per_replay // len(calls)) / len(calls)
        for _ in range(replays)
    ]
    return statistics.median(times), "eager"


def copies_for(nbytes: int) -> int:
    return max(1, min(16, math.ceil(4 * L2_BYTES / max(nbytes, 1))))


def copy_bandwidth() -> float:
    """Device-to-device copy, GB/s of bytes read + written."""
    src = torch.randint(0, 255, (2**30,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms, _ = time_calls([lambda: dst.copy_(src)], graph=False)
    return 2 * src.numel() / ms / 1e6


# -- inputs -------------------------------------------------------------------------------------


def paged_cache(layout, batch: int, context: int, copies: int):
    """Caches filled by the store kernel from random K/V, one shuffled block table."""
    blocks_per_seq = math.ceil(context / BLOCK_SIZE)
    num_blocks = batch * blocks_per_seq
    cache = torch.empty(num_blocks, layout.page_bytes, dtype=torch.uint8, device="cuda")
    chunk = 2**17
    total = num_blocks * BLOCK_SIZE
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        k = torch.randn(n, layout.num_kv_heads, layout.head_dim, device="cuda")
        v = torch.randn_like(k)
        slots = torch.arange(start, start + n, device="cuda")
        triton_store.store(k.bfloat16(), v.bfloat16(), cache, slots, layout)
    order = torch.randperm(num_blocks, device="cuda").to(torch.int32)
    block_table = order.view(batch, blocks_per_seq).contiguous()
    caches = [cache] + [cache.clone() for _ in range(copies - 1)]
    return caches, block_table


def decode_inputs(model, batch, context, bits):
    """(layout, packed bytes, caches, block table, seq_lens, queries) of one decode shape: enough
    cache and query copies to rotate past the L2 cache, every sequence ``context`` long."""
    num_q, num_kv, head_dim = MODELS[model]
    layout = TQCodec(head_dim, *bits).cache_layout(num_kv, BLOCK_SIZE)
    packed = batch * context * layout.packed_bytes_per_token
    copies = copies_for(packed)
    caches, block_table = paged_cache(layout, batch, context, copies)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    queries = [
        torch.randn(batch, 1, num_q, head_dim, device="cuda", dtype=torch.bfloat16)
        for _ in range(copies)
    ]
    return layout, packed, caches, block_table, seq_lens, queries


# (label, key codebook, value codebook, rotations) of the K4V4 rows read with other codebooks:
# uniform and grid 4-bit fields decode without a table (docs/kernels.md).
UNIFORM_VARIANTS = [
    ("uniform V", "lloyd-max", "uniform", "none"),
    ("uniform V rotate=True", "lloyd-max", "uniform", "fused"),
    ("uniform K+V", "uniform", "uniform", "none"),
    ("uniform K+V rotate=True", "uniform", "uniform", "fused"),
    # The Lloyd-Max grid codebook (lloyd-max-grid): 1024 + code by two byte permutes per four
    # codes.
    ("grid K+V", "lloyd-max-grid", "lloyd-max-grid", "none"),
    ("grid K+V rotate=True", "lloyd-max-grid", "lloyd-max-grid", "fused"),
    ("grid K, uniform V", "lloyd-max-grid", "uniform", "none"),
    # The companded codebook: a table codebook like Lloyd-Max (the same permutes, its own
    # immediates), so it should decode at Lloyd-Max's speed.
    ("companded K+V", "companded", "companded", "none"),
    ("companded K+V rotate=True", "companded", "companded", "fused"),
]


def decode_rows(
    model, batch, context, bits, copy_gbps, *, with_bf16=True, with_rotations=True,
    with_codebooks=True,
) -> list[dict]:  # fmt: skip
    num_q, num_kv, head_dim = MODELS[model]
    scale = 1 / math.sqrt(head_dim)
    layout, packed, caches, block_table, seq_lens, queries = decode_inputs(
        model, batch, context, bits
    )
    copies = len(caches)
    out = torch.empty_like(queries[0])

    def ours(i, rotations, layout=layout):
        """rotations: "none" (query pre-rotated), "torch" (two GEMMs around the op) or
        "fused" (rotate=True: inside the kernels). Adapters need one of the last two.
        ``layout``: the same bytes read with other codebooks (UNIFORM_VARIANTS)."""

        def call():
            q = rotate(queries[i], 0) if rotations == "torch" else queries[i]
            triton_attention.decode_attention(
                q, caches[i], block_table, seq_lens, layout, scale, out=out,
                rotate=rotations == "fused",
            )  # fmt: skip
            if rotations == "torch":
                unrotate(out, 0)

        return call

    base = {"op": "decode", "model": model, "batch": batch, "context": context}
    label = f"K{bits[0]}V{bits[1]}"
    rows = []
    variants = [
        (f"tq {label}", "none"),
        (f"tq {label} +rotations", "torch"),
        (f"tq {label} rotate=True", "fused"),
    ]
    for name, rotations in variants[: 3 if with_rotations else 1]:
        ms, how = time_calls([ours(i, rotations) for i in range(copies)])
        rows.append({**base, "impl": name, "bits": label, "ms": ms, "timing": how, "bytes": packed})
    if with_rotations and with_codebooks and bits == (4, 4):
        # The same pages read with the other codebooks (uniform and grid: the affine path).
        for tag, key_codebook, value_codebook, rotations in UNIFORM_VARIANTS:
            uniform = TQCodec(
                head_dim, *bits, key_codebook=key_codebook, value_codebook=value_codebook
            ).cache_layout(num_kv, BLOCK_SIZE)
            ms, how = time_calls([ours(i, rotations, uniform) for i in range(copies)])
            rows.append({
                **base, "impl": f"tq {label} {tag}", "bits": label, "ms": ms, "timing": how,
                "bytes": packed, "key_codebook": key_codebook, "value_codebook": value_codebook,
            })  # fmt: skip
    caches.clear()  # free the copies before the bf16 tensors arrive
    if with_bf16:
        rows += bf16_decode_rows(base, num_q, num_kv, head_dim, batch, context)
    return _finish(rows, copy_gbps)


def bf16_decode_rows(base, num_q, num_kv, head_dim, batch, context) -> list[dict]:
    nbytes = 2 * batch * num_kv * context * head_dim * 2
    copies = copies_for(nbytes)
    kv = [
        (
            torch.randn(batch, num_kv, context, head_dim, device="cuda", dtype=torch.bfloat16),
            torch.randn(batch, num_kv, context, head_dim, device="cuda", dtype=torch.bfloat16),
        )
        for _ in range(copies)
    ]
    q = [
        torch.randn(batch, num_q, 1, head_dim, device="cuda", dtype=torch.bfloat16)
        for _ in range(copies)
    ]
    rows = []
    for name, backend in (
        ("bf16 SDPA flash", SDPBackend.FLASH_ATTENTION),
        ("bf16 SDPA cuDNN", SDPBackend.CUDNN_ATTENTION),
    ):

        def call(i, backend=backend):
            def run():
                with sdpa_kernel([backend]):
                    F.scaled_dot_product_attention(q[i], *kv[i], enable_gqa=True)

            return run

        try:
            ms, how = time_calls([call(i) for i in range(copies)])
        except RuntimeError as error:
            print(f"  {name} unavailable: {str(error)[:100]}")
            continue
        rows.append(
            {**base, "impl": name, "bits": "bf16", "ms": ms, "timing": how, "bytes": nbytes}
        )
    kv.clear()  # the paged row below needs the memory
    q.clear()
    paged = _vllm_paged_decode_row(num_q, num_kv, head_dim, batch, context, copies)
    if paged is not None:
        ms, how = paged
        rows.append(
            {**base, "impl": "bf16 vLLM flash-attn 3, paged", "bits": "bf16", "ms": ms,
             "timing": how, "bytes": nbytes}
        )  # fmt: skip
    return rows


def _vllm_paged_decode_row(num_q, num_kv, head_dim, batch, context, copies):
    """(ms, timing) of bf16 decode as vLLM serves it on Hopper: FlashAttention 3 over a paged
    cache of 16-token blocks (pages shuffled), its own split-KV heuristic. None where vLLM's
    flash-attn is not importable. The strongest bf16 decode we know of: in vLLM it reads the
    KV near the copy bandwidth (benchmarks/results/vllm-h200-rotate/table.md)."""
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    block = 16
    per_seq = -(-context // block)
    num_blocks = batch * per_seq
    shape = (num_blocks, block, num_kv, head_dim)
    caches = [
        (
            torch.randn(shape, device="cuda", dtype=torch.bfloat16),
            torch.randn(shape, device="cuda", dtype=torch.bfloat16),
        )
        for _ in range(copies)
    ]
    order = torch.randperm(num_blocks, device="cuda").to(torch.int32)
    block_table = order.view(batch, per_seq)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    cu_q = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    q = [
        torch.randn(batch, num_q, head_dim, device="cuda", dtype=torch.bfloat16)
        for _ in range(copies)
    ]
    out = torch.empty_like(q[0])

    def call(i):
        def run():
            flash_attn_varlen_func(
                q[i], *caches[i], max_seqlen_q=1, cu_seqlens_q=cu_q, max_seqlen_k=context,
                seqused_k=seq_lens, block_table=block_table, softmax_scale=head_dim**-0.5,
                causal=True, out=out, fa_version=3,
            )  # fmt: skip

        return run

    try:
        return time_calls([call(i) for i in range(copies)])
    except RuntimeError as error:
        print(f"  bf16 vLLM flash-attn 3 (paged) unavailable: {str(error)[:100]}")
        return None


def peer_decode_rows(batch, context, copy_gbps) -> list[dict]:
    try:
        import peers
    except ImportError as error:
        print(f"  peers not staged ({error})")
        return []
    num_q, num_kv, head_dim = MODELS["llama3-8b"]
    base = {"op": "decode", "model": "llama3-8b", "batch": batch, "context": context}
    rows = []
    for peer in peers.decode_peers():
        try:
            fn, nbytes = peers.setup_decode(peer, batch, context, num_q, num_kv, head_dim, "cuda")
            ms, how = time_calls([fn])
        except Exception as error:  # a peer failing is a row note, not a crash
            print(f"  {peer}: {type(error).__name__}: {str(error)[:120]}")
            rows.append({**base, "impl": peer, "bits": "peer", "error": str(error)[:200]})
            continue
        rows.append(
            {**base, "impl": peer, "bits": "peer", "ms": ms, "timing": how, "bytes": nbytes}
        )
        torch.cuda.empty_cache()
    return _finish(rows, copy_gbps)


def store_rows(
    num_tokens,
    copy_gbps,
    *,
    with_peers=True,
    codebook="lloyd-max",
    norm_correction=True,
    model="llama3-8b",
) -> list[dict]:
    """tq's store (K4V4, ``codebook`` for K and V, with or without the codec's norm
    correction) of ``model``'s K/V shape and, with_peers, the peers' encode."""
    _, num_kv, head_dim = MODELS[model]
    codec = TQCodec(
        head_dim, 4, 4, key_codebook=codebook, value_codebook=codebook,
        norm_correction=norm_correction,
    )  # fmt: skip
    layout = codec.cache_layout(num_kv, BLOCK_SIZE)
    nbytes = num_tokens * (num_kv * head_dim * 2 * 2 + layout.packed_bytes_per_token + 8)
    copies = copies_for(nbytes)
    num_blocks = math.ceil(num_tokens / BLOCK_SIZE) * copies + 1
    cache = torch.empty(num_blocks, layout.page_bytes, dtype=torch.uint8, device="cuda")
    inputs = []
    for i in range(copies):
        k = torch.randn(num_tokens, num_kv, head_dim, device="cuda", dtype=torch.bfloat16)
        slots = torch.randperm(num_tokens, device="cuda") + i * num_tokens
        inputs.append((k, torch.randn_like(k), slots))
    calls = [lambda k=k, v=v, s=s: triton_store.store(k, v, cache, s, layout) for k, v, s in inputs]
    ms, how = time_calls(calls)
    base = {"op": "store", "model": model, "batch": num_tokens, "context": 0}
    impl = "tq K4V4" if codebook == "lloyd-max" else f"tq K4V4 {codebook}"
    rows = [{**base, "impl": impl, "bits": "K4V4", "ms": ms, "timing": how, "bytes": nbytes}]
    try:
        import peers

        for peer in peers.encode_peers() if with_peers else []:
            try:
                fn, peer_bytes = peers.setup_encode(peer, num_tokens, num_kv, head_dim, "cuda")
                ms, how = time_calls([fn])
                rows.append(
                    {**base, "impl": peer, "bits": "peer", "ms": ms, "timing": how,
                     "bytes": peer_bytes}
                )  # fmt: skip
            except Exception as error:
                print(f"  {peer}: {type(error).__name__}: {str(error)[:120]}")
    except ImportError:
        pass
    return _finish(rows, copy_gbps)


def decompress_rows(context, copy_gbps) -> list[dict]:
    """gather_kv alone (the "decompress" half of prefill): one sequence's pages to bf16 K and V,
    in the rotated domain and rotated back; bytes = packed read + bf16 written."""
    _, num_kv, head_dim = MODELS["llama3-8b"]
    layout = TQCodec(head_dim, 4, 4).cache_layout(num_kv, BLOCK_SIZE)
    nbytes = context * (layout.packed_bytes_per_token + num_kv * head_dim * 2 * 2)
    caches, block_table = paged_cache(layout, 1, context, copies_for(nbytes))
    out = tuple(
        torch.empty(num_kv, context, head_dim, device="cuda", dtype=torch.bfloat16) for _ in "kv"
    )
    base = {"op": "decompress", "model": "llama3-8b", "batch": 1, "context": context}
    rows = []
    default = dict(triton_decompress.TUNING)
    for register_lookup in (1, 0):
        triton_decompress.TUNING["register_lookup"] = register_lookup
        for back in (False, True):
            calls = [
                lambda c=c, u=back: triton_decompress.gather_kv(
                    c, block_table[0], context, layout, out=out, unrotate=u
                )
                for c in caches
            ]
            ms, how = time_calls(calls)
            name = "tq K4V4 gather_kv" + (", unrotated" if back else "")
            name += ", register lookup" if register_lookup else ", table lookup"
            rows.append(
                {**base, "impl": name, "bits": "K4V4", "ms": ms, "timing": how, "bytes": nbytes}
            )
    triton_decompress.TUNING.update(default)
    return _finish(rows, copy_gbps)


def prefill_rows(new_tokens, cached, copy_gbps) -> list[dict]:
    num_q, num_kv, head_dim = MODELS["llama3-8b"]
    seq_len = cached + new_tokens
    scale = 1 / math.sqrt(head_dim)
    layout = TQCodec(head_dim, 4, 4).cache_layout(num_kv, BLOCK_SIZE)
    caches, block_table = paged_cache(layout, 1, seq_len, 1)
    cache = caches[0]
    seq_lens = torch.tensor([seq_len], dtype=torch.int32, device="cuda")
    starts = torch.tensor([0, new_tokens], dtype=torch.int32, device="cuda")
    q = torch.randn(new_tokens, num_q, head_dim, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    k_bf16 = torch.randn(1, num_kv, seq_len, head_dim, device="cuda", dtype=torch.bfloat16)
    v_bf16 = torch.randn_like(k_bf16)
    q_sdpa = q.transpose(0, 1).unsqueeze(0)
    mask = causal_lower_right(new_tokens, seq_len)

    def flash():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            F.scaled_dot_product_attention(q_sdpa, k_bf16, v_bf16, attn_mask=mask, enable_gqa=True)

    def tq(method, host_layout=True, rotate=False):
        # host_layout: the batch layout as host lists too, as engines pass it (tq-vllm keeps
        # vLLM's CPU copies); without them "decompress" reads the device tensors back, and the
        # host then waits for the GPU once per call.
        host = {"query_start_loc_host": [0, new_tokens], "seq_lens_host": [seq_len]}

        def call():
            triton_attention.prefill_attention(
                q, cache, block_table, starts, seq_lens, layout, scale, out=out, method=method,
                rotate=rotate, **(host if host_layout else {}),
            )  # fmt: skip

        return call

    base = {"op": "prefill", "model": "llama3-8b", "batch": new_tokens, "context": cached}
    rows = []
    cases = [
        ("tq K4V4 inline", tq("inline"), True),
        # Host layout given: nothing read back, so it is captured like the others (or timed
        # eagerly where capture fails; either way the GPU, not the host, sets the pace).
        ("tq K4V4 decompress+flash", tq("decompress"), True),
        # The adapters' call: query and output in the model's domain, K/V rotated back while
        # decompressing.
        ("tq K4V4 decompress+flash rotate=True", tq("decompress", rotate=True), True),
        # The layout read back from the device: timed eagerly, host sync included.
        ("tq K4V4 decompress+flash, layout read back", tq("decompress", host_layout=False), False),
        ("bf16 SDPA flash", flash, True),
    ]
    cases += _vllm_flash_cases(q, k_bf16, v_bf16, cache, block_table, seq_len, layout, scale)
    for name, fn, graph in cases:
        try:
            ms, how = time_calls([fn], graph=graph)
        except RuntimeError as error:
            print(f"  {name}: {str(error)[:120]}")
            continue
        bits = "bf16" if name.startswith("bf16") else "K4V4"
        rows.append({**base, "impl": name, "bits": bits, "ms": ms, "timing": how, "bytes": 0})
    return _finish(rows, copy_gbps)


def _vllm_flash_cases(q, k_bf16, v_bf16, cache, block_table, seq_len, layout, scale) -> list:
    """bf16 prefill through the FlashAttention vLLM serves with (FA3 on Hopper), and tq's pages
    decompressed to bf16 then the same kernel: what tq-vllm's prefill would cost on vLLM's
    kernel instead of torch SDPA's. Empty where vLLM's flash-attn is not importable."""
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func
    except ImportError:
        return []
    new_tokens = q.shape[0]
    cu_q = torch.tensor([0, new_tokens], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, seq_len], dtype=torch.int32, device="cuda")
    k_rows = k_bf16[0].transpose(0, 1).contiguous()  # [tokens, kv heads, head_dim]
    v_rows = v_bf16[0].transpose(0, 1).contiguous()
    out = torch.empty_like(q)
    scratch_k, scratch_v = torch.empty_like(k_rows), torch.empty_like(v_rows)

    def attend(k, v):
        flash_attn_varlen_func(
            q, k, v, max_seqlen_q=new_tokens, cu_seqlens_q=cu_q, max_seqlen_k=seq_len,
            cu_seqlens_k=cu_k, softmax_scale=scale, causal=True, out=out, fa_version=3,
        )  # fmt: skip

    def decompressed(unrotate):
        def call():
            triton_decompress.gather_kv(
                cache, block_table[0], seq_len, layout,
                out=(scratch_k.transpose(0, 1), scratch_v.transpose(0, 1)), unrotate=unrotate,
            )  # fmt: skip
            attend(scratch_k, scratch_v)

        return call

    return [
        ("bf16 vLLM flash-attn 3", lambda: attend(k_rows, v_rows), True),
        ("tq K4V4 decompress + vLLM flash-attn 3", decompressed(False), True),
        # tq-vllm's prefill: K/V rotated back while decompressing, the engine's query as is.
        ("tq K4V4 decompress + vLLM flash-attn 3 rotate=True", decompressed(True), True),
    ]


def tune_rows(model, batch, context, copy_gbps) -> list[dict]:
    """Decode K4V4, rotated domain and rotate=True, under overrides of the current launch
    settings (triton_attention.TUNING["decode"], the default first), with the bf16 rows of the
    same shape once. This round: short context, where rotate=True at 1 x 1K is 1.15x bf16's time
    (docs/kernels.md, "rotate=True in one wave"): one split per key tile leaves the software
    pipeline nothing to overlap: 2 stages there (short_split_num_stages, the default since
    two runs at 6531303, decode-levers/kernels-tune-decode-short-run1/2-h100-6531303) against
    3, and 16 merge rows on top (1 x 1K 0.0082-0.0083 ms in those runs, slower elsewhere)."""
    saved = dict(triton_attention.TUNING["decode"])
    settings = [{}, {"short_split_num_stages": 0}, {"merge_rows": 16}]
    rows = []
    for overrides in settings:
        triton_attention.TUNING["decode"] = {**saved, **overrides}
        try:
            found = decode_rows(
                model, batch, context, (4, 4), copy_gbps, with_bf16=not overrides,
                with_codebooks=False,
            )  # fmt: skip
        except Exception as error:  # a setting that fails to compile is skipped
            print(f"  {overrides}: {type(error).__name__} {str(error)[:80]}")
            continue
        described = " ".join(f"{name}={value}" for name, value in overrides.items()) or "default"
        for row in found:
            if row["impl"].startswith("tq ") and not row["impl"].endswith("+rotations"):
                row["impl"] = f"{row['impl']} {described}"
            print(f"  {row['impl']}: {row['ms']:.4f} ms", flush=True)
            rows.append(row)
    triton_attention.TUNING["decode"] = saved
    return rows


def tune_store_rows(num_tokens, copy_gbps) -> list[dict]:
    saved = dict(triton_store.TUNING)
    rows = []
    # Overrides of triton_store.TUNING, the default first ("codebook" picks K's and V's
    # codebook instead). The quantizer's levers (binary_search, byte_squares, native_matrix,
    # searched_squares) were timed on and are the default (store/kernels-tune-store-h100-24c0084,
    # -3ae28b7, -f68c684); so are 64-column products (store/kernels-tune-store-h100-60b44ae).
    # So is the uniform codebook's codes by arithmetic (store/kernels-tune-store-h100-8bd0b82).
    # So is the companded codebook's (store/kernels-tune-store-h100-d383929), and Lloyd-Max's
    # 4-bit codes through its degree-13 polynomial (lloyd_max_arithmetic,
    # store/kernels-tune-store-run1/2-h100-6531303), its quantizer in 19 instructions a value
    # (store/kernels-tune-store-run1/2-h100-8770f26). 128 rows on 8 warps, an 80-register cap
    # and 128-column products were no faster (store/kernels-tune-store-levers-h100-1230c14).
    # So are the squares permuted from fixed-point digits and 128-column products with the
    # norm from their squares (store/kernels-tune-store-run1/2-h100-32ec2c4); a 112-register
    # cap only 2% faster at 16K (store/kernels-tune-store-run1/2-h100-12bd139). This round: the
    # other head_dims ("model": SmolLM2's 64, Gemma-2's 256) under the new defaults and the
    # settings before them (64-column products, the polynomial squares).
    before = {"chunk": 64, "lloyd_max_arithmetic": 1, "companded_arithmetic": 1}
    settings = [
        {}, {"model": "smollm2"}, {"model": "smollm2", **before}, {"model": "gemma2-9b"},
        {"model": "gemma2-9b", **before}, {"model": "gemma2-9b", "wide_chunk": 128},
        {"model": "smollm2", "codebook": "companded"},
        {"model": "smollm2", "codebook": "companded", **before},
    ]  # fmt: skip
    for overrides in settings:
        triton_store.TUNING.update(saved)
        codec_options = {"codebook", "norm_correction", "model"}
        triton_store.TUNING.update({k: v for k, v in overrides.items() if k not in codec_options})
        codebook = overrides.get("codebook", "lloyd-max")
        correction = overrides.get("norm_correction", True)
        try:
            row = store_rows(
                num_tokens, copy_gbps, with_peers=False, codebook=codebook,
                norm_correction=correction, model=overrides.get("model", "llama3-8b"),
            )[0]  # fmt: skip
        except Exception as error:  # a setting that fails to compile is skipped
            print(f"  store {overrides}: {type(error).__name__} {str(error)[:80]}")
            continue
        described = " ".join(f"{name}={value}" for name, value in overrides.items())
        row["impl"] = f"tq K4V4 store {described or 'default'}"
        print(f"  {row['impl']}: {row['ms']:.4f} ms {row['copy_fraction']:.0%}", flush=True)
        rows.append(row)
    triton_store.TUNING.update(saved)
    return rows


# -- reporting ----------------------------------------------------------------------------------


def _finish(rows: list[dict], copy_gbps: float) -> list[dict]:
    bf16 = [r["ms"] for r in rows if r.get("bits") == "bf16" and "ms" in r]
    for row in rows:
        if "ms" not in row:
            continue
        if row["bytes"]:
            row["gbps"] = row["bytes"] / row["ms"] / 1e6
            row["copy_fraction"] = row["gbps"] / copy_gbps
        if bf16:
            row["speedup_vs_bf16"] = min(bf16) / row["ms"]
    return rows


def markdown(rows: list[dict], copy_gbps: float, env: dict) -> str:
    lines = [
        f"# Kernel benchmark: {env['gpu']}, torch {env['torch']}, "
        f"triton {env['versions'].get('triton')}, git {env['git_sha'][:10]}",
        "",
        f"Copy bandwidth (read + write): {copy_gbps:.0f} GB/s. `x bf16` = fastest bf16 time of "
        "the same shape (torch SDPA, or vLLM's FlashAttention where it ran) / this time "
        "(> 1 = faster than bf16).",
        "",
        "| op | model | batch/tokens | context | impl | ms | GB/s | % copy BW | x bf16 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "ms" not in r:
            lines.append(
                f"| {r['op']} | {r['model']} | {r['batch']} | {r['context']} | {r['impl']} | "
                f"n/a: {r.get('error', '')[:60]} | | | |"
            )
            continue
        gbps = f"{r['gbps']:.0f}" if "gbps" in r else ""
        frac = f"{100 * r['copy_fraction']:.0f}%" if "copy_fraction" in r else ""
        speed = f"{r['speedup_vs_bf16']:.2f}" if "speedup_vs_bf16" in r else ""
        lines.append(
            f"| {r['op']} | {r['model']} | {r['batch']} | {r['context']} | {r['impl']} | "
            f"{r['ms']:.4f} | {gbps} | {frac} | {speed} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("smoke", "full", "tune", "rotation"), default="full")
    parser.add_argument("--out", required=True, help="path prefix for .json and .md")
    parser.add_argument("--git-sha", help="the commit measured (when .git did not travel)")
    parser.add_argument(
        "--only",
        help="comma list of sections: decode,bits_sweep,store,prefill,decompress,peers",
    )
    parser.add_argument(
        "--models", help=f"comma list: only these models' decode rows (of {', '.join(MODELS)})"
    )
    args = parser.parse_args()
    suite = _suite(args.suite)
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - set(MODELS))
        if unknown:
            parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
        for section in ("decode", "bits_sweep"):
            if section in suite:
                suite[section] = [case for case in suite[section] if case[0] in wanted]
    sections = args.only.split(",") if args.only else list(suite)
    env = environment_record()
    if args.git_sha:
        env["git_sha"] = args.git_sha
    started = time.time()
    copy_gbps = copy_bandwidth()
    print(f"copy bandwidth {copy_gbps:.0f} GB/s on {env['gpu']}", flush=True)
    rows: list[dict] = []
    for section in sections:
        for case in suite[section]:
            print(f"{section} {case}", flush=True)
            if section in ("decode", "bits_sweep"):
                rows += decode_rows(*case, copy_gbps)
            elif section == "store":
                rows += store_rows(case, copy_gbps)
                for codebook in ("uniform", "companded"):
                    rows += store_rows(case, copy_gbps, with_peers=False, codebook=codebook)
            elif section == "prefill":
                rows += prefill_rows(*case, copy_gbps)
            elif section == "decompress":
                rows += decompress_rows(case, copy_gbps)
            elif section == "tune_store":
                rows += tune_store_rows(case, copy_gbps)
            elif section == "tune":
                rows += tune_rows(*case, copy_gbps)
            elif section == "peers":
                rows += peer_decode_rows(*case, copy_gbps)
            torch.cuda.empty_cache()
    env["seconds"] = round(time.time() - started, 1)
    result = {"environment": env, "copy_gbps": copy_gbps, "suite": args.suite, "rows": rows}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    table = markdown(rows, copy_gbps, env)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
