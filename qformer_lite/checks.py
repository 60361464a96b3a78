"""Checkers for the book's exercises.

Each ``check_*`` runs the learner's answer against ``qformer_lite`` on small random inputs,
prints one clear message (a pass, or what is wrong and a hint), and returns a ``CheckResult``
that is true when the answer passed.
They never raise: an exception inside the learner's code is reported as a hint.
"""

from __future__ import annotations

import math
import textwrap
import traceback
from typing import Any, Callable

import torch
from einops import rearrange
from torch import nn

from .attention import MultiHeadAttention, attention_from_scratch
from .config import QFormerConfig
from .masks import MODES, build_attention_mask

PASS = "✓ Correct"
FAIL = "✗ Not yet"
WIDTH = 78  # printed lines wrap here, so that they fit a notebook or a book page

# Numeric and short answers: key -> (expected, hint when wrong).
ANSWERS: dict[str, tuple[Any, str]] = {
    "vit_tokens_364": (
        677,
        "ViT-g/14 cuts a 364-px image into (364 // 14)² patches of 14 px, and adds one [CLS] token.",
    ),
    "llm_tokens_queries_364": (
        32,
        "The Q-Former always hands the LLM num_query_tokens vectors, whatever the image size.",
    ),
    "self_attention_params": (
        2_363_904,
        "Count query, key, value and the output dense: four Linear(768, 768) with biases, "
        "then one LayerNorm(768) with a weight and a bias.",
    ),
    "cross_attention_params": (
        3_346_944,
        "The query projection is Linear(768, 768), but key and value read the 1408-wide image "
        "features: Linear(1408, 768). Add the output dense (768, 768) and its LayerNorm.",
    ),
    "text_sees_image_in_one_layer": (
        False,
        "In a layer, self-attention runs before cross-attention: the text reads the queries "
        "before they have read the image. Only the next layer passes image content on.",
    ),
    "instructblip_mask": (
        "itm",
        "The instruction and the queries must read each other both ways, with no causality.",
    ),
}


class CheckResult:
    """What a checker returns: true when the answer passed. It shows nothing in a notebook
    (the checker has already printed its line)."""

    def __init__(self, passed: bool, message: str):
        self.passed = passed
        self.message = message

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"CheckResult(passed={self.passed})"

    def _ipython_display_(self) -> None:
        pass


def _say(ok: bool, message: str) -> CheckResult:
    line = f"{PASS}: {message}" if ok else f"{FAIL}: {message}"
    print(textwrap.fill(line, width=WIDTH, subsequent_indent="  ", break_on_hyphens=False))
    return CheckResult(ok, line)


def _raised(name: str, err: BaseException) -> CheckResult:
    last = traceback.extract_tb(err.__traceback__)[-1]
    return _say(False, f"{name} raised {type(err).__name__}: {err} (line {last.lineno}). Hint: run it on "
                       f"a small input and print the shapes step by step.")


def _call(name: str, fn: Callable, *args):
    """Run the learner's function; return (failure or None, result)."""
    try:
        return None, fn(*args)
    except NotImplementedError:
        return _say(False, f"{name} is not written yet (it raises NotImplementedError)."), None
    except Exception as err:  # any mistake in the learner's code becomes a hint
        return _raised(name, err), None


def _first(result):
    """Accept either a tensor or a tuple whose first item is the tensor."""
    return result[0] if isinstance(result, (tuple, list)) else result


def _same_shape(name: str, got, expected: torch.Tensor, what: str):
    if got is None:
        return _say(False, f"{name} returned None. Hint: end the function with `return ...`.")
    if not isinstance(got, torch.Tensor):
        return _say(False, f"{name} returned a {type(got).__name__}; expected a tensor of shape {what}.")
    if tuple(got.shape) != tuple(expected.shape):
        return _say(False, f"{name} returned shape {tuple(got.shape)}; expected {tuple(expected.shape)} = {what}.")
    return None


