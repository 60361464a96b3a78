"""The exercise checkers: a right answer passes, each typical mistake gets its own hint."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from qformer_lite import QFormer, QFormerConfig, losses
from qformer_lite.attention import arithmetic_ratio
from qformer_lite.book import checks, set_language
from qformer_lite.masks import build_attention_mask


@pytest.fixture(autouse=True)
def _english():
    """These tests read the English messages, whatever $QFORMER_LITE_LANG says (the Japanese
    ones: tests/test_checks_ja.py)."""
    set_language("en")
    yield


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


def says(capsys, checker, answer, ok: bool, words):
    """The check passes (or fails) as ``ok`` says, and its message holds every one of ``words``."""
    got, out = run(capsys, checker, answer)
    assert got is ok, out
    for word in [words] if isinstance(words, str) else words:
        assert word in out, out


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
    from qformer_lite.queries import vit_tokens

    assert checks.ANSWERS["images_in_2048_all_tokens"][0] == 2048 // vit_tokens(364) == 3
    assert checks.ANSWERS["images_in_2048_queries"][0] == 2048 // QFormerConfig.blip2().num_query_tokens == 64
    assert checks.ANSWERS["self_attention_params"][0] == 4 * (768 * 768 + 768) + 2 * 768
    assert checks.ANSWERS["cross_attention_params"][0] == 2 * (768 * 768 + 768) + 2 * (1408 * 768 + 768) + 2 * 768
    plain, query_side = (checks.ANSWERS[f"cross_macs_{form}"][0] for form in ("plain", "query_side"))
    assert query_side == arithmetic_ratio(12, 32, 64, 257) * plain


def test_the_miniatures_answers_follow_its_config_and_load_it_only_when_asked():
    from qformer_lite.miniature.config import MiniatureConfig

    config = MiniatureConfig.default()
    assert checks.ANSWERS["itm_pairs_per_batch"][0] == 3 * config.stage1.optim.batch_size
    assert checks.ANSWERS["soft_prompt_length"][0] == config.qformer.num_query_tokens + 1
    code = "import sys, qformer_lite.book.checks; assert 'qformer_lite.miniature.config' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_public_names_are_listed_in_book_order():
    public = {n for n, v in vars(checks).items() if n.startswith("check_") and callable(v)}
    assert public <= set(checks.__all__) and all(hasattr(checks, n) for n in checks.__all__)
    source = inspect.getsource(checks)
    defined = [n for n in checks.__all__ if n.startswith("check_") and n != "check_answer"]
    assert defined == sorted(defined, key=lambda n: source.index(f"\ndef {n}(")), "__all__ follows the file"


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
        frame = checks.learners_frame(err)
    assert frame.name == "learner" and frame.lineno == line_of(learner, 'json.loads("{")')


def test_strict_mode_makes_a_failed_check_an_error(capsys, monkeypatch):
    """The book's own runs (make test, make book) set it: a solution that drifts fails them."""
    monkeypatch.setenv(checks.STRICT_ENV, "1")
    with pytest.raises(AssertionError, match="divide by 2"):
        checks.check_itc_loss(ITC_SLIPS["summed"][0])
    with pytest.raises(AssertionError, match="too low"):
        checks.check_answer("self_attention_params", 2_000_000)
    assert checks.check_itc_loss(itc_right)
    monkeypatch.setenv(checks.STRICT_ENV, "0")
    assert not checks.check_itc_loss(ITC_SLIPS["summed"][0])  # a learner's run: a hint


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
    says(capsys, checks.check_queries, cls, ok, words)


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
    says(capsys, checks.check_attention, fn, ok, words)


def test_the_inverted_mask_is_not_hinted_as_minus_inf_before_the_softmax(capsys):
    out = fails_with(capsys, checks.check_attention, inverted_mask, words="inverted")
    assert "before the softmax (not after)" not in out


def test_check_attention_accepts_output_and_probs(capsys):
    from qformer_lite import attention_from_scratch

    assert run(capsys, checks.check_attention, attention_from_scratch)[0]


def split(x, h):
    return rearrange(x, "b l (h d) -> b h l d", h=h)


