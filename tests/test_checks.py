"""The exercise checkers: a right answer passes, each typical mistake gets its own hint."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from qformer_lite import QFormer, QFormerConfig, checks
from qformer_lite.masks import build_attention_mask


def run(capsys, checker, *args):
    ok = checker(*args)
    out = capsys.readouterr().out
    assert out.startswith((checks.PASS, checks.FAIL)), out
    assert all(len(line) <= checks.WIDTH for line in out.splitlines()), out
    assert isinstance(ok, checks.CheckResult) and ok.message == " ".join(out.split())
    return bool(ok), ok.message


def fails_with(capsys, checker, *args, words):
    """The check fails, and its message holds every one of ``words``."""
    ok, out = run(capsys, checker, *args)
    assert not ok and out.startswith(checks.FAIL), out
    for word in [words] if isinstance(words, str) else words:
        assert word in out, out
    return out


def line_of(fn, text: str) -> int:
    """The file line number of the line of ``fn``'s source holding ``text``."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


# --- answers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(checks.ANSWERS))
def test_every_answer_passes_and_a_wrong_one_gets_its_hint(capsys, key):
    expected, hint = checks.ANSWERS[key]
    ok, out = run(capsys, checks.check_answer, key, expected)
    assert ok and out.startswith(checks.PASS)
    wrong = (not expected) if isinstance(expected, bool) else ("nope" if isinstance(expected, str) else expected + 1)
    ok, out = run(capsys, checks.check_answer, key, wrong)
    assert not ok and out.startswith(checks.FAIL) and " ".join(hint.split()) in out


def test_answer_placeholders_and_unknown_keys(capsys):
    assert not run(capsys, checks.check_answer, "self_attention_params", ...)[0]
    fails_with(capsys, checks.check_answer, "no_such_key", 1, words="unknown exercise key")
    fails_with(capsys, checks.check_answer, "self_attention_params", 2_000_000, words="too low")
    fails_with(capsys, checks.check_answer, "images_in_2048_all_tokens", 2048 / 677, words=["3.025", "too high"])


BOOL_ANSWERS = {"yes_or_no": (False, "think of the order of the blocks.")}


def test_a_bool_answer_must_be_a_bool(capsys):
    assert run(capsys, checks.check_answer, "yes_or_no", False, BOOL_ANSWERS)[0]
    assert run(capsys, checks.check_answer, "yes_or_no", np.bool_(False), BOOL_ANSWERS)[0]
    fails_with(capsys, checks.check_answer, "yes_or_no", True, BOOL_ANSWERS, words="order of the blocks")
    for number in (0, 0.0, 1):
        fails_with(capsys, checks.check_answer, "yes_or_no", number, BOOL_ANSWERS,
                   words=["expects True or False", type(number).__name__, "not as 0 or 1"])
    fails_with(capsys, checks.check_answer, "yes_or_no", "False", BOOL_ANSWERS, words="expects True or False")


def test_a_number_must_not_be_a_bool_or_a_word(capsys):
    fails_with(capsys, checks.check_answer, "images_in_2048_queries", True, words="expects a number; got the bool")
    fails_with(capsys, checks.check_answer, "images_in_2048_queries", "64", words="expects a number; got the str")
    fails_with(capsys, checks.check_answer, "images_in_2048_queries", float("nan"), words="NaN")
    assert run(capsys, checks.check_answer, "images_in_2048_queries", torch.tensor(64))[0]
    assert run(capsys, checks.check_answer, "images_in_2048_queries", 64.0)[0]


def test_a_word_answer(capsys):
    assert run(capsys, checks.check_answer, "instructblip_mask", " ITM ")[0]
    fails_with(capsys, checks.check_answer, "instructblip_mask", "itg", words="both ways")
    fails_with(capsys, checks.check_answer, "instructblip_mask", 2, words="expects a word in quotes")


