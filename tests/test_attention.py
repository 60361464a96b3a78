import pytest
import torch
import torch.nn.functional as F

from qformer_lite import MultiHeadAttention, attention_from_scratch


@pytest.mark.parametrize("lq, lk", [(5, 5), (4, 11), (1, 7)])
@pytest.mark.parametrize("masked", [False, True])
def test_from_scratch_equals_sdpa(lq, lk, masked):
    q, k, v = torch.randn(2, 3, lq, 8), torch.randn(2, 3, lk, 8), torch.randn(2, 3, lk, 8)
    mask = None
    if masked:
        mask = torch.rand(2, 1, lq, lk) > 0.4
        mask[..., 0] = True  # every row sees at least one key
    out, probs = attention_from_scratch(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (out - ref).abs().max() < 1e-6
    assert torch.allclose(probs.sum(-1), torch.ones(2, 3, lq))
    if masked:
        assert probs.masked_select(~mask.expand_as(probs)).abs().max() == 0


def test_multi_head_attention_library_and_scratch_paths_agree():
    attn = MultiHeadAttention(hidden_size=32, num_heads=4, context_size=24).eval()
    x, img = torch.randn(2, 6, 32), torch.randn(2, 9, 24)  # cross-attention: keys from a wider encoder
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 7:] = False
    lib, none, (k, v) = attn(x, img, mask)
    scratch, probs, _ = attn(x, img, mask, from_scratch=True)
    assert none is None and probs.shape == (2, 4, 6, 9) and k.shape == (2, 4, 9, 8)
    assert (lib - scratch).abs().max() < 1e-6
    assert probs[1, :, :, 7:].abs().max() == 0


def test_key_value_width_follows_the_context():
    attn = MultiHeadAttention(768, 12, context_size=1408)
    assert attn.query.weight.shape == (768, 768)
    assert attn.key.weight.shape == (768, 1408) and attn.value.weight.shape == (768, 1408)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(100, 12)
