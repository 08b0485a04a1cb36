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