def test_answers_are_the_books_numbers():
    from qformer_lite.plotting import vit_tokens

    assert checks.ANSWERS["images_in_2048_all_tokens"][0] == 2048 // vit_tokens(364) == 3
    assert checks.ANSWERS["images_in_2048_queries"][0] == 2048 // QFormerConfig.blip2().num_query_tokens == 64
    assert checks.ANSWERS["self_attention_params"][0] == 4 * (768 * 768 + 768) + 2 * 768
    assert checks.ANSWERS["cross_attention_params"][0] == 2 * (768 * 768 + 768) + 2 * (1408 * 768 + 768) + 2 * 768


def cross_blocks_reaching_text(model: QFormer) -> list[int]:
    """The layers whose cross-attention changes the text's output under ITM (measured)."""
    torch.manual_seed(0)
    cfg = model.config
    image = torch.randn(1, 5, cfg.encoder_hidden_size)
    ids = torch.randint(1, cfg.vocab_size, (1, 4))
    reaching = []
    with torch.no_grad():
        before = model(image, ids, mode="itm").text_output
        for i, layer in enumerate(model.layers):
            if layer.cross_attention is None:
                continue
            weight = layer.cross_attention.attention.value.weight
            saved = weight.clone()
            weight.add_(1.0)
            if (model(image, ids, mode="itm").text_output - before).abs().max() > 1e-4:
                reaching.append(i)
            weight.copy_(saved)
    return reaching


def test_cross_blocks_reaching_the_text_follow_the_rule_of_the_chapter_3_answers():
    # the rule: a cross-attention block in layer i reaches the text iff a layer i + 1 follows
    even = QFormer(QFormerConfig.tiny(num_hidden_layers=4, cross_attention_frequency=2)).eval()
    assert cross_blocks_reaching_text(even) == [0, 2]
    odd = QFormer(QFormerConfig.tiny(num_hidden_layers=4, cross_attention_frequency=1)).eval()
    for i in (0, 2):
        odd.layers[i].cross_attention = None  # cross-attention in layers 1 and 3 only
    assert cross_blocks_reaching_text(odd) == [1]
    blip2 = QFormerConfig.blip2()
    layers = range(blip2.num_hidden_layers)
    assert checks.ANSWERS["cross_blocks_reaching_text"][0] == sum(
        blip2.has_cross_attention(i) and i + 1 < len(layers) for i in layers)
    assert checks.ANSWERS["cross_blocks_reaching_text_odd"][0] == sum(
        i % 2 == 1 and i + 1 < len(layers) for i in layers)


# --- where an error happened --------------------------------------------------------------------

def test_an_error_inside_torch_is_reported_at_the_learners_line(capsys):
    def add_norm(x, residual, dense, layer_norm):
        # the 16-wide x through an 8-wide LayerNorm: raises inside torch
        normed = layer_norm(x)
        return dense(normed) + residual

    out = fails_with(capsys, checks.check_add_norm, add_norm, words="raised RuntimeError")
    expected = f"(line {line_of(add_norm, 'normed = layer_norm(x)')}, in add_norm: normed = layer_norm(x))"
    assert expected in " ".join(out.split()), out
    assert "functional.py" not in out and "site-packages" not in out


def test_the_learners_frame_skips_library_and_standard_library_frames():
    import json

    def learner():
        json.loads("{")  # raises inside the standard library

    try:
        learner()
    except ValueError as err:
        frame = checks._learners_frame(err)
    assert frame.name == "learner" and frame.lineno == line_of(learner, 'json.loads("{")')


# --- chapter 1 -------------------------------------------------------------------------------

class GoodQueries(nn.Module):
    def __init__(self, num_queries, hidden_size):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, num_queries, hidden_size))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, batch):
        return self.weight.expand(batch, -1, -1)


class UnitQueries(GoodQueries):
    def __init__(self, num_queries, hidden_size):
        super().__init__(num_queries, hidden_size)
        nn.init.normal_(self.weight, std=1.0)


