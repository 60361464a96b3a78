"""Stage-1 losses on hand-made cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from qformer_lite import QFormerConfig, QFormerPretraining, losses


def _features(b=4, q=3, e=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(b, e, generator=gen), dim=-1)
    image = F.normalize(torch.randn(b, q, e, generator=gen), dim=-1)
    return image, text


def test_similarity_is_the_best_query():
    image, text = _features()
    sim = losses.itc_similarity_matrix(image, text)
    for i in range(4):
        for t in range(4):
            assert sim[i, t] == pytest.approx(max(float(image[i, q] @ text[t]) for q in range(3)), abs=1e-6)


def test_perfect_match_gives_the_minimum_itc_loss():
    b, temp = 4, 0.07
    perfect = 2 * torch.eye(b) - 1  # each image's best query equals its text, opposite to the others
    gen = torch.Generator().manual_seed(0)
    best = losses.itc_loss(perfect, temp, label_smoothing=0.0)
    for _ in range(200):  # any other similarity matrix (cosines lie in [-1, 1]) costs more
        other = torch.rand(b, b, generator=gen) * 2 - 1
        assert losses.itc_loss(other, temp, label_smoothing=0.0) > best


def test_perfect_match_from_features():
    """Orthogonal texts; each image has one query equal to its text: similarity is the identity,
    the loss equals its closed form and is lower than for any mismatched pairing."""
    b, temp, eps = 4, 0.07, 0.1
    text = torch.eye(b, 8)
    image = torch.stack([torch.stack([text[i], -text[i]]) for i in range(b)])  # (B, 2, E)
    sim = losses.itc_similarity_matrix(image, text)
    assert torch.equal(sim, torch.eye(b))
    loss = losses.itc_loss(sim, temp, eps)
    closed_form = F.cross_entropy(torch.eye(b) / temp, torch.arange(b), label_smoothing=eps)
    assert loss.item() == pytest.approx(closed_form.item(), abs=1e-6)
    for perm in ([1, 0, 2, 3], [3, 2, 1, 0], [1, 2, 3, 0]):
        assert losses.itc_loss(losses.itc_similarity_matrix(image, text[perm]), temp, eps) > loss


def test_itc_loss_without_smoothing_on_a_perfect_match_tends_to_zero():
    sim = torch.eye(3)
    assert losses.itc_loss(sim, 0.01, label_smoothing=0.0) < 1e-6


def test_itc_loss_rejects_a_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        losses.itc_loss(torch.zeros(3, 4), 0.07)


def test_hard_negatives_never_pick_the_positive():
    # the positive is by far the most similar: a sampler that forgot to mask it would pick it
    b = 6
    sim = torch.full((b, b), -1.0) + 3.0 * torch.eye(b)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        neg_image, neg_text = losses.sample_hard_negatives(sim, 0.07, gen)
        assert not (neg_image == torch.arange(b)).any()
        assert not (neg_text == torch.arange(b)).any()


def test_hard_negatives_prefer_similar_ones():
    # image 0 is much closer to text 1 than to texts 2, 3: text 1 must be drawn nearly always
    sim = torch.tensor([
        [1.0, 0.9, -0.5, -0.5],
        [0.9, 1.0, -0.5, -0.5],
        [-0.5, -0.5, 1.0, 0.2],
        [-0.5, -0.5, 0.2, 1.0],
    ])
    gen = torch.Generator().manual_seed(0)
    picks = [int(losses.sample_hard_negatives(sim, 0.07, gen)[1][0]) for _ in range(100)]
    assert picks.count(1) > 95


def test_hard_negatives_need_two_pairs():
    with pytest.raises(ValueError, match="at least 2"):
        losses.sample_hard_negatives(torch.ones(1, 1))


def test_itm_pairs_layout():
    images = torch.arange(3).float().view(3, 1, 1)
    ids = torch.tensor([[10], [11], [12]])
    mask = torch.ones_like(ids)
    neg_image, neg_text = torch.tensor([1, 2, 0]), torch.tensor([2, 0, 1])
    imgs, tids, tmask, labels = losses.itm_pairs(images, ids, mask, neg_image, neg_text)
    assert imgs.flatten().tolist() == [0, 1, 2, 1, 2, 0, 0, 1, 2]
    assert tids.flatten().tolist() == [10, 11, 12, 10, 11, 12, 12, 10, 11]
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_itg_inputs_replace_cls_and_ignore_padding():
    ids = torch.tensor([[3, 9, 8, 4, 0, 0], [3, 7, 4, 0, 0, 0]])
    mask = (ids != 0).long()
    dec, labels = losses.itg_inputs(ids, mask, dec_token_id=5)
    assert dec[:, 0].tolist() == [5, 5]
    assert dec[:, 1:].tolist() == ids[:, 1:].tolist()
    assert labels.tolist() == [[5, 9, 8, 4, -100, -100], [5, 7, 4, -100, -100, -100]]


def test_itg_loss_ignores_padding_positions():
    ids = torch.tensor([[3, 9, 8, 4, 0, 0]])
    dec, labels = losses.itg_inputs(ids, (ids != 0).long(), dec_token_id=5)
    logits = torch.randn(1, 6, 12)
    base = losses.itg_loss(logits, labels, label_smoothing=0.1)
    changed = logits.clone()
    changed[:, 3:] = torch.randn(1, 3, 12) * 10  # predictions after the last real token
    assert losses.itg_loss(changed, labels, 0.1) == pytest.approx(float(base), abs=1e-6)
    # the loss is the mean over the three predicted real tokens (9, 8, 4)
    manual = F.cross_entropy(logits[0, :3], torch.tensor([9, 8, 4]), label_smoothing=0.1)
    assert base == pytest.approx(float(manual), abs=1e-6)


def _tiny_model():
    torch.manual_seed(0)
    return QFormerPretraining(QFormerConfig.tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def test_forward_returns_three_losses_that_sum():
    model = _tiny_model()
    b = 4
    image = torch.randn(b, 5, model.config.encoder_hidden_size)
    ids = torch.randint(6, model.config.vocab_size, (b, 7))
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    out = model(image, ids, mask, dec_token_id=2, generator=torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx((out.loss_itc + out.loss_itm + out.loss_itg).item(), abs=1e-5)
    assert out.sim_i2t.shape == (b, b)
    assert not (out.neg_image == torch.arange(b)).any() and not (out.neg_text == torch.arange(b)).any()
    # an untrained model is near chance on every loss
    assert abs(out.loss_itm.item() - math.log(2)) < 0.2
    out.loss.backward()
    assert model.temp.grad is not None and model.itm_head.weight.grad is not None


def test_forward_itg_equals_a_joint_pass():
    """The cached-queries ITG pass inside forward equals one joint pass with the 'itg' mask."""
    model = _tiny_model().eval()
    b = 3
    image = torch.randn(b, 5, model.config.encoder_hidden_size)
    ids = torch.randint(6, model.config.vocab_size, (b, 6))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    dec, labels = losses.itg_inputs(ids, mask, dec_token_id=2)
    joint = model.qformer(image, dec, mask, mode="itg").text_output
    expected = losses.itg_loss(model.lm_logits(joint), labels, 0.1)
    out = model(image, ids, mask, dec_token_id=2, generator=torch.Generator().manual_seed(0))
    assert out.loss_itg.item() == pytest.approx(expected.item(), abs=1e-5)


def test_forward_rejects_mismatched_batches():
    model = _tiny_model()
    with pytest.raises(ValueError, match="input_ids must have shape"):
        model(torch.randn(2, 5, 48), torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4), dec_token_id=2)


# --- stage 1 as LAVIS trains it ------------------------------------------------------------


@pytest.fixture(scope="module")
def one_process_group(tmp_path_factory):
    """A gloo process group of one, the world LAVIS's stage 1 always runs in."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield dist
        return
    store = tmp_path_factory.mktemp("dist") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield dist
    dist.destroy_process_group()