def merge(x):
    return rearrange(x, "b h l d -> b l (h d)")


def interleaved(x, h):
    return rearrange(x, "b l (d h) -> b h l d", h=h)


def test_check_split_heads(capsys):

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


def good_query_side(queries, image, attn):  # the chapter's solution
    h = attn.num_heads
    heads = "(h d) c -> h d c"
    w_k = rearrange(attn.key.weight, heads, h=h)  # (H, d, C)
    w_v = rearrange(attn.value.weight, heads, h=h)  # (H, d, C)
    q = rearrange(attn.query(queries), "b q (h d) -> b h q d", h=h)
    q = q / math.sqrt(attn.head_dim)
    image = image[:, None]  # (B, 1, N, C)
    scores = (q @ w_k) @ image.transpose(-2, -1)  # (B, H, Q, N)
    out = (scores.softmax(dim=-1) @ image) @ w_v.transpose(-2, -1)  # (B, H, Q, d)
    return rearrange(out, "b h q d -> b q (h d)") + attn.value.bias


def query_side_slip(scale=None, value_bias=True, dim=-1, heads="(h d) c -> h d c", merge=True, w_v=True):
    """The query-side form with one usual slip (the keyword arguments)."""
    def fn(queries, image, attn):
        h = attn.num_heads
        q = rearrange(attn.query(queries), "b q (h d) -> b h q d", h=h)
        x = image[:, None]
        scores = (q @ rearrange(attn.key.weight, heads, h=h)) @ x.transpose(-2, -1)
        out = (scores / (scale or math.sqrt(attn.head_dim))).softmax(dim) @ x  # (B, H, Q, C)
        if w_v:
            out = out @ rearrange(attn.value.weight, heads, h=h).transpose(-2, -1)
        if not merge:
            return out
        out = rearrange(out, "b h q d -> b q (h d)")
        return out + attn.value.bias if value_bias else out
    return fn


def plain_form(queries, image, attn):  # right numbers, but the image tokens are projected
    h = attn.num_heads
    q, k, v = heads(attn.query(queries), h), heads(attn.key(image), h), heads(attn.value(image), h)
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h l d -> b l (h d)")


def test_check_query_side_attention(capsys):
    assert run(capsys, checks.check_query_side_attention, good_query_side)[0]
    assert run(capsys, checks.check_query_side_attention, query_side_slip())[0]
    slips = [
        (query_side_slip(scale=1.0), "not scaled"),
        (query_side_slip(scale=32 ** 0.5), "√D instead of √d"),
        (query_side_slip(value_bias=False), "value bias is missing"),
        (query_side_slip(dim=-2), "softmax runs over the queries"),
        (query_side_slip(heads="(d h) c -> h d c"), "interleaved"),
        (query_side_slip(merge=False), ["(2, 4, 5, 8)", "not merged"]),
        (query_side_slip(merge=False, w_v=False), ["(2, 4, 5, 24)", "W_v comes after it"]),
        (plain_form, ["projects the image tokens", "attn.key.weight"]),
        (calls_the_module, "calls the module itself"),
        (lambda queries, image, attn: good_query_side(queries, image[..., :8], attn), "raised RuntimeError"),
        (lambda queries, image, attn: good_query_side(queries, image, attn)[:, :1], "(B, Q, D)"),
    ]
    for fn, words in slips:
        fails_with(capsys, checks.check_query_side_attention, fn, words=words)


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
        assert checks.query_path_formula(cfg) == formula(cfg)
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
        return checks.query_path_formula(cfg, **flags)

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


# --- chapter 6 -------------------------------------------------------------------------------

def _ce(logits):
    return F.cross_entropy(logits, torch.arange(logits.shape[0]), label_smoothing=0.1)


def itc_right(sim, temp):
    return (_ce(sim / temp) + _ce(sim.t() / temp)) / 2