class VarianceQueries(GoodQueries):  # 0.02 taken for the variance
    def __init__(self, num_queries, hidden_size):
        super().__init__(num_queries, hidden_size)
        nn.init.normal_(self.weight, std=0.02 ** 2)


class UniformQueries(GoodQueries):  # the right std, the wrong distribution
    def __init__(self, num_queries, hidden_size):
        super().__init__(num_queries, hidden_size)
        bound = 0.02 * math.sqrt(3)
        nn.init.uniform_(self.weight, -bound, bound)


class FlatQueries(nn.Module):
    def __init__(self, num_queries, hidden_size):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_queries, hidden_size) * 0.02)

    def forward(self, batch):
        return self.weight.expand(batch, -1, -1)


class DetachedQueries(GoodQueries):
    def forward(self, batch):
        return self.weight.detach().expand(batch, -1, -1).clone().requires_grad_()


class DataQueries(GoodQueries):  # no graph at all: backward would raise
    def forward(self, batch):
        return self.weight.data.expand(batch, -1, -1)


class RepeatQueries(GoodQueries):  # a copy per image
    def forward(self, batch):
        return self.weight.repeat(batch, 1, 1)


class CatQueries(GoodQueries):
    def forward(self, batch):
        return torch.cat([self.weight] * batch)


class ContiguousQueries(GoodQueries):
    def forward(self, batch):
        return self.weight.expand(batch, -1, -1).contiguous()


class BroadcastQueries(GoodQueries):  # another view: fine
    def forward(self, batch):
        return self.weight.broadcast_to(batch, *self.weight.shape[1:])


class Unwritten(nn.Module):
    def __init__(self, num_queries, hidden_size):
        raise NotImplementedError


@pytest.mark.parametrize("cls, ok, words", [
    (GoodQueries, True, "as a view (no copy)"),
    (BroadcastQueries, True, "as a view (no copy)"),
    (UnitQueries, False, ["std 1", "N(0, 0.02²)"]),
    (VarianceQueries, False, "std 0.0004"),
    (UniformQueries, False, "not normal"),
    (FlatQueries, False, "(1, 32, 768)"),
    (DetachedQueries, False, "gradients"),
    (DataQueries, False, "carries no gradients"),
    (RepeatQueries, False, ["a copy", ".expand(batch_size, -1, -1)", "a view"]),
    (CatQueries, False, ["a copy", ".expand(batch_size, -1, -1)"]),
    (ContiguousQueries, False, ["a copy", ".expand(batch_size, -1, -1)"]),
    (Unwritten, False, "not written yet"),
])
def test_check_queries(capsys, cls, ok, words):
    got, out = run(capsys, checks.check_queries, cls)
    assert bool(got) is ok, out
    for word in [words] if isinstance(words, str) else words:
        assert word in out, out


def test_check_equivariance_test(capsys):
    def right(f, x, perm):
        return torch.allclose(f(x[:, perm]), f(x)[:, perm], atol=1e-5)

    def always(f, x, perm):
        return True

    def elementwise(f, x, perm):
        return torch.isclose(f(x[:, perm]), f(x)[:, perm])

    def output_not_permuted(f, x, perm):
        return torch.allclose(f(x[:, perm]), f(x), atol=1e-5)

    assert run(capsys, checks.check_equivariance_test, right)[0]
    fails_with(capsys, checks.check_equivariance_test, always, words="position embeddings")
    fails_with(capsys, checks.check_equivariance_test, elementwise, words=["a tensor of shape (2, 6, 8)",
                                                                          "one True or False"])
    fails_with(capsys, checks.check_equivariance_test, lambda f, x, p: (f(x[:, p]) == f(x)[:, p]).numpy(),
               words="returns array(")
    fails_with(capsys, checks.check_equivariance_test, output_not_permuted,
               words=["without positions your test says False", "f(x)[:, perm]"])


# --- chapter 2 -------------------------------------------------------------------------------