def check_answer(key: str, value: Any, answers: dict[str, tuple[Any, str]] | None = None) -> CheckResult:
    """Compare a short answer (a number, a bool or a word) with the book's (``answers``:
    key -> (expected, hint); by default the chapters' ``ANSWERS``)."""
    answers = ANSWERS if answers is None else answers
    if key not in answers:
        return _say(False, f"unknown exercise key {key!r}; known: {', '.join(sorted(answers))}")
    expected, hint = answers[key]
    if value is None or value is ...:
        return _say(False, f"no answer yet for {key!r}. Replace the ... with your value.")
    if isinstance(expected, str):
        ok = isinstance(value, str) and value.strip().lower() == expected
    elif isinstance(expected, bool):
        ok = isinstance(value, (bool, int)) and bool(value) == expected and not isinstance(value, float)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == expected
    if ok:
        return _say(True, f"{key} = {value!r}.")
    if isinstance(expected, int) and not isinstance(expected, bool) and isinstance(value, (int, float)):
        direction = "too high" if value > expected else "too low"
        return _say(False, f"{value:,} is {direction} for {key}. Hint: {hint}")
    return _say(False, f"{value!r} is not the answer for {key}. Hint: {hint}")


# --- chapter 1 -------------------------------------------------------------------------------

def check_queries(cls: Callable[[int, int], nn.Module]) -> CheckResult:
    """``cls(num_queries, hidden_size)`` must build a module whose only parameter is a (1, Q, D)
    tensor drawn from N(0, 0.02), and whose ``forward(batch)`` returns it expanded to (B, Q, D)."""
    name = getattr(cls, "__name__", "your class")
    torch.manual_seed(0)
    failed, module = _call(name, cls, 32, 768)
    if failed is not None:
        return failed
    if not isinstance(module, nn.Module):
        return _say(False, f"{name}(32, 768) is a {type(module).__name__}, not an nn.Module.")
    params = list(module.parameters())
    if len(params) != 1:
        return _say(False, f"{name} holds {len(params)} parameters; the queries are one nn.Parameter "
                           f"of shape (1, Q, D).")
    weight = params[0]
    if tuple(weight.shape) != (1, 32, 768):
        return _say(False, f"the parameter has shape {tuple(weight.shape)}; expected (1, 32, 768) = (1, Q, D). "
                           f"Hint: the leading 1 lets one set of queries serve every image in a batch.")
    std, mean = float(weight.detach().std()), float(weight.detach().mean())
    if not (0.018 < std < 0.022 and abs(mean) < 0.002):
        return _say(False, f"the queries have mean {mean:.3f} and std {std:.3f}; LAVIS draws them from "
                           f"N(0, 0.02). Hint: nn.init.normal_(weight, mean=0.0, std=0.02).")
    failed, out = _call(f"{name}.forward", module, 3)
    if failed is None:
        failed = _same_shape(f"{name}(3)", out, torch.empty(3, 32, 768), "(B, Q, D)")
    if failed is not None:
        return failed
    if not all(torch.equal(out[b], weight[0]) for b in range(3)):
        return _say(False, "every image in the batch must get the same queries: out[b] == weight[0].")
    out.sum().backward()
    if weight.grad is None or not torch.allclose(weight.grad, torch.full_like(weight, 3.0)):
        return _say(False, "the batch's gradients do not reach the parameter (or not all of them). "
                           "Hint: weight.expand(batch, -1, -1) keeps the graph and copies nothing.")
    shares = out.data_ptr() == weight.data_ptr()
    return _say(True, "one (1, Q, D) parameter, N(0, 0.02), shared by the batch"
                      + (" as a view (no copy)." if shares else "; tip: .expand() would avoid a copy."))


