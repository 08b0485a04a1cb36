"""tq's SGLang pool and attention backend through SGLang's real classes on CPU tensors.

A batch goes through the steps a server runs: a first request's prompt, then (one batch) that
request extending a cached prefix beside a second request's fresh prompt, then a decode step
for both. Pages are handed out in shuffled order, as SGLang's allocator does after churn. The
tq backend must match fp64 attention over the codec's own round trip of the same K/V (an
independent reference), and SGLang's torch_native backend on the uncompressed K/V within what
the bits allow.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

from paged_scenario import fp64_attention, relative_error
from tq_core import TQCodec
from tq_core.config import TQConfig
from tq_sglang.backend import TQAttnBackend
from tq_sglang.pool import TQTokenToKVPool

HEADS, KV_HEADS, HEAD_DIM = 6, 2, 64
SCALE = HEAD_DIM**-0.5
MAX_CONTEXT = 96
# Request 0 caches a prompt of 20 tokens, then extends it by 7 beside request 1's 13 new
# tokens; then both decode one token.
STEPS = [
    ("extend", {0: (0, 20)}),
    ("extend", {0: (20, 27), 1: (0, 13)}),
    ("decode", {0: (27, 28), 1: (13, 14)}),
]


def page_slots(page_size: int, generator: torch.Generator) -> torch.Tensor:
    """req_to_token rows: each request's positions on pages taken in shuffled order (page 0 is
    SGLang's padding page and never handed out)."""
    pages_per_request = -(-MAX_CONTEXT // page_size)
    pages = torch.randperm(2 * pages_per_request, generator=generator) + 1
    positions = torch.arange(MAX_CONTEXT)
    rows = []
    for request in range(2):
        own = pages[request * pages_per_request : (request + 1) * pages_per_request]
        rows.append(own[positions // page_size] * page_size + positions % page_size)
    return torch.stack(rows)


class Server:
    """One attention layer of an SGLang model runner: request pool, KV pool, backend."""

    def __init__(self, kv_pool, backend_class, slots: torch.Tensor) -> None:
        self.req_to_token_pool = ReqToTokenPool(2, MAX_CONTEXT, "cpu", False)
        # Row 0 of SGLang's request pool is padding: requests 0 and 1 live in rows 1 and 2.
        self.req_to_token_pool.req_to_token[1:3] = slots.to(torch.int32)
        runner = SimpleNamespace(
            device="cpu", req_to_token_pool=self.req_to_token_pool, token_to_kv_pool=kv_pool
        )
        self.backend = backend_class(runner)
        self.layer = RadixAttention(HEADS, HEAD_DIM, SCALE, KV_HEADS, layer_id=0)

    def run(self, mode: str, spans: dict, q, k, v) -> torch.Tensor:
        requests = sorted(spans)
        starts = torch.tensor([spans[r][0] for r in requests])
        ends = torch.tensor([spans[r][1] for r in requests])
        rows = torch.tensor(requests) + 1
        table = self.req_to_token_pool.req_to_token
        spans_slots = [table[row, s:e] for row, s, e in zip(rows, starts, ends, strict=True)]
        slots = torch.cat(spans_slots).long()
        batch = ForwardBatch(
            forward_mode=ForwardMode.DECODE if mode == "decode" else ForwardMode.EXTEND,
            batch_size=len(requests),
            input_ids=torch.zeros(int((ends - starts).sum()), dtype=torch.int64),
            req_pool_indices=rows,
            seq_lens=ends,
            out_cache_loc=slots,
            seq_lens_sum=int(ends.sum()),
            seq_lens_cpu=ends,
            extend_prefix_lens=starts,
            extend_seq_lens=ends - starts,
            extend_prefix_lens_cpu=starts.tolist(),
            extend_seq_lens_cpu=(ends - starts).tolist(),
        )
        self.backend.init_forward_metadata(batch)
        flat = (q.reshape(q.shape[0], -1), k, v)
        if mode == "decode":
            out = self.backend.forward_decode(*flat, self.layer, batch)
        else:
            out = self.backend.forward_extend(*flat, self.layer, batch)
        return out.reshape(q.shape)


def random_tokens(n: int, generator: torch.Generator):
    q = torch.randn(n, HEADS, HEAD_DIM, generator=generator)
    k = torch.randn(n, KV_HEADS, HEAD_DIM, generator=generator) * 2 + 0.3
    v = torch.randn(n, KV_HEADS, HEAD_DIM, generator=generator)
    return q, k, v


@pytest.mark.feature("prefill", "decode", "prefix cache")
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("bits", [(8, 8), (4, 4), (4, 8)])
def test_tq_backend_matches_fp64_attention_over_the_codec_round_trip(page_size, bits):
    generator = torch.Generator().manual_seed(7 + page_size + 10 * bits[0])
    config = TQConfig(head_dim=HEAD_DIM, k_bits=bits[0], v_bits=bits[1])
    codec = TQCodec.from_config(config)
    slots = page_slots(page_size, generator)
    size = slots.numel() + 4 * page_size
    pool = TQTokenToKVPool(
        size, page_size, torch.float32, KV_HEADS, HEAD_DIM, 1, "cpu", False, tq_config=config
    )
    # Random bytes, not zeros: a read of a slot nobody wrote shows up in the output.
    pool.pages(0).copy_(torch.randint_like(pool.pages(0), 0, 256))
    tq = Server(pool, TQAttnBackend, slots)
    native = Server(
        MHATokenToKVPool(size, page_size, torch.float32, KV_HEADS, HEAD_DIM, 1, "cpu", False),
        TorchNativeAttnBackend, slots,
    )  # fmt: skip
    history = {0: ([], []), 1: ([], [])}
    for mode, spans in STEPS:
        q, k, v = random_tokens(sum(e - s for s, e in spans.values()), generator)
        got = tq.run(mode, spans, q, k, v)
        plain = native.run(mode, spans, q, k, v)
        row = 0
        for request, (start, end) in sorted(spans.items()):
            n = end - start
            keys, values = history[request]
            keys.append(codec.decode_keys(codec.encode_keys(k[row : row + n]), torch.float64))
            values.append(codec.decode_values(codec.encode_values(v[row : row + n]), torch.float64))
            positions = torch.arange(start, end)
            expected = fp64_attention(
                q[row : row + n], torch.cat(keys), torch.cat(values), positions, SCALE
            )
            assert relative_error(got[row : row + n], expected) < 1e-5, (mode, request)
            # Against SGLang's own backend on plain K/V: the codec's error, nothing more.
            limit = 0.02 if min(bits) == 8 else 0.25
            assert relative_error(got[row : row + n], plain[row : row + n]) < limit
            row += n


def test_pool_writes_the_core_format_at_sglang_slots():
    """SGLang slot s is token s % page_size of page s // page_size: the pool's pages decode,
    through tq_core alone, to the codec's round trip of what was written there."""
    generator = torch.Generator().manual_seed(3)
    config = TQConfig(head_dim=HEAD_DIM, k_bits=4, v_bits=4)
    codec = TQCodec.from_config(config)
    pool = TQTokenToKVPool(160, 16, torch.float32, KV_HEADS, HEAD_DIM, 2, "cpu", False,
                           tq_config=config)  # fmt: skip
    slots = torch.randperm(160, generator=generator)[:40] + 16
    _, k, v = random_tokens(40, generator)
    layer = RadixAttention(HEADS, HEAD_DIM, SCALE, KV_HEADS, layer_id=1)
    pool.set_kv_buffer(layer, slots, k, v)
    layout = pool.layout(1)
    pages, offsets = slots // 16, slots % 16
    for region in layout.regions:
        view = pool.pages(1)[:, region.offset : region.offset + region.nbytes]
        view = view.reshape(-1, KV_HEADS, 16, region.bytes_per_vector)
        fields = view[pages, :, offsets]  # [40, heads, bytes]
        encoded = codec.encode_fields(k if region.tensor == "key" else v,
                                      layout.key_format if region.tensor == "key"
                                      else layout.value_format)  # fmt: skip
        assert torch.equal(fields, encoded[region.field]), region
    assert not pool.pages(0).any(), "layer 0 was never written"


@pytest.mark.parametrize("page_size", [1, 16])
def test_pool_bytes_against_sglang_bf16_pool(page_size):
    """What SGLang's planner sees: the pool's bytes for the same token count, vs bf16."""
    config = TQConfig(head_dim=HEAD_DIM, k_bits=4, v_bits=4)
    args = (4096, page_size, torch.bfloat16, 3, HEAD_DIM, 2, "cpu", False)
    pool = TQTokenToKVPool(*args, tq_config=config)
    tq = sum(pool.get_kv_size_bytes())
    assert tq == sum(pages.numel() for pages in pool.k_buffer), "the pool misreports its bytes"
    bf16 = sum(MHATokenToKVPool(*args).get_kv_size_bytes())
    packed = 3 * 2 * (HEAD_DIM // 2 + 4)  # 3 heads, K and V: 4-bit codes + a float32 norm
    ratio = bf16 / tq
    unpadded = 4 * HEAD_DIM * 3 / packed
    print(f"page_size {page_size}: bf16 / tq bytes = {ratio:.3f} (unpadded {unpadded:.3f})")
    assert tq >= 4096 * 2 * packed, "fewer bytes than the packed format needs"
    assert ratio >= (3.5 if page_size == 16 else 3.4)


@pytest.mark.feature("prefill", "decode")
def test_centered_keys_leave_attention_unchanged():
    """With key centering the pool stores k - m (m: the mean key per head of the first batch
    it stored) for every later write too; tq's outputs equal fp64 attention over the codec's
    round trip of those centered keys, which is the attention of the uncentered ones up to the
    codec's error, since softmax ignores the constant q . m."""
    generator = torch.Generator().manual_seed(11)
    config = TQConfig(head_dim=HEAD_DIM, k_bits=4, v_bits=4)
    codec = TQCodec.from_config(config)
    slots = page_slots(16, generator)
    pool = TQTokenToKVPool(slots.numel() + 64, 16, torch.float32, KV_HEADS, HEAD_DIM, 1, "cpu",
                           False, tq_config=config, center_keys=True)  # fmt: skip
    tq = Server(pool, TQAttnBackend, slots)
    history, mean = {0: ([], []), 1: ([], [])}, None
    for mode, spans in STEPS:
        q, k, v = random_tokens(sum(e - s for s, e in spans.values()), generator)
        k = k + torch.linspace(-3, 3, HEAD_DIM)  # a shared offset, as real keys have
        got = tq.run(mode, spans, q, k, v)
        mean = k.mean(dim=0, keepdim=True) if mean is None else mean
        row = 0
        for request, (start, end) in sorted(spans.items()):
            n = end - start
            keys, values = history[request]
            centered = k[row : row + n] - mean
            keys.append(codec.decode_keys(codec.encode_keys(centered), torch.float64))
            values.append(codec.decode_values(codec.encode_values(v[row : row + n]), torch.float64))
            positions = torch.arange(start, end)
            expected = fp64_attention(
                q[row : row + n], torch.cat(keys), torch.cat(values), positions, SCALE
            )
            assert relative_error(got[row : row + n], expected) < 1e-5, (mode, request)
            row += n
    assert torch.allclose(pool.key_means[0], mean)
