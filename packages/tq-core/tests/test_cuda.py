"""The reference ops on CUDA: same bytes and same attention as on the CPU.

Cross-device agreement is what lets a page written by one engine on a GPU be read anywhere.
These call ``reference`` directly: on CUDA, ``ops`` dispatches to the Triton kernels, which
test_triton_ops.py checks against this reference.
Skipped cleanly where there is no GPU (CI); run on the lent H100 with `pytest -m gpu`.
"""

import math

import pytest
import torch

from paged_scenario import build_paged_batch, relative_error
from tq_core import TQCodec, rotate_query
from tq_core.ops import gather_kv, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _decode_all(cache, batch, device):
    layout, seq_len = batch.layout, cache.shape[0] * batch.layout.block_size
    block_ids = torch.arange(cache.shape[0], device=device)
    return torch.cat(gather_kv(cache.to(device), block_ids, seq_len, layout)).cpu()


@pytest.mark.parametrize(
    ("k_bits", "v_bits", "key_qjl"), [(4, 4, False), (6, 4, False), (3, 3, False), (4, 4, True)]
)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_cuda_store_encodes_like_the_cpu_and_bytes_decode_alike_everywhere(
    k_bits, v_bits, key_qjl, head_dim, generator
):
    codec = TQCodec(head_dim, k_bits, v_bits, key_qjl=key_qjl)
    batch = build_paged_batch(codec, [70, 33], 4, 16, generator)
    keys, values = torch.cat(batch.keys), torch.cat(batch.values)
    slots = torch.arange(keys.shape[0])
    cpu_cache = torch.zeros_like(batch.kv_cache)
    reference.store(keys, values, cpu_cache, slots, batch.layout)
    gpu_cache = torch.zeros_like(batch.kv_cache).cuda()
    reference.store(keys.cuda(), values.cuda(), gpu_cache, slots.cuda(), batch.layout)
    # The same bytes decode to the same K/V on either device (the format's promise) ...
    from_cpu_bytes = _decode_all(cpu_cache, batch, "cpu")
    torch.testing.assert_close(
        _decode_all(cpu_cache, batch, "cuda"), from_cpu_bytes, rtol=1e-6, atol=1e-6
    )
    # ... while encoding may differ in the last bits: the GPU's float32 sums round differently,
    # so a norm can move by an ulp and a coordinate on a codebook boundary can take the
    # neighbouring code. Both encodings must decode to nearly the same K/V.
    from_gpu_bytes = _decode_all(gpu_cache, batch, "cpu")
    moved = ((from_gpu_bytes - from_cpu_bytes).abs() > 1e-4 * from_cpu_bytes.abs().amax()).float()
    differing_bytes = (gpu_cache.cpu() != cpu_cache).float().mean().item()
    print(
        f"K{k_bits}V{v_bits} d={head_dim}: {differing_bytes:.2e} of bytes differ, "
        f"{moved.mean().item():.2e} of coordinates moved"
    )
    assert moved.mean().item() < 1e-3
    assert relative_error(from_gpu_bytes, from_cpu_bytes) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_decode_and_prefill_match_the_cpu(dtype, generator):
    codec = TQCodec(128, 4, 4)
    batch = build_paged_batch(codec, [300, 17, 64], 2, 16, generator)
    query = rotate_query(torch.randn(3, 2, 8, 128, generator=generator), codec.seed)
    args = (batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 1 / math.sqrt(128))
    cpu = reference.decode_attention(query, *args, sliding_window=100, logit_softcap=30.0)
    gpu = reference.decode_attention(
        query.cuda().to(dtype),
        *(a.cuda() if torch.is_tensor(a) else a for a in args),
        sliding_window=100,
        logit_softcap=30.0,
    )
    assert relative_error(gpu.float().cpu(), cpu) < (1e-5 if dtype == torch.float32 else 1e-2)