def check_equivariance_test(fn: Callable) -> CheckResult:
    """``fn(f, x, perm)`` must return True when ``f(x[:, perm])`` equals ``f(x)[:, perm]``."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    w = torch.randn(8, 8)
    pos = torch.randn(1, 6, 8)

    def mixing(t):  # self-attention with no positions: permutation-equivariant
        return torch.softmax(t @ t.transpose(1, 2) / math.sqrt(8), dim=-1) @ (t @ w)

    def with_positions(t):  # the same after adding a position embedding: not equivariant
        return mixing(t + pos)

    def pooled(t):  # a mean over positions, broadcast back: equivariant
        return t.mean(dim=1, keepdim=True).expand_as(t) + t

    cases = [(mixing, True, "self-attention without positions"), (pooled, True, "a per-token map plus a mean"),
             (with_positions, False, "self-attention after adding position embeddings")]
    for f, expected, label in cases:
        failed, got = _call(getattr(fn, "__name__", "your function"), fn, f, x, perm)
        if failed is not None:
            return failed
        if not isinstance(got, (bool, torch.Tensor)) or bool(got) != expected:
            return _say(False, f"for {label} your test says {got!r}; it should say {expected}. "
                               f"Hint: compare f(x[:, perm]) with f(x)[:, perm] using torch.allclose.")
    return _say(True, "your test tells order-free maps from maps that use positions.")


# --- chapter 2 -------------------------------------------------------------------------------

def check_attention(fn: Callable) -> CheckResult:
    """``fn(q, k, v, mask=None)`` must equal softmax(q kᵀ / √d) v, with a bool mask (True = may attend).
    It may return the output alone or (output, probabilities)."""
    name = getattr(fn, "__name__", "your function")
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = torch.rand(2, 1, 5, 7) > 0.4
    mask[..., 0] = True  # every row sees at least one key
    expected, _ = attention_from_scratch(q, k, v)
    failed, got = _call(name, fn, q, k, v)
    if failed is not None:
        return failed
    got = _first(got)
    failed = _same_shape(name, got, expected, "(B, H, L_q, d)")
    if failed is not None:
        return failed
    if not torch.allclose(got, expected, atol=1e-5):
        unscaled = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        wrong_dim = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-2) @ v
        if torch.allclose(got, unscaled, atol=1e-5):
            return _say(False, "the scores are not scaled. Hint: divide q @ kᵀ by √d, d = q.shape[-1].")
        if torch.allclose(got, wrong_dim, atol=1e-5):
            return _say(False, "the softmax runs over the wrong axis. Hint: each row (one query) is a "
                               "distribution over the keys: softmax(dim=-1).")
        return _say(False, f"the output differs from softmax(q kᵀ / √d) v by up to "
                           f"{float((got - expected).abs().max()):.3g}.")
    failed, got = _call(name, fn, q, k, v, mask)
    if failed is not None:
        return failed
    got = _first(got)
    expected_masked, _ = attention_from_scratch(q, k, v, mask)
    failed = _same_shape(name, got, expected_masked, "(B, H, L_q, d)")
    if failed is not None:
        return failed
    if not torch.allclose(got, expected_masked, atol=1e-5):
        inverted, _ = attention_from_scratch(q, k, v, ~mask | (torch.arange(7) == 0))
        if torch.allclose(got, expected, atol=1e-5):
            return _say(False, "the mask is ignored. Hint: scores.masked_fill(~mask, float('-inf')) "
                               "before the softmax.")
        if torch.allclose(got, inverted, atol=1e-4):
            return _say(False, "the mask is inverted: True means the key MAY be attended to.")
        return _say(False, "with a mask, the output differs. Hint: hidden keys get -inf before the softmax "
                           "(not after), so the visible ones still sum to 1.")
    return _say(True, "scaled dot-product attention, with and without a mask.")


def check_split_heads(split: Callable, merge: Callable, num_heads: int = 4) -> CheckResult:
    """``split(x, h)``: (B, L, h·d) -> (B, h, L, d); ``merge(x)``: back to (B, L, h·d)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    expected = rearrange(x, "b l (h d) -> b h l d", h=num_heads)
    failed, got = _call(getattr(split, "__name__", "split"), split, x, num_heads)
    if failed is None:
        failed = _same_shape("split", got, expected, "(B, H, L, d)")
    if failed is not None:
        return failed
    if not torch.equal(got, expected):
        if torch.equal(got, rearrange(x, "b l (d h) -> b h l d", h=num_heads)):
            return _say(False, "the heads are interleaved. Hint: head h owns the contiguous slice "
                               "x[..., h*d:(h+1)*d], so the pattern is '(h d)', not '(d h)'.")
        return _say(False, "split puts the wrong numbers in the heads. Hint: "
                           "rearrange(x, 'b l (h d) -> b h l d', h=num_heads).")
    failed, back = _call(getattr(merge, "__name__", "merge"), merge, expected)
    if failed is None:
        failed = _same_shape("merge", back, x, "(B, L, H·d)")
    if failed is not None:
        return failed
    if not torch.equal(back, x):
        return _say(False, "merge(split(x)) is not x. Hint: rearrange(x, 'b h l d -> b l (h d)').")
    return _say(True, "split and merge are exact inverses, with head h owning channels h·d to (h+1)·d.")


# --- chapter 3 -------------------------------------------------------------------------------