ITC_SLIPS = {
    "summed": (lambda sim, temp: _ce(sim / temp) + _ce(sim.t() / temp), "mean: divide by 2"),
    "one way": (lambda sim, temp: _ce(sim / temp), "image->text only"),
    "no temperature": (lambda sim, temp: (_ce(sim) + _ce(sim.t())) / 2, "divide the similarities by temp"),
    "times temperature": (lambda sim, temp: (_ce(sim * temp) + _ce(sim.t() * temp)) / 2, "do not multiply"),
    "no smoothing": (lambda sim, temp: losses.itc_loss(sim, temp, 0.0), "label_smoothing=0.1"),
}


def test_itc_loss_checker_passes_the_solution(capsys):
    assert run(capsys, checks.check_itc_loss, itc_right)[0]


@pytest.mark.parametrize("slip", ITC_SLIPS, ids=str)
def test_itc_loss_checker_names_each_slip(capsys, slip):
    answer, hint = ITC_SLIPS[slip]
    fails_with(capsys, checks.check_itc_loss, answer, words=hint)


def test_itc_loss_checker_reports_a_crash_as_a_hint(capsys):
    fails_with(capsys, checks.check_itc_loss, lambda sim, temp: sim @ torch.ones(3), words="raised RuntimeError")


def weights_right(sim, temp):
    w = (sim / temp).softmax(dim=1) + 1e-4
    w = w.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool), 0.0)
    return w / w.sum(dim=1, keepdim=True)


def _zeroed_after_softmax(sim, temp):
    w = (sim / temp).softmax(dim=1)
    w.fill_diagonal_(0)
    return w


def _lavis_as_written(sim, temp):
    w = (sim / temp).softmax(dim=1) + 1e-4
    w.fill_diagonal_(0)
    return w


def _masked_softmax(sim, temp):
    eye = torch.eye(sim.shape[0], dtype=torch.bool)
    return (sim / temp).masked_fill(eye, float("-inf")).softmax(dim=1)


WEIGHT_SLIPS = {
    "zeroed after the softmax, rows not renormalised": (_zeroed_after_softmax, "divide each row by its sum"),
    "no floor (LAVIS's main branch)": (_masked_softmax, "Add 1e-4"),
    "positive kept": (lambda sim, temp: (sim / temp).softmax(dim=1), "diagonal is not 0"),
    "LAVIS's lines as they are (multinomial renormalises)": (_lavis_as_written, "torch.multinomial would do it"),
    "something else": (lambda sim, temp: weights_right(sim * 2, temp), "differ from LAVIS's"),
    "no temperature": (lambda sim, temp: weights_right(sim, 1.0), "divide the similarities by temp"),
    "softmax over columns": (lambda sim, temp: weights_right(sim.t(), temp).t(), "softmax over dim=1"),
}


def test_negative_weights_checker_passes_the_solution_and_the_library(capsys):
    for answer in (weights_right, losses.negative_weights):
        assert run(capsys, checks.check_negative_weights, answer)[0]


@pytest.mark.parametrize("slip", WEIGHT_SLIPS, ids=str)
def test_negative_weights_checker_names_each_slip(capsys, slip):
    answer, hint = WEIGHT_SLIPS[slip]
    fails_with(capsys, checks.check_negative_weights, answer, words=hint)


# --- chapter 7 -------------------------------------------------------------------------------

def encoder_inputs_right(prefix, prompt_embeds, prompt_mask):
    ones = torch.ones(prefix.shape[:2], dtype=prompt_mask.dtype)
    return torch.cat([prefix, prompt_embeds], dim=1), torch.cat([ones, prompt_mask], dim=1)


ENCODER_SLIPS = {
    "prompt first": (lambda p, e, m: (torch.cat([e, p], 1), torch.cat([m, torch.ones(2, 4, dtype=m.dtype)], 1)),
                     "the prompt comes first"),
    "wrong axis": (lambda p, e, m: (torch.cat([p, e], 2), m), "raised RuntimeError"),
    "queries masked out": (lambda p, e, m: (torch.cat([p, e], 1), torch.cat([torch.zeros(2, 4, dtype=m.dtype), m], 1)),
                           "every query is real"),
    "prompt mask only": (lambda p, e, m: (torch.cat([p, e], 1), m), "attention_mask must have shape (B, Q + T)"),
    "one thing returned": (lambda p, e, m: torch.cat([p, e], 1), "return two things"),
}


