"""The exercise checkers: a right answer passes, each typical mistake gets its own hint."""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange
from torch import nn

from qformer_lite import checks
from qformer_lite.masks import build_attention_mask


def run(capsys, checker, *args):
    ok = checker(*args)
    out = capsys.readouterr().out
    assert out.startswith((checks.PASS, checks.FAIL)), out
    assert all(len(line) <= checks.WIDTH for line in out.splitlines()), out
    assert isinstance(ok, checks.CheckResult) and ok.message == " ".join(out.split())
    return bool(ok), ok.message


# --- answers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(checks.ANSWERS))
def test_every_answer_passes_and_a_wrong_one_gets_its_hint(capsys, key):
    expected, hint = checks.ANSWERS[key]
    ok, out = run(capsys, checks.check_answer, key, expected)
    assert ok and out.startswith(checks.PASS)
    wrong = (not expected) if isinstance(expected, bool) else ("nope" if isinstance(expected, str) else expected + 1)
    ok, out = run(capsys, checks.check_answer, key, wrong)
    assert not ok and out.startswith(checks.FAIL) and hint in out


def test_answer_placeholders_and_unknown_keys(capsys):
    assert not run(capsys, checks.check_answer, "vit_tokens_364", ...)[0]
    ok, out = run(capsys, checks.check_answer, "no_such_key", 1)
    assert not ok and "unknown exercise key" in out
    ok, out = run(capsys, checks.check_answer, "vit_tokens_364", 257)
    assert "too low" in out


def test_answers_are_the_books_numbers():
    assert checks.ANSWERS["vit_tokens_364"][0] == (364 // 14) ** 2 + 1
    assert checks.ANSWERS["self_attention_params"][0] == 4 * (768 * 768 + 768) + 2 * 768
    assert checks.ANSWERS["cross_attention_params"][0] == 2 * (768 * 768 + 768) + 2 * (1408 * 768 + 768) + 2 * 768


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


class FlatQueries(nn.Module):
    def __init__(self, num_queries, hidden_size):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_queries, hidden_size) * 0.02)

    def forward(self, batch):
        return self.weight.expand(batch, -1, -1)


class DetachedQueries(GoodQueries):
    def forward(self, batch):
        return self.weight.detach().expand(batch, -1, -1).clone().requires_grad_()


class Unwritten(nn.Module):
    def __init__(self, num_queries, hidden_size):
        raise NotImplementedError


@pytest.mark.parametrize("cls, ok, words", [
    (GoodQueries, True, "as a view"),
    (UnitQueries, False, "N(0, 0.02)"),
    (FlatQueries, False, "(1, 32, 768)"),
    (DetachedQueries, False, "gradients"),
    (Unwritten, False, "not written yet"),
])
def test_check_queries(capsys, cls, ok, words):
    got, out = run(capsys, checks.check_queries, cls)
    assert bool(got) is ok and words in out


def test_check_equivariance_test(capsys):
    def right(f, x, perm):
        return torch.allclose(f(x[:, perm]), f(x)[:, perm], atol=1e-5)

    def always(f, x, perm):
        return True

    assert run(capsys, checks.check_equivariance_test, right)[0]
    ok, out = run(capsys, checks.check_equivariance_test, always)
    assert not ok and "position embeddings" in out


# --- chapter 2 -------------------------------------------------------------------------------

def good_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def unscaled(q, k, v, mask=None):
    return (q @ k.transpose(-2, -1)).softmax(-1) @ v


def ignores_mask(q, k, v, mask=None):
    return good_attention(q, k, v)


def inverted_mask(q, k, v, mask=None):
    return good_attention(q, k, v, None if mask is None else ~mask | (torch.arange(k.shape[2]) == 0))


def wrong_axis(q, k, v, mask=None):
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-2) @ v


def no_return(q, k, v, mask=None):
    q @ k.transpose(-2, -1)


def crashes(q, k, v, mask=None):
    return q @ k  # wrong inner dimension


@pytest.mark.parametrize("fn, ok, words", [
    (good_attention, True, "with and without a mask"),
    (unscaled, False, "not scaled"),
    (ignores_mask, False, "mask is ignored"),
    (inverted_mask, False, "inverted"),
    (wrong_axis, False, "wrong axis"),
    (no_return, False, "returned None"),
    (crashes, False, "raised RuntimeError"),
])
def test_check_attention(capsys, fn, ok, words):
    got, out = run(capsys, checks.check_attention, fn)
    assert bool(got) is ok and words in out


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

    assert run(capsys, checks.check_split_heads, split, merge)[0]
    ok, out = run(capsys, checks.check_split_heads, interleaved, merge)
    assert not ok and "interleaved" in out
    ok, out = run(capsys, checks.check_split_heads, split, lambda x: x.flatten(2))
    assert not ok and "merge" in out