def check_cross_attention(fn: Callable) -> CheckResult:
    """``fn(queries, image, attn)`` must compute ``attn``'s cross-attention by hand: queries
    (B, Q, D) read image tokens (B, N, C) through ``attn.query``, ``attn.key``, ``attn.value``."""
    name = getattr(fn, "__name__", "your function")
    torch.manual_seed(0)
    attn = MultiHeadAttention(hidden_size=32, num_heads=4, context_size=24).eval()
    queries, image = torch.randn(2, 5, 32), torch.randn(2, 9, 24)
    with torch.no_grad():
        expected, _, _ = attn(queries, image)
        failed, got = _call(name, fn, queries, image, attn)
    if failed is not None:
        return failed
    got = _first(got)
    failed = _same_shape(name, got, expected, "(B, Q, D)")
    if failed is not None:
        return failed
    if not torch.allclose(got, expected, atol=1e-5):
        with torch.no_grad():
            q = rearrange(attn.query(queries), "b l (h d) -> b h l d", h=4)
            k = rearrange(attn.key(image), "b n (h d) -> b h n d", h=4)
            v = rearrange(attn.value(image), "b n (h d) -> b h n d", h=4)
            wrong_scale = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(32), -1) @ v
        if torch.allclose(got, rearrange(wrong_scale, "b h l d -> b l (h d)"), atol=1e-5):
            return _say(False, "scaled by √D instead of √d. Hint: each head scales by its own width, "
                               "attn.head_dim.")
        return _say(False, "the output differs from the module's. Hint: q from the queries, k and v "
                           "from the image; split heads; softmax over the image tokens; merge heads.")
    return _say(True, "queries read the image: Q rows, N image tokens per head.")


# --- chapter 4 -------------------------------------------------------------------------------

def check_cross_layers(fn: Callable) -> CheckResult:
    """``fn(num_layers, frequency)`` must list the layers that hold cross-attention."""
    name = getattr(fn, "__name__", "your function")
    for layers, freq in ((12, 2), (6, 1), (4, 3), (5, 2)):
        expected = [i for i in range(layers) if i % freq == 0]
        failed, got = _call(name, fn, layers, freq)
        if failed is not None:
            return failed
        if got is None:
            return _say(False, f"{name} returned None. Hint: end the function with `return ...`.")
        if list(got) != expected:
            hint = ("BLIP-2 starts counting at layer 0: layer_index % frequency == 0"
                    if list(got) == [i for i in range(layers) if (i + 1) % freq == 0] else
                    "a layer i holds cross-attention when i % frequency == 0")
            return _say(False, f"{name}({layers}, {freq}) = {list(got)}; expected {expected}. Hint: {hint}.")
    return _say(True, "cross-attention in layers 0, f, 2f, ...: six of BLIP-2's twelve.")


def check_add_norm(fn: Callable) -> CheckResult:
    """``fn(x, residual, dense, layer_norm)`` must be BERT's post-LN step (dropout left out)."""
    name = getattr(fn, "__name__", "your function")
    torch.manual_seed(0)
    dense, norm = nn.Linear(16, 8), nn.LayerNorm(8)
    nn.init.normal_(norm.weight, 1.0, 0.3)
    nn.init.normal_(norm.bias, 0.0, 0.3)
    x, residual = torch.randn(2, 3, 16), torch.randn(2, 3, 8)
    with torch.no_grad():
        expected = norm(dense(x) + residual)
        failed, got = _call(name, fn, x, residual, dense, norm)
    if failed is None:
        failed = _same_shape(name, got, expected, "(B, L, D)")
    if failed is not None:
        return failed
    if not torch.allclose(got, expected, atol=1e-5):
        with torch.no_grad():
            no_residual = norm(dense(x))
            pre_ln = residual + norm(dense(x))
        if torch.allclose(got, no_residual, atol=1e-5):
            return _say(False, "the residual is missing. Hint: add it before the LayerNorm.")
        if torch.allclose(got, pre_ln, atol=1e-5):
            return _say(False, "the LayerNorm is applied before the sum (the pre-LN style of GPT-2). "
                               "BERT and the Q-Former normalise after it: LayerNorm(dense(x) + residual).")
        return _say(False, "the result differs from LayerNorm(dense(x) + residual).")
    return _say(True, "post-LN: LayerNorm(dense(x) + residual), as in BERT.")


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_query_path_params(fn: Callable) -> CheckResult:
    """``fn(config)`` must count the query path: the embedding LayerNorm and, in every layer,
    self-attention, the query FFN and (where present) cross-attention. No text parts, no queries."""
    from .qformer import QFormer

    name = getattr(fn, "__name__", "your function")
    configs = [QFormerConfig.blip2(), QFormerConfig.tiny(), QFormerConfig.tiny(cross_attention_frequency=3),
               QFormerConfig.tiny(num_hidden_layers=5, encoder_hidden_size=40)]
    for cfg in configs:
        with torch.device("meta"):
            model = QFormer(QFormerConfig(**{**cfg.to_dict(), "use_qformer_text_input": False}))
        expected = _count(model) - _count(model.query_tokens)
        failed, got = _call(name, fn, cfg)
        if failed is not None:
            return failed
        if got != expected:
            label = "BLIP-2's config" if cfg == configs[0] else (
                f"a config with {cfg.num_hidden_layers} layers, frequency {cfg.cross_attention_frequency}, "
                f"hidden {cfg.hidden_size}, image width {cfg.encoder_hidden_size}")
            if isinstance(got, (int, float)) and got == expected + _count(model.query_tokens):
                hint = "leave the query tokens out: they are counted separately."
            elif isinstance(got, (int, float)) and got > expected:
                hint = ("too many: the text FFN and the text embeddings are not on the query path, and "
                        "only layers with i % frequency == 0 hold cross-attention.")
            else:
                hint = ("remember the biases and the LayerNorms (a weight and a bias each), and that "
                        "cross-attention keys and values take encoder_hidden_size inputs.")
            shown = f"{got:,}" if isinstance(got, (int, float)) and not isinstance(got, bool) else repr(got)
            return _say(False, f"for {label} you count {shown}; expected {expected:,}. Hint: {hint}")
    return _say(True, "your formula gives 105,137,664 for BLIP-2 and matches smaller configs too.")


