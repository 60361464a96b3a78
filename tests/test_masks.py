import pytest
import torch

from qformer_lite import build_attention_mask

# Q = 3 queries, T = 4 text tokens, the last one padded: the case worked out by hand in
# LAVIS's get_extended_attention_mask (rows attend, columns are attended to).
TEXT_MASK = torch.tensor([[1, 1, 1, 0]])
EXPECTED = {
    "itm": [
        [1, 1, 1, 1, 1, 1, 0],
    ] * 7,
    "itc": [
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 1, 1, 1, 0],
    ],
    "itg": [
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 0],
    ],
}


@pytest.mark.parametrize("mode", ["itc", "itm", "itg"])
def test_masks_match_the_worked_example(mode):
    mask = build_attention_mask(mode, 3, TEXT_MASK)
    assert mask.dtype == torch.bool and mask.shape == (1, 7, 7)
    assert mask[0].int().tolist() == EXPECTED[mode]


@pytest.mark.parametrize("mode", ["itc", "itm", "itg"])
def test_padding_columns_are_closed_in_every_mode(mode):
    text = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    mask = build_attention_mask(mode, 2, text)
    assert not mask[0, :, 4:].any() and not mask[1, :, 6:].any()
    assert mask[:, :, :2].any()  # queries are visible to someone in every mode


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of .* got 'itx'"):
        build_attention_mask("itx", 2, TEXT_MASK)
    with pytest.raises(ValueError, match=r"shape \(B, T\), got \(4,\)"):
        build_attention_mask("itm", 2, torch.ones(4))
    with pytest.raises(ValueError, match="num_query_tokens"):
        build_attention_mask("itm", -1, TEXT_MASK)
