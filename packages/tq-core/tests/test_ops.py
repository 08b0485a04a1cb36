import math

import pytest
import torch

from paged_scenario import build_paged_batch, fp64_attention, relative_error
from tq_core import TQCodec, TQInputError, ops, rotate_query, unrotate_output
from tq_core.codebook import expected_unit_mse

BIT_CONFIGS = [(8, 8), (6, 4), (5, 4), (4, 4), (4, 8), (3, 3), (2, 2)]


def decoded_kv(codec: TQCodec, keys: torch.Tensor, values: torch.Tensor):
    return codec.decode_keys(codec.encode_keys(keys)), codec.decode_values(
        codec.encode_values(values)
    )


def run_decode(batch, codec, query, **kwargs):
    rotated = rotate_query(query, codec.seed)
    out = ops.decode_attention(
        rotated,
        batch.kv_cache,
        batch.block_table,
        batch.seq_lens,
        batch.layout,
        1 / math.sqrt(codec.head_dim),
        **kwargs,
    )
    return unrotate_output(out, codec.seed)


def expected_decode(batch, codec, query, decode_first: bool, **kwargs):
    expected = []
    for i, seq_len in enumerate(batch.seq_lens.tolist()):
        k, v = batch.keys[i], batch.values[i]
        if decode_first:
            k, v = decoded_kv(codec, k, v)
        positions = torch.arange(seq_len - query.shape[1], seq_len)
        expected.append(
            fp64_attention(query[i], k, v, positions, 1 / math.sqrt(codec.head_dim), **kwargs)
        )
    return torch.stack(expected)


@pytest.mark.parametrize(("k_bits", "v_bits"), BIT_CONFIGS)
@pytest.mark.parametrize(
    ("head_dim", "num_q_heads", "num_kv_heads"), [(64, 9, 3), (128, 8, 2), (256, 4, 4), (128, 4, 1)]
)
@pytest.mark.parametrize("num_query_tokens", [1, 3])
def test_decode_matches_fp64_attention_over_the_decoded_kv(
    k_bits, v_bits, head_dim, num_q_heads, num_kv_heads, num_query_tokens, generator
):
    codec = TQCodec(head_dim, k_bits, v_bits)
    batch = build_paged_batch(codec, [37, 5, 64], num_kv_heads, 16, generator)
    query = torch.randn(3, num_query_tokens, num_q_heads, head_dim, generator=generator)
    actual = run_decode(batch, codec, query)
    expected = expected_decode(batch, codec, query, decode_first=True)
    assert relative_error(actual, expected) < 1e-5


@pytest.mark.parametrize(("k_bits", "v_bits"), BIT_CONFIGS)
def test_decode_approaches_fp64_attention_over_the_original_kv_within_the_bits_error(
    k_bits, v_bits, generator
):
    head_dim = 128
    codec = TQCodec(head_dim, k_bits, v_bits)
    batch = build_paged_batch(codec, [300, 129], 2, 16, generator)
    query = torch.randn(2, 1, 8, head_dim, generator=generator)
    error = relative_error(
        run_decode(batch, codec, query), expected_decode(batch, codec, query, decode_first=False)
    )
    # V contributes its relative quantization error sqrt(unit MSE) directly. K's error moves each
    # score by about sqrt(unit MSE) times the spread of the scores (scale * |q| * |k| / sqrt(d)
    # for random directions), and the softmax passes that on to the output at most one to one.
    keys = torch.cat(batch.keys)
    score_spread = (
        query.norm(dim=-1).pow(2).mean().sqrt() * keys.norm(dim=-1).pow(2).mean().sqrt() / head_dim
    ).item()
    implied = math.sqrt(expected_unit_mse(head_dim, k_bits)) * max(1.0, score_spread) + math.sqrt(
        expected_unit_mse(head_dim, v_bits)
    )
    print(f"K{k_bits}V{v_bits}: attention output error {error:.4f}, implied {implied:.4f}")
    assert error < implied