def test_encoder_inputs_checker(capsys):
    assert run(capsys, checks.check_encoder_inputs, encoder_inputs_right)[0]
    for answer, hint in ENCODER_SLIPS.values():
        fails_with(capsys, checks.check_encoder_inputs, answer, words=hint)


def test_labels_checker_passes_a_copy_and_catches_an_in_place_edit(capsys):
    assert run(capsys, checks.check_labels, lambda ids, mask: ids.masked_fill(mask == 0, -100))[0]

    def in_place(ids, mask):
        ids[mask == 0] = -100
        return ids

    fails_with(capsys, checks.check_labels, in_place, words="in place")


# --- chapter 8 -------------------------------------------------------------------------------

def placeholder_ids_right(prompt_ids, prompt_mask, num_queries, image_token_id):
    holders = torch.full((prompt_ids.shape[0], num_queries), image_token_id)
    return torch.cat([holders, prompt_ids], 1), torch.cat([torch.ones_like(holders), prompt_mask], 1)


def test_placeholder_ids_checker(capsys):
    assert run(capsys, checks.check_placeholder_ids, placeholder_ids_right)[0]

    def after(ids, mask, q, tok):
        return tuple(t.roll(-q, dims=1) for t in placeholder_ids_right(ids, mask, q, tok))

    def masked_out(ids, mask, q, tok):
        return placeholder_ids_right(ids, mask, q, tok)[0], torch.cat([torch.zeros(2, q, dtype=torch.long), mask], 1)

    fails_with(capsys, checks.check_placeholder_ids, after, words="the placeholders are after the prompt")
    fails_with(capsys, checks.check_placeholder_ids, lambda ids, mask, q, tok: placeholder_ids_right(ids, mask, 1, tok),
               words="one placeholder per query")
    fails_with(capsys, checks.check_placeholder_ids, masked_out, words="the placeholders are real inputs")


def test_precision_guard_checker(capsys):
    def safe(lm):
        return all(p.dtype != torch.float16 for n, p in lm.named_parameters() if n.endswith(".wo.weight"))

    def one_layer_only(lm):  # looks at the encoder's first wo, not at every one
        return lm.encoder.block[0].layer[-1].DenseReluDense.wo.weight.dtype != torch.float16

    assert run(capsys, checks.check_precision_guard, safe)[0]
    fails_with(capsys, checks.check_precision_guard, lambda lm: all(p.dtype != torch.float16 for p in lm.parameters()),
               words="only the feed-forward output layers matter")
    fails_with(capsys, checks.check_precision_guard, one_layer_only, words="'.wo.weight'")


def test_every_checker_is_tested_with_a_right_and_a_wrong_answer():
    """A new chapter's checker comes with both: its solution passes, a usual mistake gets its hint."""
    import re
    from pathlib import Path

    source = Path(__file__).read_text()
    for name in checks.__all__:
        if name.startswith("check_"):
            assert re.search(rf"(run|says)\(capsys, checks\.{name}\b", source), f"no answer of {name} passes here"
            assert re.search(rf"(fails_with|says)\(capsys, checks\.{name}\b", source), f"no mistake is shown to {name}"


def test_a_checker_leaves_the_learners_random_state_alone(capsys):
    from qformer_lite.attention import attention_from_scratch

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    checks.check_attention(lambda q, k, v, mask=None: attention_from_scratch(q, k, v, mask)[0])
    capsys.readouterr()
    assert torch.equal(torch.rand(3), expected)


# --- chapter 9 -------------------------------------------------------------------------------

def _pool(image_embeds, side, order="b c h w -> b (h w) c", skip_cls=True):
    patches = image_embeds[:, 1:] if skip_cls else image_embeds[:, :-1]
    grid = rearrange(patches, "b (h w) c -> b c h w", h=math.isqrt(patches.shape[1]))
    return rearrange(F.adaptive_avg_pool2d(grid, side), order)