# --- chapter 3 -------------------------------------------------------------------------------

def good_cross(queries, image, attn):
    h = attn.num_heads
    q = rearrange(attn.query(queries), "b l (h d) -> b h l d", h=h)
    k = rearrange(attn.key(image), "b n (h d) -> b h n d", h=h)
    v = rearrange(attn.value(image), "b n (h d) -> b h n d", h=h)
    out = (q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)).softmax(-1) @ v
    return rearrange(out, "b h l d -> b l (h d)")


def full_width_scale(queries, image, attn):
    h = attn.num_heads
    q = rearrange(attn.query(queries), "b l (h d) -> b h l d", h=h)
    k = rearrange(attn.key(image), "b n (h d) -> b h n d", h=h)
    v = rearrange(attn.value(image), "b n (h d) -> b h n d", h=h)
    out = (q @ k.transpose(-2, -1) / math.sqrt(h * attn.head_dim)).softmax(-1) @ v
    return rearrange(out, "b h l d -> b l (h d)")


def test_check_cross_attention(capsys):
    assert run(capsys, checks.check_cross_attention, good_cross)[0]
    ok, out = run(capsys, checks.check_cross_attention, full_width_scale)
    assert not ok and "√D" in out
    ok, out = run(capsys, checks.check_cross_attention, lambda q, i, a: a.key(i))
    assert not ok and "(B, Q, D)" in out


# --- chapter 4 -------------------------------------------------------------------------------

def test_check_cross_layers(capsys):
    assert run(capsys, checks.check_cross_layers, lambda n, f: [i for i in range(n) if i % f == 0])[0]
    ok, out = run(capsys, checks.check_cross_layers, lambda n, f: [i for i in range(n) if (i + 1) % f == 0])
    assert not ok and "layer 0" in out


def test_check_add_norm(capsys):
    assert run(capsys, checks.check_add_norm, lambda x, r, dense, ln: ln(dense(x) + r))[0]
    ok, out = run(capsys, checks.check_add_norm, lambda x, r, dense, ln: r + ln(dense(x)))
    assert not ok and "pre-LN" in out
    ok, out = run(capsys, checks.check_add_norm, lambda x, r, dense, ln: ln(dense(x)))
    assert not ok and "residual is missing" in out


def formula(cfg):
    d, i, c = cfg.hidden_size, cfg.intermediate_size, cfg.encoder_hidden_size
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    norm = 2 * d
    self_attn = 4 * linear(d, d) + norm
    cross = 2 * linear(d, d) + 2 * linear(c, d) + norm
    ffn = linear(d, i) + linear(i, d) + norm
    n_cross = sum(cfg.has_cross_attention(k) for k in range(cfg.num_hidden_layers))
    return norm + cfg.num_hidden_layers * (self_attn + ffn) + n_cross * cross


def test_check_query_path_params(capsys):
    assert formula(checks.QFormerConfig.blip2()) == 105_137_664
    assert run(capsys, checks.check_query_path_params, formula)[0]
    ok, out = run(capsys, checks.check_query_path_params,
                  lambda cfg: formula(cfg) + cfg.num_query_tokens * cfg.hidden_size)
    assert not ok and "query tokens" in out
    ok, out = run(capsys, checks.check_query_path_params, lambda cfg: formula(cfg) - 1)
    assert not ok and "biases" in out


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


@pytest.mark.parametrize("fn, words", [
    (broken("itg", open_query_to_text), "must not peek"),
    (broken("itg", open_future), "never later ones"),
    (broken("itm", open_padding), "padded text columns"),
    (broken("itc", open_query_to_text), "unimodal"),
    (lambda mode, q, m: build_attention_mask(mode, q, m)[0], "(B, Q+T, Q+T)"),
])
def test_check_mask_hints(capsys, fn, words):
    ok, out = run(capsys, checks.check_mask, fn)
    assert not ok and words in out, out


def test_check_cached_itg_mask(capsys):
    assert run(capsys, checks.check_cached_itg_mask, lambda q, m: build_attention_mask("itg", q, m)[:, q:])[0]
    ok, out = run(capsys, checks.check_cached_itg_mask, lambda q, m: build_attention_mask("itg", q, m))
    assert not ok and "text rows only" in out


def test_a_result_shows_nothing_more_in_a_notebook(capsys):
    result = checks.check_answer("vit_tokens_364", 677)
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
