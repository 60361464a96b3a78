"""Behaviour of the Q-Former that follows from BLIP-2's design (no HF needed)."""

import pytest
import torch

import qformer_lite.attention as attention_module
from qformer_lite import MultiHeadAttention, QFormer, QFormerConfig, QFormerPretraining
from qformer_lite.attention import arithmetic_ratio, cross_attention_form, query_side_attention, uses_query_side

TOL = 1e-5


def make(seed=0, **overrides):
    torch.manual_seed(seed)
    return QFormer(QFormerConfig.tiny(**overrides)).eval()


def inputs(batch=2, n=7, t=6, seed=1, cfg=None):
    cfg = cfg or QFormerConfig.tiny()
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, n, cfg.encoder_hidden_size, generator=g)
    ids = torch.randint(1, cfg.vocab_size, (batch, t), generator=g)
    mask = torch.ones(batch, t, dtype=torch.long)
    mask[-1, t - 2:] = 0  # the last row is padded
    return img, ids, mask


def test_shapes():
    m = make()
    img, ids, mask = inputs()
    out = m(img, ids, mask, output_attentions=True)
    assert out.query_output.shape == (2, 8, 64) and out.text_output.shape == (2, 6, 64)
    assert len(out.attentions) == 4 and out.attentions[0].shape == (2, 4, 14, 14)
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (2, 4, 8, 7)
    q_only = m(img)
    assert q_only.text_output is None and q_only.query_output.shape == (2, 8, 64)


def test_itc_joint_pass_equals_two_separate_passes():
    m = make()
    img, ids, mask = inputs()
    joint = m(img, ids, mask, mode="itc")
    queries = m(img).query_output
    text = m(input_ids=ids, attention_mask=mask, mode="itc").text_output
    assert (joint.query_output - queries).abs().max() < TOL
    assert (joint.text_output - text).abs().max() < TOL


def test_itg_queries_do_not_see_the_text():
    m = make()
    img, ids, mask = inputs()
    other = torch.randint(1, 100, ids.shape)
    a = m(img, ids, mask, mode="itg").query_output
    b = m(img, other, mask, mode="itg").query_output
    assert (a - b).abs().max() < TOL
    assert (a - m(img).query_output).abs().max() < TOL  # the same as a query-only pass