def test_pooled_tokens_pass_and_each_mistake_gets_its_hint(capsys):
    assert run(capsys, checks.check_pooled_tokens, _pool)[0]
    fails_with(capsys, checks.check_pooled_tokens, lambda x, s: _pool(x, s, skip_cls=False), words="[CLS]")
    fails_with(capsys, checks.check_pooled_tokens, lambda x, s: _pool(x, s, "b c h w -> b (w h) c"),
               words="row by row")
    fails_with(capsys, checks.check_pooled_tokens, lambda x, s: _pool(x, s)[:, :4], words="(B, side², C)")
    fails_with(capsys, checks.check_pooled_tokens, lambda x, s: _pool(x, s) * 2, words="channels first")

    def fixed_kernel(x, side):  # right only where side divides the grid
        n = math.isqrt(x.shape[1] - 1)
        grid = rearrange(x[:, 1:], "b (h w) c -> b c h w", h=n)
        return rearrange(F.avg_pool2d(grid, n // side), "b c h w -> b (h w) c")

    fails_with(capsys, checks.check_pooled_tokens, fixed_kernel, words="does not divide")


def _perceiver(attn, x, latents, media_mask, how="fill", latents_masked=False):
    x, latents = attn.norm_media(x), attn.norm_latents(latents)
    q = rearrange(attn.to_q(latents), "b m (h d) -> b h m d", h=attn.heads)
    kv = attn.to_kv(torch.cat([x, latents], dim=1))
    k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in kv.chunk(2, dim=-1))
    scores = q @ k.transpose(-2, -1) * attn.scale  # (B, H, M, N + M)
    ones = torch.ones(latents.shape[:2], dtype=media_mask.dtype)
    keep = torch.cat([media_mask, 0 * ones if latents_masked else ones], dim=1)[:, None, None, :].bool()
    if how == "none":
        probs = scores.softmax(dim=-1)
    elif how == "multiply":
        probs = (scores * keep).softmax(dim=-1)
    elif how == "after":
        probs = scores.softmax(dim=-1) * keep
    else:
        probs = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1)
    return attn.to_out(rearrange(probs @ v, "b h m d -> b m (h d)"))


def test_masked_perceiver_attention_passes_and_each_mistake_gets_its_hint(capsys):
    assert run(capsys, checks.check_masked_perceiver_attention, _perceiver)[0]
    fails_with(capsys, checks.check_masked_perceiver_attention,
               lambda a, x, lat, m: _perceiver(a, x, lat, m, how="none"), words="still gets weight")
    fails_with(capsys, checks.check_masked_perceiver_attention,
               lambda a, x, lat, m: a(x, lat), words="still gets weight")
    fails_with(capsys, checks.check_masked_perceiver_attention,
               lambda a, x, lat, m: _perceiver(a, x, lat, m, how="multiply"), words="multiplied")
    fails_with(capsys, checks.check_masked_perceiver_attention,
               lambda a, x, lat, m: _perceiver(a, x, lat, m, how="after"), words="after the softmax")
    fails_with(capsys, checks.check_masked_perceiver_attention,
               lambda a, x, lat, m: _perceiver(a, x, lat, m, latents_masked=True),
               words="latents' own keys")
    fails_with(capsys, checks.check_masked_perceiver_attention,
               lambda a, x, lat, m: lat + _perceiver(a, x, lat, m), words="differs")

    def first_tokens(a, x, lat, m):  # right only where the padding comes last
        return torch.cat([a(x[b:b + 1, :int(m[b].sum())], lat[b:b + 1]) for b in range(len(x))])

    fails_with(capsys, checks.check_masked_perceiver_attention, first_tokens, words="differs")
    fails_with(capsys, checks.check_masked_perceiver_attention,
               lambda a, x, lat, m: x, words="(B, M, C)")


def test_the_chapter_9_answers_follow_the_library():
    from qformer_lite.miniature.compare import connector_world, t5_encoder_macs
    from qformer_lite.miniature.standins import CaptionTokenizer, build_t5

    world = connector_world()
    t5 = build_t5(world.language, CaptionTokenizer())
    assert checks.ANSWERS["linear_prompt_length"][0] == world.vision.num_patches + 1
    assert checks.ANSWERS["t5_encoder_macs_pooled_25"][0] == t5_encoder_macs(t5.config, 26)


