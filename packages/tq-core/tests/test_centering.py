import torch

from tq_core.centering import key_mean


def test_key_mean_counts_only_real_tokens(generator):
    keys = torch.randn(2, 3, 7, 16, generator=generator) + 5.0
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, :3] = False  # left padding in row 1
    mean = key_mean(keys, valid)
    assert mean.shape == (2, 3, 1, 16)
    for row in range(2):
        expected = keys[row].double()[:, valid[row]].mean(dim=1, keepdim=True)
        torch.testing.assert_close(mean[row].double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(key_mean(keys), keys.double().mean(2, keepdim=True).float())


def test_subtracting_the_mean_leaves_softmax_attention_unchanged(generator):
    keys = torch.randn(1, 2, 9, 32, generator=generator, dtype=torch.float64) * 3 + 4
    query = torch.randn(2, 32, generator=generator, dtype=torch.float64)
    centered = keys - key_mean(keys)
    before = torch.softmax(torch.einsum("hd,hsd->hs", query, keys[0]), dim=-1)
    after = torch.softmax(torch.einsum("hd,hsd->hs", query, centered[0]), dim=-1)
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12)


def test_first_write_mean_comes_from_the_first_real_tokens_and_stays(generator):
    from tq_core.centering import FirstWriteKeyMean

    centering = FirstWriteKeyMean(num_kv_heads=2, head_dim=8, device="cpu")
    warm_up = torch.randn(5, 2, 8, generator=generator) + 3.0
    nothing_written = torch.zeros(5, dtype=torch.bool)
    # A warm-up write stores no token: keys pass unchanged and the mean is not set.
    torch.testing.assert_close(centering.center(warm_up, nothing_written), warm_up)
    assert not centering.ready
    first = torch.randn(6, 2, 8, generator=generator, dtype=torch.float64) * 2 + 4.0
    written = torch.tensor([True, True, False, True, True, False])
    expected_mean = first[written].mean(dim=0)  # padding rows excluded
    centered = centering.center(first.to(torch.float32), written)
    assert centering.ready
    torch.testing.assert_close(centering.mean.double(), expected_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(centered.double(), first - expected_mean, rtol=1e-5, atol=1e-5)
    # Later writes reuse it, whatever their own mean.
    later = torch.randn(3, 2, 8, generator=generator) - 7.0
    got = centering.center(later.to(torch.bfloat16), torch.ones(3, dtype=torch.bool))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), (later.double() - expected_mean), atol=0.1, rtol=0.02)
    torch.testing.assert_close(centering.mean.double(), expected_mean, rtol=1e-6, atol=1e-6)