@pytest.mark.parametrize(
    ("sliding_window", "logit_softcap"), [(None, None), (7, None), (None, 5.0), (20, 30.0)]
)
def test_ragged_prefill_with_window_and_softcap_matches_fp64(
    sliding_window, logit_softcap, generator
):
    codec = TQCodec(64, 4, 4)
    batch = build_paged_batch(codec, [41, 16, 3, 90], 2, 16, generator)
    query_lens = [41, 5, 3, 17]  # sequence 0 is a first chunk, the others continue a context
    query = torch.randn(sum(query_lens), 6, 64, generator=generator)
    start_loc = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    out = ops.prefill_attention(
        rotate_query(query, codec.seed),
        batch.kv_cache,
        batch.block_table,
        start_loc,
        batch.seq_lens,
        batch.layout,
        0.125,
        sliding_window=sliding_window,
        logit_softcap=logit_softcap,
    )
    actual = unrotate_output(out, codec.seed)
    for i, seq_len in enumerate(batch.seq_lens.tolist()):
        rows = slice(int(start_loc[i]), int(start_loc[i + 1]))
        k, v = decoded_kv(codec, batch.keys[i], batch.values[i])
        positions = torch.arange(seq_len - query_lens[i], seq_len)
        expected = fp64_attention(
            query[rows], k, v, positions, 0.125, sliding_window, logit_softcap
        )
        assert relative_error(actual[rows], expected) < 1e-5


def test_decode_with_window_and_softcap_and_output_buffer(generator):
    codec = TQCodec(128, 6, 4)
    batch = build_paged_batch(codec, [50, 20], 2, 8, generator)
    query = torch.randn(2, 2, 4, 128, generator=generator)
    expected = expected_decode(batch, codec, query, True, sliding_window=9, logit_softcap=20.0)
    out = torch.full_like(query, float("nan"))
    ops.decode_attention(
        rotate_query(query, 0),
        batch.kv_cache,
        batch.block_table,
        batch.seq_lens,
        batch.layout,
        1 / math.sqrt(128),
        sliding_window=9,
        logit_softcap=20.0,
        out=out,
    )
    assert relative_error(unrotate_output(out, 0), expected) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_queries_give_outputs_of_their_dtype(dtype, generator):
    codec = TQCodec(64, 4, 4)
    batch = build_paged_batch(codec, [33], 1, 16, generator)
    query = torch.randn(1, 1, 3, 64, generator=generator)
    out = ops.decode_attention(
        rotate_query(query, 0).to(dtype),
        batch.kv_cache,
        batch.block_table,
        batch.seq_lens,
        batch.layout,
        0.125,
    )
    assert out.dtype == dtype
    expected = expected_decode(batch, codec, query, decode_first=True)
    assert relative_error(unrotate_output(out.float(), 0), expected) < 1e-2


def test_store_writes_the_codecs_bytes_into_the_regions_and_skips_padding(generator):
    codec = TQCodec(64, 3, 5, key_qjl=True)
    layout = codec.cache_layout(num_kv_heads=2, block_size=4)
    cache = torch.randint(0, 256, (3, layout.page_bytes), dtype=torch.uint8, generator=generator)
    before = cache.clone()
    keys = torch.randn(3, 2, 64, generator=generator)
    values = torch.randn(3, 2, 64, generator=generator)
    ops.store(keys, values, cache, torch.tensor([9, -1, 2]), layout)
    expected_key = codec.encode_keys(keys[0, 1])  # token 0, head 1 -> block 2, offset 1
    fields = []
    for region in layout.regions_of("key"):
        start = region.offset + (1 * layout.block_size + 1) * region.bytes_per_vector
        fields.append(cache[2, start : start + region.bytes_per_vector])
    assert torch.equal(torch.cat(fields), expected_key)
    written = torch.zeros_like(cache, dtype=torch.bool)
    for region in layout.regions:
        for block, offset in ((2, 1), (0, 2)):
            for head in range(2):
                start = (
                    region.offset + (head * layout.block_size + offset) * region.bytes_per_vector
                )
                written[block, start : start + region.bytes_per_vector] = True
    assert torch.equal(cache[~written], before[~written])