# --- chapter 10 ------------------------------------------------------------------------------

def _left_pad(embeds, mask):
    order = torch.sort(mask, dim=1, stable=True).indices
    return embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1])), mask.gather(1, order)


def test_left_padding_passes_and_each_mistake_gets_its_hint(capsys):
    assert run(capsys, checks.check_left_padding, _left_pad)[0]
    fails_with(capsys, checks.check_left_padding, lambda e, m: (_left_pad(e, m)[0], m), words="mask stayed")
    fails_with(capsys, checks.check_left_padding, lambda e, m: (e.flip(1), m.flip(1)), words="reversed")

    def rolled(e, m):  # padding first, but each row's last real token moved to the front of the real ones
        e, m = _left_pad(e, m)
        rows = [torch.cat([r[:n_pad], r[n_pad:].roll(1, dims=0)]) for r, n_pad in zip(e, (m == 0).sum(1))]
        return torch.stack(rows), m

    fails_with(capsys, checks.check_left_padding, rolled, words="own order")
    zeroed = lambda e, m: (_left_pad(e, m)[0] * _left_pad(e, m)[1][..., None], _left_pad(e, m)[1])  # noqa: E731
    assert run(capsys, checks.check_left_padding, zeroed)[0]  # whatever sits at the padding is masked out
    fails_with(capsys, checks.check_left_padding, lambda e, m: e, words="two tensors")


def _labels(ids, mask, prompt_length, num_queries, queries=True, prompt=True, pad=True, shift=False):
    text = ids.clone()
    if pad:
        text = text.masked_fill(mask == 0, -100)
    if prompt:
        text[:, :prompt_length] = -100
    if shift:
        text = torch.cat([text[:, 1:], torch.full_like(text[:, :1], -100)], dim=1)
    if not queries:
        return text
    return torch.cat([torch.full((ids.shape[0], num_queries), -100), text], dim=1)


def test_decoder_labels_pass_and_each_mistake_gets_its_hint(capsys):
    assert run(capsys, checks.check_decoder_labels, _labels)[0]
    fails_with(capsys, checks.check_decoder_labels, lambda *a: _labels(*a, queries=False), words="block of Q")
    fails_with(capsys, checks.check_decoder_labels, lambda *a: _labels(*a, prompt=False), words="prompt are targets")
    fails_with(capsys, checks.check_decoder_labels, lambda *a: _labels(*a, pad=False), words="padding is a target")
    fails_with(capsys, checks.check_decoder_labels, lambda *a: _labels(*a, shift=True), words="shifted")

    def in_place(ids, mask, prompt_length, num_queries):
        ids[:, :prompt_length] = -100
        return _labels(ids, mask, prompt_length, num_queries)

    fails_with(capsys, checks.check_decoder_labels, in_place, words="in place")


def test_the_chapter_10_answers_follow_the_library():
    from qformer_lite.miniature.config import MiniatureConfig
    from qformer_lite.miniature.standins import chat_text, chat_tokenizer

    tok = chat_tokenizer()
    ids, _ = tok.opt_prompt([chat_text("<ImageHere>")])
    q = MiniatureConfig.default().qformer.num_query_tokens
    assert checks.ANSWERS["chat_positions"][0] == ids.shape[1] - 1 + q  # the placeholder gives way to Q vectors
    assert checks.ANSWERS["minigpt4_13b_proj_params"][0] == sum(
        p.numel() for p in torch.nn.Linear(768, 5120).parameters())


# --- chapter 11 ------------------------------------------------------------------------------

def _read_batch(qformer, image_embeds, instructions, side="right", masked=True, mode="itm"):
    longest = max(len(ids) for ids in instructions)
    pads = [ids.new_zeros(longest - len(ids)) for ids in instructions]
    ids = torch.stack([torch.cat([i, p] if side == "right" else [p, i]) for i, p in zip(instructions, pads)])
    mask = (ids != 0).long() if masked else torch.ones_like(ids)
    return qformer(image_embeds, ids, mask, mode=mode).query_output