def good_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def in_place_scale(q, k, v, mask=None):  # edits its input: still right
    q /= math.sqrt(q.shape[-1])
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores + (~mask) * -10000.0  # LAVIS's additive form gives the same numbers
    return scores.softmax(-1) @ v


def unscaled(q, k, v, mask=None):
    return (q @ k.transpose(-2, -1)).softmax(-1) @ v


def divided_by_d(q, k, v, mask=None):
    return (q @ k.transpose(-2, -1) / q.shape[-1]).softmax(-1) @ v


def ignores_mask(q, k, v, mask=None):
    return good_attention(q, k, v)


def inverted_mask(q, k, v, mask=None):  # hides the keys where mask is True
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(-1) @ v


def zero_not_inf(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, 0.0)
    return scores.softmax(-1) @ v


def zeroed_after_softmax(q, k, v, mask=None):
    probs = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    if mask is not None:
        probs = probs.masked_fill(~mask, 0.0)
    return probs @ v


def wrong_axis(q, k, v, mask=None):
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-2) @ v


def probs_first(q, k, v, mask=None):
    probs = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return probs, probs @ v


def probs_only(q, k, v, mask=None):
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)


def no_return(q, k, v, mask=None):
    q @ k.transpose(-2, -1)


def crashes(q, k, v, mask=None):
    return q @ k  # wrong inner dimension


@pytest.mark.parametrize("fn, ok, words", [
    (good_attention, True, "with and without a mask"),
    (in_place_scale, True, "with and without a mask"),
    (unscaled, False, "not scaled"),
    (divided_by_d, False, "divided by d"),
    (ignores_mask, False, "mask is ignored"),
    (inverted_mask, False, ["the mask is inverted", "MAY be attended"]),
    (zero_not_inf, False, ["set to 0", "-inf"]),
    (zeroed_after_softmax, False, ["after the softmax", "sum to 1"]),
    (wrong_axis, False, "wrong axis"),
    (probs_first, False, "return the output first"),
    (probs_only, False, "the shape of the probabilities"),
    (no_return, False, "returned None"),
    (crashes, False, ["raised RuntimeError", "in crashes: return q @ k"]),
])
def test_check_attention(capsys, fn, ok, words):
    got, out = run(capsys, checks.check_attention, fn)
    assert bool(got) is ok, out
    for word in [words] if isinstance(words, str) else words:
        assert word in out, out


def test_the_inverted_mask_is_not_hinted_as_minus_inf_before_the_softmax(capsys):
    out = fails_with(capsys, checks.check_attention, inverted_mask, words="inverted")
    assert "before the softmax (not after)" not in out


def test_check_attention_accepts_output_and_probs(capsys):
    from qformer_lite import attention_from_scratch

    assert run(capsys, checks.check_attention, attention_from_scratch)[0]


def test_check_split_heads(capsys):
    def split(x, h):
        return rearrange(x, "b l (h d) -> b h l d", h=h)

    def merge(x):
        return rearrange(x, "b h l d -> b l (h d)")

    def interleaved(x, h):
        return rearrange(x, "b l (d h) -> b h l d", h=h)

    def reshape_only(x, h):
        b, l, width = x.shape
        return x.reshape(b, h, l, width // h)

    def four_heads_always(x, h):
        return rearrange(x, "b l (h d) -> b h l d", h=4)

    def merge_by_reshape(x):
        b, h, l, d = x.shape
        return x.reshape(b, l, h * d)

    assert run(capsys, checks.check_split_heads, split, merge)[0]
    fails_with(capsys, checks.check_split_heads, interleaved, merge, words="interleaved")
    fails_with(capsys, checks.check_split_heads, reshape_only, merge, words="a reshape alone")
    fails_with(capsys, checks.check_split_heads, four_heads_always, merge, words="split(x, 2) returned shape")
    fails_with(capsys, checks.check_split_heads, split, lambda x: x.flatten(2), words="merge")
    fails_with(capsys, checks.check_split_heads, split, merge_by_reshape, words="merge reshapes")


# --- chapter 3 -------------------------------------------------------------------------------

def heads(t, h):
    return rearrange(t, "b l (h d) -> b h l d", h=h)


def good_cross(queries, image, attn):
    h = attn.num_heads
    q, k, v = heads(attn.query(queries), h), heads(attn.key(image), h), heads(attn.value(image), h)
    out = (q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)).softmax(-1) @ v
    return rearrange(out, "b h l d -> b l (h d)")