def _gathered(dist, tensor):
    """LAVIS's ``concat_all_gather``: every rank's tensor, under no_grad."""
    with torch.no_grad():
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _reference_itc(dist, image_feats, text_feats, temp):
    """ITC written the way ``Blip2Qformer.forward`` (LAVIS 1.0.2) writes it, with real gathers."""
    text_all, image_all = _gathered(dist, text_feats), _gathered(dist, image_feats)
    sim_i2t = torch.matmul(image_feats.unsqueeze(1), text_all.unsqueeze(-1)).squeeze(-1).max(-1).values / temp
    sim_t2i = torch.matmul(text_feats.unsqueeze(1).unsqueeze(1), image_all.permute(0, 2, 1)).squeeze(-2)
    sim_t2i = sim_t2i.max(-1).values / temp
    targets = torch.arange(image_feats.shape[0]) + dist.get_rank() * image_feats.shape[0]
    return (F.cross_entropy(sim_i2t, targets, label_smoothing=0.1)
            + F.cross_entropy(sim_t2i, targets, label_smoothing=0.1)) / 2


def _itc_grads(model, image, ids, mask, loss_fn):
    model.zero_grad(set_to_none=True)
    image_feats = F.normalize(model.vision_proj(model.qformer(image).query_output), dim=-1)  # (B, Q, E)
    text_feats = model.text_features(ids, mask)  # (B, E)
    loss = loss_fn(image_feats, text_feats, model.temp)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _batch(model, b=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 6, model.config.encoder_hidden_size, generator=gen)
    ids = torch.randint(6, model.config.vocab_size, (b, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    return image, ids, mask


def test_itc_gradient_is_lavis_by_default(one_process_group):
    model = _tiny_model()
    image, ids, mask = _batch(model)
    ref_loss, ref = _itc_grads(model, image, ids, mask, lambda i, t, temp: _reference_itc(one_process_group, i, t, temp))
    loss, got = _itc_grads(model, image, ids, mask, losses.itc_loss_from_features)
    assert loss == pytest.approx(float(ref_loss), abs=1e-6)
    assert got.keys() == ref.keys()
    scale = max(g.abs().max() for g in ref.values())
    for name in ref:
        assert (got[name] - ref[name]).abs().max() <= 1e-5 * scale, name


def test_both_sided_itc_gives_the_same_loss_and_another_gradient(one_process_group):
    model = _tiny_model()
    image, ids, mask = _batch(model)
    lavis_loss, lavis = _itc_grads(model, image, ids, mask, losses.itc_loss_from_features)
    both_loss, both = _itc_grads(
        model, image, ids, mask, lambda i, t, temp: losses.itc_loss_from_features(i, t, temp, both_sides=True))
    plain_loss, plain = _itc_grads(
        model, image, ids, mask, lambda i, t, temp: losses.itc_loss(losses.itc_similarity_matrix(i, t), temp))
    assert both_loss == pytest.approx(float(lavis_loss), abs=1e-6) and plain_loss == pytest.approx(float(lavis_loss))
    for name in plain:  # both_sides is the one-matrix loss
        assert torch.allclose(both[name], plain[name], atol=1e-7), name
    scale = max(g.abs().max() for g in lavis.values())
    largest_gap = max((both[n] - lavis[n]).abs().max() for n in lavis) / scale
    assert largest_gap > 0.01, f"the two gradients should differ, largest gap {largest_gap:.4f}"
    # the temperature sees the same loss either way: only the features' gradients differ
    assert torch.allclose(lavis["temp"], both["temp"], atol=1e-6)


def test_negative_weights_are_lavis_1_0_2s():
    gen = torch.Generator().manual_seed(0)
    sim, temp = torch.rand(6, 6, generator=gen) * 2 - 1, 0.05
    lavis = F.softmax(sim / temp, dim=1) + 1e-4  # blip2_qformer.py at release 1.0.2
    lavis.fill_diagonal_(0)
    expected = lavis / lavis.sum(dim=1, keepdim=True)  # what torch.multinomial draws from
    assert torch.allclose(losses.negative_weights(sim, temp), expected, atol=1e-7)
    assert (losses.negative_weights(sim, temp) >= 1e-4 / (1 + 6e-4) - 1e-9).masked_fill(torch.eye(6, dtype=bool), True).all()


def test_negative_weights_without_floor_are_lavis_main_branchs():
    gen = torch.Generator().manual_seed(0)
    sim, temp = torch.rand(6, 6, generator=gen) * 2 - 1, 0.05
    masked = (sim / temp).clone()
    masked.fill_diagonal_(-10000)  # blip2_qformer.py on the main branch
    expected = F.softmax(masked, dim=1)
    assert torch.allclose(losses.negative_weights(sim, temp, floor=0.0), expected, atol=1e-7)


def test_negative_floor_reaches_every_negative_even_when_one_dominates():
    sim = torch.full((4, 4), -1.0)
    sim[0, 1] = 1.0  # for image 0, text 1 takes nearly all the mass at temp 0.01
    sim.fill_diagonal_(1.0)
    gen = torch.Generator().manual_seed(0)
    drawn = {int(losses.sample_hard_negatives(sim, 0.01, gen, floor=0.1)[1][0]) for _ in range(300)}
    assert drawn == {1, 2, 3}
    without = {int(losses.sample_hard_negatives(sim, 0.01, gen, floor=0.0)[1][0]) for _ in range(300)}
    assert without == {1}


def test_negative_weights_reject_bad_input():
    with pytest.raises(ValueError, match="square"):
        losses.negative_weights(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="floor must be >= 0"):
        losses.negative_weights(torch.zeros(3, 3), floor=-1.0)


def test_itg_labels_by_mask_are_lavis_labels_by_pad_id():
    from qformer_lite.miniature.standins import CaptionTokenizer

    tok = CaptionTokenizer()
    ids, mask = tok.qformer(["a red circle at the top left", "a blue square left of a green star", "a red circle"])
    _, by_mask = losses.itg_inputs(ids, mask, tok.dec_token_id)
    dec = ids.clone()
    dec[:, 0] = tok.dec_token_id
    by_pad_id = dec.masked_fill(dec == tok.pad_token_id, -100)  # LAVIS's rule
    assert (mask == 0).any() and torch.equal(by_mask, by_pad_id)


def test_forward_uses_lavis_choices_and_can_be_told_otherwise():
    model = _tiny_model()
    image, ids, mask = _batch(model)
    args = (image, ids, mask)
    out = model(*args, dec_token_id=2, generator=torch.Generator().manual_seed(0))
    both = model(*args, dec_token_id=2, generator=torch.Generator().manual_seed(0), itc_both_sides=True)
    assert out.loss_itc.item() == pytest.approx(both.loss_itc.item(), abs=1e-6)
    assert torch.equal(out.neg_image, both.neg_image)


def test_negative_weights_of_one_process_rows_against_the_whole_batch():
    """LAVIS on several GPUs: each process's b rows against all B columns, the positive of row
    i at column rank * b + i. The rows are those of the square matrix's weights."""
    torch.manual_seed(3)
    sim, temp = torch.randn(6, 6), 0.3
    for floor in (1e-4, 0.0):
        whole = losses.negative_weights(sim, temp, floor=floor)
        rank1 = losses.negative_weights(sim[3:], temp, floor=floor, positives=torch.arange(3, 6))
        assert torch.allclose(rank1, whole[3:], atol=1e-7)
    with pytest.raises(ValueError, match="one column per row"):
        losses.negative_weights(sim[3:], temp, positives=torch.arange(2))