def test_instruction_batch_passes_and_each_mistake_gets_its_hint(capsys):
    assert run(capsys, checks.check_instruction_batch, _read_batch)[0]
    for mode in ("itc", "itg"):
        fails_with(capsys, checks.check_instruction_batch, lambda q, x, i: _read_batch(q, x, i, mode=mode),
                   words="did not read the instruction")
    fails_with(capsys, checks.check_instruction_batch, lambda q, x, i: q(x).query_output,
               words="did not read the instruction")
    fails_with(capsys, checks.check_instruction_batch, lambda q, x, i: _read_batch(q, x, i, masked=False),
               words="read the padding")
    fails_with(capsys, checks.check_instruction_batch, lambda q, x, i: _read_batch(q, x, i, side="left"),
               words="on the left")
    fails_with(capsys, checks.check_instruction_batch,
               lambda q, x, i: _read_batch(q, x, i) + 1, words="differ")
    fails_with(capsys, checks.check_instruction_batch,
               lambda q, x, i: q(x, torch.nn.utils.rnn.pad_sequence(i, batch_first=True), mode="itm").last_hidden_state,
               words="only the queries")


def test_the_chapter_11_answers_follow_the_library():
    """InstructBLIP's instruction lengthens the Q-Former's sequence, not what the language model reads."""
    from qformer_lite.instructblip import instruction_queries

    config = QFormerConfig.tiny()
    qformer = QFormer(config).eval()
    image, ids = torch.randn(1, 5, config.encoder_hidden_size), torch.randint(1, 100, (1, 12))
    with torch.no_grad():
        read = instruction_queries(qformer, image, ids, torch.ones_like(ids))
        blind = qformer(image)
    grown = read.last_hidden_state.shape[1] - blind.last_hidden_state.shape[1]
    assert grown == checks.ANSWERS["instructblip_extra_qformer_positions"][0] == 12
    handed_on = read.query_output.shape[1] - blind.query_output.shape[1]  # the soft prompt's length
    assert handed_on == checks.ANSWERS["instructblip_extra_t5_positions"][0] == 0


# --- chapter 12 ------------------------------------------------------------------------------

def _with_positions(x, table):
    b, f, q, d = x.shape
    return (x + table(torch.arange(f))[None, :, None, :]).reshape(b, f * q, d)


def test_frame_positions_pass_and_each_mistake_gets_its_hint(capsys):
    from qformer_lite.video import VideoQFormer, video_qformer_config

    assert run(capsys, checks.check_frame_positions, _with_positions)[0]
    # the checker's answer is what the library's VideoQFormer hands its Q-Former
    vq = VideoQFormer(video_qformer_config(encoder_hidden_size=8, hidden_size=16, num_attention_heads=2,
                                           intermediate_size=32, num_query_tokens=3)).eval()
    seen = []
    vq.qformer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(2, 3, 4, 8)
    with torch.no_grad():
        vq(x)
    torch.testing.assert_close(seen[0], _with_positions(x, vq.video_frame_position_embedding))
    fails_with(capsys, checks.check_frame_positions, lambda x, t: x + t(torch.arange(x.shape[1]))[None, :, None],
               words="still (B, F, Q, D)")
    fails_with(capsys, checks.check_frame_positions, lambda x, t: x.flatten(1, 2), words="no position was added")
    fails_with(capsys, checks.check_frame_positions,
               lambda x, t: (x + t(torch.arange(x.shape[2]))[None, None]).flatten(1, 2), words="per query")
    fails_with(capsys, checks.check_frame_positions,
               lambda x, t: (x + t(torch.arange(x.shape[1]))[None, :, None]).transpose(1, 2).flatten(1, 2),
               words="query after query")
    fails_with(capsys, checks.check_frame_positions,
               lambda x, t: (x + t(torch.arange(1, x.shape[1] + 1))[None, :, None]).flatten(1, 2),
               words="next row")
    fails_with(capsys, checks.check_frame_positions,
               lambda x, t: (x + 2 * t(torch.arange(x.shape[1]))[None, :, None]).flatten(1, 2),
               words="values differ")