def test_itg_text_is_causal():
    m = make()
    img, ids, mask = inputs(t=8)
    mask[:] = 1
    base = m(img, ids, mask, mode="itg").text_output
    for i in range(ids.shape[1] - 1):
        changed = ids.clone()
        changed[:, i + 1:] = torch.randint(1, 100, changed[:, i + 1:].shape)
        out = m(img, changed, mask, mode="itg").text_output
        assert (out[:, : i + 1] - base[:, : i + 1]).abs().max() < TOL, f"position {i} saw later text"
        assert (out[:, i + 1:] - base[:, i + 1:]).abs().max() > 1e-3
    # and the ITM mode, by contrast, lets position 0 see later text
    itm = m(img, ids, mask, mode="itm").text_output
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] % 99) + 1
    assert (m(img, changed, mask, mode="itm").text_output[:, 0] - itm[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["itc", "itm", "itg"])
def test_padding_is_never_attended(mode):
    m = make()
    img, ids, mask = inputs()
    out = m(img, ids, mask, mode=mode, output_attentions=True)
    q = m.config.num_query_tokens
    pad_cols = q + torch.nonzero(mask[-1] == 0).flatten()
    for layer_probs in out.attentions:
        assert layer_probs[-1][..., pad_cols].abs().max() == 0
    # and what sits in the padded slots does not matter to the real positions
    junk = ids.clone()
    junk[-1, mask[-1] == 0] = 57
    out2 = m(img, junk, mask, mode=mode)
    real = mask[-1].bool()
    assert (out2.query_output - out.query_output).abs().max() < TOL
    assert (out2.text_output[-1, real] - out.text_output[-1, real]).abs().max() < TOL


def test_image_padding_is_respected():
    m = make()
    img, _, _ = inputs(n=9)
    img_mask = torch.ones(2, 9, dtype=torch.long)
    img_mask[1, 6:] = 0
    a = m(img, image_attention_mask=img_mask).query_output
    changed = img.clone()
    changed[1, 6:] = 100.0
    b = m(changed, image_attention_mask=img_mask).query_output
    assert (a - b).abs().max() < TOL
    c = m(img[1:, :6]).query_output  # the same as cutting the padded tokens away
    assert (a[1:] - c).abs().max() < TOL


def test_cached_query_keys_values_equal_the_joint_itg_pass():
    m = make()
    img, ids, mask = inputs()
    joint = m(img, ids, mask, mode="itg")
    query_pass = m(img, use_cache=True)
    assert len(query_pass.past_key_values) == m.config.num_hidden_layers
    text = m(input_ids=ids, attention_mask=mask, mode="itg", past_key_values=query_pass.past_key_values)
    assert text.query_output is None
    assert (text.text_output - joint.text_output).abs().max() < TOL


def test_queries_have_no_position_permuting_them_permutes_the_outputs():
    m = make()
    img, _, _ = inputs()
    perm = torch.randperm(m.config.num_query_tokens)
    out = m(img).query_output
    with torch.no_grad():
        m.query_tokens.weight.copy_(m.query_tokens.weight[:, perm])
    assert (m(img).query_output - out[:, perm]).abs().max() < TOL


@pytest.mark.parametrize("freq", [1, 2, 3])
def test_query_side_cross_attention_equals_the_plain_form(freq):
    m = make(cross_attention_frequency=freq, num_hidden_layers=5)
    img, ids, mask = inputs(n=11)
    img_mask = torch.ones(2, 11, dtype=torch.long)
    img_mask[0, 9:] = 0
    results = {}
    for form in ("plain", "query_side"):
        m.zero_grad()
        with cross_attention_form(form):
            out = m(img, ids, mask, image_attention_mask=img_mask, output_attentions=True)
        (out.last_hidden_state.square().mean()).backward()
        grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in m.named_parameters()}
        results[form] = (out, grads)
    (plain, g_plain), (query_side, g_query_side) = results["plain"], results["query_side"]
    assert (plain.last_hidden_state - query_side.last_hidden_state).abs().max() < TOL
    for a, b in zip(plain.cross_attentions, query_side.cross_attentions):
        assert (a - b).abs().max() < TOL
    # the key bias shifts every score of a row equally: softmax ignores it, so its gradient is 0
    # (the query side never touches it)
    for name in g_plain:
        assert (g_plain[name] - g_query_side[name]).abs().max() < 1e-5, name


def test_dropout_is_active_in_training_only():
    m = make(hidden_dropout_prob=0.5)
    img, _, _ = inputs()
    assert (m(img).query_output - m(img).query_output).abs().max() == 0
    m.train()
    assert (m(img).query_output - m(img).query_output).abs().max() > 0


def test_query_only_qformer_refuses_text():
    m = make(use_qformer_text_input=False)
    img, ids, mask = inputs()
    assert m.embeddings is None and all(layer.text_ffn is None for layer in m.layers)
    with pytest.raises(ValueError, match="no text parts"):
        m(img, ids, mask)


def test_pretraining_scores():
    torch.manual_seed(0)
    p = QFormerPretraining(QFormerConfig.tiny()).eval()
    img, ids, mask = inputs(batch=3)
    sim = p.itc_similarity(img, ids, mask)
    assert sim.shape == (3, 3) and sim.abs().max() <= 1 + 1e-6
    # the max over queries, by hand
    feats = p.image_features(img)  # (B, Q, E)
    text = p.text_features(ids, mask)  # (B, E)
    assert (sim[1, 2] - (feats[1] @ text[2]).max()).abs() < 1e-6
    assert p.itm_logits(img, ids, mask).shape == (3, 2)
    assert p.temp.item() == pytest.approx(0.07)


# --- bad input: a ValueError naming what was expected and what arrived ---------------------