def _good_store_args(generator):
    codec = TQCodec(64, 4, 4)
    layout = codec.cache_layout(2, 16)
    cache = torch.randint(0, 256, (4, layout.page_bytes), dtype=torch.uint8, generator=generator)
    key = torch.randn(5, 2, 64, generator=generator)
    return dict(
        key=key,
        value=key.clone(),
        kv_cache=cache,
        slot_mapping=torch.tensor([0, 1, 2, -1, 63]),
        layout=layout,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(key=a["key"].to(torch.int32)), "key must be float32"),
        (lambda a: a.update(value=a["value"][:4]), "same shape"),
        (
            lambda a: a.update(key=torch.randn(5, 3, 64), value=torch.randn(5, 3, 64)),
            "3 heads, the layout has 2 KV heads",
        ),
        (
            lambda a: a.update(key=torch.randn(5, 2, 128), value=torch.randn(5, 2, 128)),
            "head_dim 128, the layout has 64",
        ),
        (
            lambda a: a.update(slot_mapping=torch.tensor([0, 1, 2, 3, 64])),
            "slot 64 is out of range",
        ),
        (
            lambda a: a.update(slot_mapping=torch.tensor([0, 1, 2, 3, -2])),
            "slot -2 is out of range",
        ),
        (lambda a: a.update(slot_mapping=torch.tensor([0, 1, 1, 3, 4])), "same slot twice"),
        (lambda a: a.update(slot_mapping=torch.tensor([0.0, 1, 2, 3, 4])), "int32 or int64"),
        (lambda a: a.update(slot_mapping=torch.tensor([0, 1, 2])), "3 slots for 5 tokens"),
        (lambda a: a.update(kv_cache=a["kv_cache"].view(torch.int8)), "uint8"),
        (lambda a: a.update(kv_cache=a["kv_cache"][:, :-16]), "uint8 \\[num_blocks, >= "),
        (
            lambda a: a.update(
                kv_cache=torch.zeros(8, a["kv_cache"].shape[1] * 2, dtype=torch.uint8)[::2, ::2]
            ),
            "contiguous",
        ),
    ],
)
def test_bad_store_inputs_raise_and_leave_the_cache_untouched(change, message, generator):
    args = _good_store_args(generator)
    change(args)
    before = args["kv_cache"].clone()
    with pytest.raises(TQInputError, match=message):
        ops.store(**args)
    assert torch.equal(args["kv_cache"], before)


def test_bad_attention_inputs_raise_clear_errors(generator):
    codec = TQCodec(64, 4, 4)
    batch = build_paged_batch(codec, [20, 9], 2, 8, generator)
    query = torch.randn(2, 1, 4, 64, generator=generator)
    args = (batch.kv_cache, batch.block_table, batch.seq_lens, batch.layout, 0.125)
    with pytest.raises(TQInputError, match="block_table is too short"):
        ops.decode_attention(
            query, batch.kv_cache, batch.block_table[:, :2], batch.seq_lens, batch.layout, 0.125
        )
    with pytest.raises(TQInputError, match="block outside"):
        bad_table = batch.block_table.clone()
        bad_table[1, 0] = 99
        ops.decode_attention(query, batch.kv_cache, bad_table, batch.seq_lens, batch.layout, 0.125)
    with pytest.raises(TQInputError, match="not a multiple of 2 KV heads"):
        ops.decode_attention(torch.randn(2, 1, 3, 64), *args)
    with pytest.raises(TQInputError, match="1 to 8 query tokens"):
        ops.decode_attention(torch.randn(2, 9, 4, 64), *args)
    with pytest.raises(TQInputError, match="seq_len must count"):
        ops.decode_attention(
            torch.randn(2, 2, 4, 64),
            batch.kv_cache,
            batch.block_table,
            torch.tensor([20, 1], dtype=torch.int32),
            batch.layout,
            0.125,
        )
    with pytest.raises(
        TQInputError, match="block_table has 2 rows and seq_lens 2 entries for 3 sequences"
    ):
        ops.decode_attention(torch.randn(3, 1, 4, 64), *args)
    with pytest.raises(TQInputError, match="does not split"):
        ops.prefill_attention(
            torch.randn(5, 4, 64),
            batch.kv_cache,
            batch.block_table,
            torch.tensor([0, 2, 6]),
            batch.seq_lens,
            batch.layout,
            0.125,
        )