# --- chapter 5 -------------------------------------------------------------------------------

def _block(i: int, j: int, q: int) -> str:
    return f"{'query' if i < q else 'text'} → {'query' if j < q else 'text'}"


def check_mask(fn: Callable) -> CheckResult:
    """``fn(mode, num_queries, text_mask)`` must return the bool (B, Q+T, Q+T) mask of the mode
    (True = may attend), with padded text columns closed."""
    name = getattr(fn, "__name__", "your function")
    text_masks = [torch.ones(1, 4, dtype=torch.long), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])]
    for mode in MODES:
        for q in (3, 1):
            for text_mask in text_masks:
                expected = build_attention_mask(mode, q, text_mask)
                failed, got = _call(name, fn, mode, q, text_mask)
                if failed is not None:
                    return failed
                if got is None:
                    return _say(False, f"{name} returned None. Hint: end the function with `return ...`.")
                if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
                    shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                    return _say(False, f"for mode {mode!r}, Q={q}, text mask of shape {tuple(text_mask.shape)} "
                                       f"the mask has shape {shape}; expected {tuple(expected.shape)} = (B, Q+T, Q+T).")
                got = got.bool()
                if torch.equal(got, expected):
                    continue
                b, i, j = (int(t) for t in (got != expected).nonzero()[0])
                padded = j >= q and not bool(text_mask[b, j - q])
                should = "should" if bool(expected[b, i, j]) else "should not"
                where = f"row {i} ({'query' if i < q else 'text'}) {should} see column {j}"
                if padded:
                    hint = "padded text columns are hidden from every row, in every mode."
                elif mode == "itc":
                    hint = "ITC is unimodal: queries see only queries, text sees only text."
                elif mode == "itm":
                    hint = "ITM is bi-directional: everyone sees every real token."
                elif i < q:
                    hint = "in ITG the queries see only the queries (they must not peek at the caption)."
                elif j < q:
                    hint = "in ITG every text token sees all the queries."
                else:
                    hint = "in ITG text token i sees text tokens 0..i (itself and earlier), never later ones."
                return _say(False, f"mode {mode!r}, Q={q}: {where} ({_block(i, j, q)} block"
                                   f"{', a padded column' if padded else ''}). Hint: {hint}")
    return _say(True, "ITC, ITM and ITG masks, with padding, equal qformer_lite.build_attention_mask.")


def check_cached_itg_mask(fn: Callable) -> CheckResult:
    """``fn(num_queries, text_mask)`` must return the (B, T, Q+T) mask of LAVIS's cached ITG pass:
    only the text rows, with the cached queries as the first Q columns."""
    name = getattr(fn, "__name__", "your function")
    for q, text_mask in ((3, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])), (2, torch.ones(1, 5, dtype=torch.long))):
        expected = build_attention_mask("itg", q, text_mask)[:, q:]
        failed, got = _call(name, fn, q, text_mask)
        if failed is not None:
            return failed
        failed = _same_shape(name, got, expected, "(B, T, Q+T): text rows only")
        if failed is not None:
            return failed
        if not torch.equal(got.bool(), expected):
            return _say(False, "the values differ. Hint: take the text rows of the joint ITG mask: "
                               "every text row sees all Q cached queries, then text causally, no padding.")
    return _say(True, "T rows × (Q + T) columns: the text reads the cached queries and earlier text.")