def fused_cross(queries, image, attn):  # PyTorch's fused kernel is allowed
    h = attn.num_heads
    q, k, v = heads(attn.query(queries), h), heads(attn.key(image), h), heads(attn.value(image), h)
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h l d -> b l (h d)")


def full_width_scale(queries, image, attn):
    h = attn.num_heads
    q, k, v = heads(attn.query(queries), h), heads(attn.key(image), h), heads(attn.value(image), h)
    out = (q @ k.transpose(-2, -1) / math.sqrt(h * attn.head_dim)).softmax(-1) @ v
    return rearrange(out, "b h l d -> b l (h d)")


def softmax_over_queries(queries, image, attn):
    h = attn.num_heads
    q, k, v = heads(attn.query(queries), h), heads(attn.key(image), h), heads(attn.value(image), h)
    out = (q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)).softmax(-2) @ v
    return rearrange(out, "b h l d -> b l (h d)")


def no_heads(queries, image, attn):
    q, k, v = attn.query(queries), attn.key(image), attn.value(image)
    return (q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)).softmax(-1) @ v


def heads_not_merged(queries, image, attn):
    h = attn.num_heads
    q, k, v = heads(attn.query(queries), h), heads(attn.key(image), h), heads(attn.value(image), h)
    return (q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)).softmax(-1) @ v


def merged_interleaved(queries, image, attn):
    return rearrange(heads_not_merged(queries, image, attn), "b h l d -> b l (d h)")


def calls_the_module(queries, image, attn):
    return attn(queries, image)[0]


def test_check_cross_attention(capsys):
    assert run(capsys, checks.check_cross_attention, good_cross)[0]
    assert run(capsys, checks.check_cross_attention, fused_cross)[0]
    fails_with(capsys, checks.check_cross_attention, full_width_scale, words="√D")
    fails_with(capsys, checks.check_cross_attention, softmax_over_queries, words="softmax runs over the queries")
    fails_with(capsys, checks.check_cross_attention, no_heads, words="heads are missing")
    fails_with(capsys, checks.check_cross_attention, heads_not_merged, words=["(B, H, Q, d)", "not merged"])
    fails_with(capsys, checks.check_cross_attention, merged_interleaved, words="merged interleaved")
    fails_with(capsys, checks.check_cross_attention, calls_the_module,
               words=["calls the module itself", "attn.query, attn.key and attn.value"])
    fails_with(capsys, checks.check_cross_attention, lambda q, i, a: a.key(i), words="(B, Q, D)")
    # the module works again afterwards
    assert run(capsys, checks.check_cross_attention, good_cross)[0]


# --- chapter 4 -------------------------------------------------------------------------------

def test_check_cross_layers(capsys):
    assert run(capsys, checks.check_cross_layers, lambda n, f: [i for i in range(n) if i % f == 0])[0]
    assert run(capsys, checks.check_cross_layers, lambda n, f: range(0, n, f))[0]
    assert run(capsys, checks.check_cross_layers, lambda n, f: torch.arange(0, n, f))[0]
    fails_with(capsys, checks.check_cross_layers, lambda n, f: [i for i in range(n) if (i + 1) % f == 0],
               words="layer 0")
    fails_with(capsys, checks.check_cross_layers, lambda n, f: len(range(0, n, f)),
               words=["returned the int 6", "a list of layer indices"])
    fails_with(capsys, checks.check_cross_layers, lambda n, f: [i % f == 0 for i in range(n)],
               words="not one True/False per layer")