def test_padding_sequences_and_rows_of_a_fixed_size_batch_get_zeros(generator):
    # CUDA-graph batches are padded to a captured size: seq_len 0 sequences, trailing rows.
    codec = TQCodec(64, 4, 4)
    batch = build_paged_batch(codec, [30, 12], 2, 16, generator)
    padded_lens = torch.tensor([30, 0, 12, 0], dtype=torch.int32)
    padded_table = torch.cat(
        [
            batch.block_table[:1],
            batch.block_table[:1] * 0,
            batch.block_table[1:],
            batch.block_table[:1] * 0,
        ]
    )
    query = torch.randn(4, 1, 4, 64, generator=generator)
    out = torch.full_like(query, float("nan"))
    ops.decode_attention(
        rotate_query(query, 0),
        batch.kv_cache,
        padded_table,
        padded_lens,
        batch.layout,
        0.125,
        out=out,
    )
    assert torch.equal(out[[1, 3]], torch.zeros_like(out[[1, 3]]))
    unpadded = run_decode(
        batch,
        codec,
        query[[0, 2]],
    )
    torch.testing.assert_close(unrotate_output(out[[0, 2]], 0), unpadded, rtol=1e-5, atol=1e-6)

    rows = torch.randn(8, 4, 64, generator=generator)
    start_loc = torch.tensor([0, 3, 5], dtype=torch.int32)  # rows 5..7 are padding
    prefill = ops.prefill_attention(
        rows, batch.kv_cache, batch.block_table, start_loc, batch.seq_lens, batch.layout, 0.125
    )
    assert torch.equal(prefill[5:], torch.zeros_like(prefill[5:]))
    assert torch.isfinite(prefill).all()


def test_engine_pages_longer_than_the_layout_are_accepted(generator):
    # Engines round pages up to their own sizes; tq uses the first page_bytes of each row.
    codec = TQCodec(128, 4, 4)
    batch = build_paged_batch(codec, [40, 9], 2, 16, generator)
    wide = torch.randint(
        0,
        256,
        (batch.kv_cache.shape[0], batch.layout.page_bytes + 96),
        dtype=torch.uint8,
        generator=generator,
    )
    wide[:, : batch.layout.page_bytes] = batch.kv_cache
    query = rotate_query(torch.randn(2, 1, 4, 128, generator=generator), 0)
    args = (batch.block_table, batch.seq_lens, batch.layout, 0.1)
    torch.testing.assert_close(
        ops.decode_attention(query, wide, *args), ops.decode_attention(query, batch.kv_cache, *args)
    )


@pytest.mark.parametrize(("k_bits", "v_bits"), [(4, 4), (8, 3), (16, 4)])
def test_gather_kv_unrotated_is_the_codecs_own_reconstruction(k_bits, v_bits, generator):
    """unrotate=True gives what the codec decodes the stored tokens to, in the original domain
    (decode_keys/values: an independent path through the codec, not the paged cache)."""
    codec = TQCodec(64, k_bits, v_bits)
    batch = build_paged_batch(codec, [45, 20], 2, 16, generator)
    for seq, seq_len in enumerate(batch.seq_lens.tolist()):
        keys, values = ops.gather_kv(
            batch.kv_cache, batch.block_table[seq], seq_len, batch.layout, unrotate=True
        )
        want_k, want_v = decoded_kv(codec, batch.keys[seq], batch.values[seq])
        torch.testing.assert_close(keys, want_k.transpose(0, 1).float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(values, want_v.transpose(0, 1).float(), rtol=1e-4, atol=1e-5)