def bad_cases():
    img, ids, mask = inputs()
    return [
        (dict(image_embeds=torch.randn(2, 7, 50)), ["48", "(2, 7, 50)"]),
        (dict(image_embeds=torch.randn(7, 48)), ["(B, N, 48)", "(7, 48)"]),
        (dict(image_embeds=img, input_ids=ids[:1], attention_mask=mask[:1]), ["batch size", "2", "1"]),
        (dict(image_embeds=img, input_ids=torch.ones(2, 65, dtype=torch.long)), ["65", "max_position_embeddings=64"]),
        (dict(image_embeds=img, input_ids=ids, attention_mask=mask, mode="itx"), ["itc", "'itx'"]),
        (dict(image_embeds=img, input_ids=ids, attention_mask=mask[:, :4]), ["(2, 6)", "(2, 4)"]),
        (dict(image_embeds=img, image_attention_mask=torch.ones(2, 5)), ["(2, 7)", "(2, 5)"]),
        (dict(image_embeds=img, input_ids=ids[:, None]), ["(B, T)", "(2, 1, 6)"]),
        (dict(image_embeds=img, input_ids=ids + 1000), ["vocab_size=100", "1"]),
        (dict(image_embeds=img, input_ids=ids.float()), ["integer", "float32"]),
        (dict(image_embeds=img, input_ids=ids, attention_mask=torch.zeros(2, 6)), ["attention_mask", "no real token"]),
        (dict(), ["image_embeds", "input_ids"]),
    ]


@pytest.mark.parametrize("case", range(len(bad_cases())))
def test_bad_input_raises_a_clear_value_error(case):
    kwargs, words = bad_cases()[case]
    with pytest.raises(ValueError) as err:
        make()(**kwargs)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_auto_cross_attention_picks_the_query_side_only_where_it_saves_arithmetic(monkeypatch):
    # BLIP-2: 12 heads x 32 queries over 257 tokens: 38% fewer multiply-adds
    assert arithmetic_ratio(12, 32, 64, 257) == pytest.approx(0.6245, abs=1e-4)
    blip2 = MultiHeadAttention(768, 12, context_size=1408)
    assert uses_query_side(blip2, 32, torch.empty(1, 257, 1408, device="meta")) is False  # not on the CPU
    calls = []
    real = attention_module.query_side_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention_module, "query_side_attention", spy)
    few_tokens = make()  # tiny: 4 heads x 8 queries over 7 tokens would cost more
    assert not uses_query_side(few_tokens.layers[0].cross_attention.attention, 8, inputs()[0])
    few_tokens(inputs()[0])
    assert calls == []
    many_tokens = make(num_query_tokens=4)
    img = torch.randn(2, 200, many_tokens.config.encoder_hidden_size)
    out_auto = many_tokens(img).query_output
    cross_layers = many_tokens.config.num_hidden_layers // many_tokens.config.cross_attention_frequency
    assert len(calls) == cross_layers
    with cross_attention_form("plain"):
        out_plain = many_tokens(img).query_output
    assert len(calls) == cross_layers and (out_auto - out_plain).abs().max() < TOL
    calls.clear()
    with cross_attention_form("query_side"):
        few_tokens(inputs()[0])
        with cross_attention_form("auto"):  # nested: the inner form holds inside, the outer after it
            few_tokens(inputs()[0])
        few_tokens(inputs()[0])
    assert len(calls) == 2 * 2  # two passes through the tiny Q-Former's two cross-attention layers


def test_an_unknown_cross_attention_form_is_a_clear_value_error():
    with pytest.raises(ValueError, match="'auto', 'plain', 'query_side', got 'fast'"):
        with cross_attention_form("fast"):
            pass
    with pytest.raises(ValueError, match="got True"):
        with cross_attention_form(True):
            pass


def test_query_side_form_with_one_image_mask_for_the_batch():
    m = make()
    attn = m.layers[0].cross_attention.attention
    q, img = torch.randn(3, 8, 64), torch.randn(3, 7, m.config.encoder_hidden_size)
    mask = torch.ones(1, 1, 1, 7, dtype=torch.bool)
    mask[..., 5:] = False  # the same two tokens hidden in every image
    with cross_attention_form("plain"):
        plain, p_plain, _ = attn(q, img, mask, True)
    query_side, p_query_side = query_side_attention(attn, q, img, mask, True)
    assert (plain - query_side).abs().max() < TOL and (p_plain - p_query_side).abs().max() < TOL
    assert p_query_side[..., 5:].abs().max() == 0