def test_check_add_norm(capsys):
    assert run(capsys, checks.check_add_norm, lambda x, r, dense, ln: ln(dense(x) + r))[0]
    fails_with(capsys, checks.check_add_norm, lambda x, r, dense, ln: r + ln(dense(x)), words="before the sum")
    fails_with(capsys, checks.check_add_norm, lambda x, r, dense, ln: ln(dense(x)), words="residual is missing")
    fails_with(capsys, checks.check_add_norm, lambda x, r, dense, ln: ln(F.dropout(dense(x), 0.1) + r),
               words=["dropout is on", "leaves dropout out"])


def formula(cfg):
    d, i, c = cfg.hidden_size, cfg.intermediate_size, cfg.encoder_hidden_size

    def linear(n_in, n_out):
        return n_in * n_out + n_out

    norm = 2 * d
    self_attn = 4 * linear(d, d) + norm
    cross = 2 * linear(d, d) + 2 * linear(c, d) + norm
    ffn = linear(d, i) + linear(i, d) + norm
    n_cross = sum(cfg.has_cross_attention(k) for k in range(cfg.num_hidden_layers))
    return norm + cfg.num_hidden_layers * (self_attn + ffn) + n_cross * cross


def test_the_checkers_mistakes_start_from_the_right_count():
    for cfg in (QFormerConfig.blip2(), QFormerConfig.tiny(cross_attention_frequency=3)):
        assert checks._query_path_formula(cfg) == formula(cfg)
    assert formula(QFormerConfig.blip2()) == 105_137_664


@pytest.mark.parametrize("flags, words", [
    (dict(query_tokens=True), "query tokens"),
    (dict(text_ffn=True), "text FFN is not on the query path"),
    (dict(text_embeddings=True), "word and position embeddings"),
    (dict(cross_every_layer=True), "not every layer"),
    (dict(cross_one_based=True), "counting from 0"),
    (dict(image_width=768), "keys and values read the image"),
    (dict(biases=False), "has a bias too"),
    (dict(norms=False), "ends in a LayerNorm"),
    (dict(embedding_norm=False), "embedding LayerNorm"),
])
def test_check_query_path_params_names_the_mistake(capsys, flags, words):
    def mistaken(cfg):
        return checks._query_path_formula(cfg, **flags)

    fails_with(capsys, checks.check_query_path_params, mistaken, words=words)


def test_check_query_path_params(capsys):
    assert run(capsys, checks.check_query_path_params, formula)[0]
    fails_with(capsys, checks.check_query_path_params, lambda cfg: formula(cfg) - 1, words="biases")
    fails_with(capsys, checks.check_query_path_params, lambda cfg: formula(QFormerConfig.blip2()),
               words="read every size from cfg")
    fails_with(capsys, checks.check_query_path_params, lambda cfg: None, words="returned None")
    fails_with(capsys, checks.check_query_path_params, lambda cfg: "105M", words="expected a number")


# --- chapter 5 -------------------------------------------------------------------------------

def test_check_mask_passes_the_library(capsys):
    assert run(capsys, checks.check_mask, build_attention_mask)[0]


def broken(mode_to_break, change):
    def fn(mode, q, text_mask):
        mask = build_attention_mask(mode, q, text_mask).clone()
        if mode == mode_to_break:
            change(mask, q, text_mask)
        return mask
    return fn


def open_query_to_text(mask, q, text_mask):
    mask[:, :q, q:] = text_mask.bool()[:, None, :]


def open_future(mask, q, text_mask):
    mask[:, q:, q:] |= text_mask.bool()[:, None, :]


def open_padding(mask, q, text_mask):
    mask[:, :, q:] |= build_attention_mask("itm", q, torch.ones_like(text_mask))[:, :, q:]


def close_padded_rows(mask, q, text_mask):
    mask[:, q:] &= text_mask.bool()[:, :, None]