__all__ = [
    "ANSWERS",
    "CheckResult",
    "check_add_norm",
    "check_answer",
    "check_attention",
    "check_cached_itg_mask",
    "check_cross_attention",
    "check_cross_layers",
    "check_equivariance_test",
    "check_mask",
    "check_queries",
    "check_query_path_params",
    "check_split_heads",
]


# --- chapter 8 ----------------------------------------------------------------------------

def check_placeholder_ids(fn: Callable) -> CheckResult:
    """``fn(prompt_ids, prompt_mask, num_queries, image_token_id)`` must return HuggingFace's
    ``input_ids`` and ``attention_mask``: the image placeholders in front of the prompt."""
    name = getattr(fn, "__name__", "your function")
    ids = torch.tensor([[17, 23, 5, 1], [44, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    q, image_token = 3, 99
    exp_ids = torch.cat([torch.full((2, q), image_token), ids], dim=1)
    exp_mask = torch.cat([torch.ones(2, q, dtype=torch.long), mask], dim=1)
    failed, got = _call(name, fn, ids, mask, q, image_token)
    if failed is not None:
        return failed
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return _say(False, f"{name} should return two tensors (input_ids, attention_mask), got {type(got).__name__}.")
    got_ids, got_mask = (torch.as_tensor(t) for t in got)
    if tuple(got_ids.shape) != tuple(exp_ids.shape):
        return _say(False, f"input_ids has shape {tuple(got_ids.shape)}; expected {tuple(exp_ids.shape)}. "
                           "Hint: one placeholder per query, for every image of the batch.")
    if torch.equal(got_ids, torch.cat([ids, torch.full((2, q), image_token)], dim=1)):
        return _say(False, "the placeholders are after the prompt. Hint: the queries come first, "
                           "where Blip2T5 puts them.")
    if not torch.equal(got_ids, exp_ids):
        return _say(False, f"input_ids = {got_ids.tolist()}; expected {exp_ids.tolist()}.")
    if not torch.equal(got_mask.long(), exp_mask):
        return _say(False, f"attention_mask = {got_mask.tolist()}; expected {exp_mask.tolist()}. "
                           "Hint: the placeholders are real inputs: ones, then the prompt's own mask.")
    return _say(True, "num_queries placeholders in front of the prompt: HF scatters the projected queries into them.")


def check_precision_guard(fn: Callable) -> CheckResult:
    """``fn(language_model)`` must be False exactly when a feed-forward output layer
    (``*.wo.weight``) is float16."""
    from transformers import T5Config, T5ForConditionalGeneration

    name = getattr(fn, "__name__", "your function")
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=4)
    cases = []
    model = T5ForConditionalGeneration(cfg)
    cases.append(("float32", model, True))
    cases.append(("bfloat16", T5ForConditionalGeneration(cfg).to(torch.bfloat16), True))
    half = T5ForConditionalGeneration(cfg).half()
    cases.append(("float16 throughout", half, False))
    mixed = T5ForConditionalGeneration(cfg).half()
    for module_name, module in mixed.named_modules():
        if module_name.endswith(".wo"):
            module.float()
    cases.append(("float16 with wo in float32", mixed, True))
    only_one = T5ForConditionalGeneration(cfg)
    only_one.decoder.block[0].layer[-1].DenseReluDense.wo.half()
    cases.append(("float32 but one wo in float16", only_one, False))
    for label, lm, expected in cases:
        failed, got = _call(name, fn, lm)
        if failed is not None:
            return failed
        if got is None:
            return _say(False, f"{name} returned None. Hint: end the function with `return ...`.")
        if bool(got) != expected:
            hint = ("only the feed-forward output layers matter: the rest may be float16"
                    if expected else "look at every parameter whose name ends in '.wo.weight'")
            return _say(False, f"{name}(T5 in {label}) = {got}; expected {expected}. Hint: {hint}.")
    return _say(True, "float16 is refused only where it overflows: in T5's feed-forward outputs.")