def causal_queries(mask, q, text_mask):
    mask[:, :q, :q] = torch.ones(q, q, dtype=torch.bool).tril()


def inverted(mode, q, text_mask):
    return ~build_attention_mask(mode, q, text_mask)


def inverted_pattern(mode, q, text_mask):  # hidden <-> seen, padding still closed
    real = torch.cat([torch.ones(text_mask.shape[0], q, dtype=torch.bool), text_mask.bool()], dim=1)
    return ~build_attention_mask(mode, q, torch.ones_like(text_mask)) & real[:, None, :]


@pytest.mark.parametrize("fn, words", [
    (broken("itg", open_query_to_text), "must not peek"),
    (broken("itg", open_future), "never later ones"),
    (broken("itm", open_padding), "padded text columns"),
    (broken("itc", open_query_to_text), "unimodal"),
    (broken("itg", close_padded_rows), "a padded row keeps its mode's pattern"),
    (broken("itg", causal_queries), "the queries see all the queries, both ways"),
    (inverted, "the mask is inverted"),
    (inverted_pattern, "the mask is inverted"),
    (lambda mode, q, m: build_attention_mask(mode, q, m)[0], "(B, Q+T, Q+T)"),
    (lambda mode, q, m: build_attention_mask(mode, q, m).float(), ["dtype torch.float32", "expected torch.bool"]),
    (lambda mode, q, m: build_attention_mask(mode, q, m).long(), ["dtype torch.int64", "expected torch.bool"]),
    (lambda mode, q, m: (~build_attention_mask(mode, q, m)) * -10000.0, ["dtype torch.float32", "additive"]),
])
def test_check_mask_hints(capsys, fn, words):
    fails_with(capsys, checks.check_mask, fn, words=words)


def test_check_cached_itg_mask(capsys):
    def right(q, m):
        return build_attention_mask("itg", q, m)[:, q:]

    def no_padding(q, m):
        return build_attention_mask("itg", q, torch.ones_like(m))[:, q:]

    def blind_to_queries(q, m):
        mask = right(q, m).clone()
        mask[:, :, :q] = False
        return mask

    assert run(capsys, checks.check_cached_itg_mask, right)[0]
    fails_with(capsys, checks.check_cached_itg_mask, lambda q, m: build_attention_mask("itg", q, m),
               words="text rows only")
    fails_with(capsys, checks.check_cached_itg_mask, lambda q, m: right(q, m).float(),
               words=["dtype torch.float32", "expected torch.bool"])
    fails_with(capsys, checks.check_cached_itg_mask, no_padding, words=["text row 3", "padded text columns"])
    fails_with(capsys, checks.check_cached_itg_mask, blind_to_queries, words="sees all the queries")


def test_a_result_shows_nothing_more_in_a_notebook(capsys):
    result = checks.check_answer("self_attention_params", 2_363_904)
    capsys.readouterr()
    assert result and result._ipython_display_() is None and "passed=True" in repr(result)


# --- the miniature's checkers (chapters 6 and 7) ----------------------------------------------

def test_labels_checker_passes_a_copy_and_catches_an_in_place_edit(capsys):
    from qformer_lite import miniature_checks

    ok, _ = run(capsys, miniature_checks.check_labels, lambda ids, mask: ids.masked_fill(mask == 0, -100))
    assert ok

    def in_place(ids, mask):
        ids[mask == 0] = -100
        return ids

    ok, out = run(capsys, miniature_checks.check_labels, in_place)
    assert not ok and "in place" in out


def test_negative_weights_checker(capsys):
    from qformer_lite import losses, miniature_checks

    ok, _ = run(capsys, miniature_checks.check_negative_weights, losses.negative_weights)
    assert ok
    ok, out = run(capsys, miniature_checks.check_negative_weights, lambda sim, temp: (sim / temp).softmax(dim=1))
    assert not ok and "diagonal is not 0" in out
