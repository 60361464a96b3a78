"""The exercise checkers in Japanese (``set_language("ja")``): every pass line and every hint is
Japanese, wraps at 70 display columns, and gives the same verdict as in English; the English
messages are left as they were (tests/test_checks.py)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import os
import re
import subprocess
import sys
import unicodedata

import pytest
import torch

import test_checks as en  # the English tests: their right answers and their usual mistakes
from qformer_lite.book import LANGUAGES, checks, language, set_language
from qformer_lite.masks import build_attention_mask

KANA = re.compile(r"[\u3040-\u30ff]")
# words of an English sentence: none may be left in a Japanese message (code names such as
# probs_first or heads_not_merged do not match: the underscore joins them to their neighbours)
ENGLISH = re.compile(r"\b(?:the|is|are|not|should|must|Hint|Correct|expected|returned|your|and|of|with)\b")
PREFIXES = (f"{checks.PASS_JA}：", f"{checks.FAIL_JA}：")


def columns(line: str) -> int:
    """Display columns: an East Asian wide (or full-width) character takes two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


@pytest.fixture(autouse=True)
def _language(request, monkeypatch):
    """Japanese for this file's tests; both languages, call by call, for the English tests rerun
    here (see the end of the file). English again afterwards, for whichever test this worker
    runs next."""
    if request.function.__module__ == en.__name__:
        set_language("en")
        for name in checks.__all__:
            if name.startswith("check_"):
                monkeypatch.setattr(checks, name, _in_both_languages(getattr(checks, name)))
    else:
        set_language("ja")
    yield
    set_language("en")


def is_japanese(message: str, english: str | None = None, *, english_words: bool = False) -> None:
    """``message`` (a CheckResult's) is a Japanese pass or hint: the Japanese prefix, kana, and,
    unless it quotes English (an exception's text, a hint given in English), no English sentence;
    and it is not ``english`` with only its prefix changed."""
    assert message.startswith(PREFIXES), message
    body = message.split("：", 1)[1]
    assert KANA.search(body), message
    if not english_words:
        assert not ENGLISH.search(body), message
    if english is not None:
        assert body != english.split(": ", 1)[1], message


def printed_in_japanese(out: str, result: checks.CheckResult) -> None:
    """What the checker printed is its message, wrapped at 70 display columns."""
    lines = out.splitlines()
    assert lines and lines[0].startswith(PREFIXES), out
    assert all(columns(line) <= checks.WIDTH for line in lines), out
    assert all(line.startswith("  ") and not line.startswith("   ") for line in lines[1:]), out
    assert "".join(out.split()) == "".join(result.message.split()), out


def run(capsys, checker, *args):
    ok = checker(*args)
    out = capsys.readouterr().out
    assert isinstance(ok, checks.CheckResult), ok
    printed_in_japanese(out, ok)
    return bool(ok), ok.message


def in_english(checker, *args) -> str:
    set_language("en")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return checker(*args).message
    finally:
        set_language("ja")


# --- every checker: its solution passes in Japanese, a usual mistake gets a Japanese hint ------

def _safe(lm):
    return all(p.dtype != torch.float16 for n, p in lm.named_parameters() if n.endswith(".wo.weight"))


# checker -> (the arguments of a right answer, those of a wrong one)
ANSWERS_OF = {
    "check_answer": (("images_in_2048_queries", 64), ("images_in_2048_queries", 65)),
    "check_queries": ((en.GoodQueries,), (en.RepeatQueries,)),
    "check_equivariance_test": ((lambda f, x, p: torch.allclose(f(x[:, p]), f(x)[:, p], atol=1e-5),),
                                (lambda f, x, p: True,)),
    "check_attention": ((en.good_attention,), (en.unscaled,)),
    "check_split_heads": ((en.split, en.merge), (en.interleaved, en.merge)),
    "check_cross_attention": ((en.good_cross,), (en.no_heads,)),
    "check_query_side_attention": ((en.good_query_side,), (en.query_side_slip(value_bias=False),)),
    "check_cross_layers": ((lambda n, f: list(range(0, n, f)),),
                           (lambda n, f: [i for i in range(n) if (i + 1) % f == 0],)),
    "check_add_norm": ((lambda x, r, dense, ln: ln(dense(x) + r),), (lambda x, r, dense, ln: ln(dense(x)),)),
    "check_query_path_params": ((en.formula,), (lambda cfg: en.formula(cfg) - 1,)),
    "check_mask": ((build_attention_mask,), (en.inverted,)),
    "check_cached_itg_mask": ((lambda q, m: build_attention_mask("itg", q, m)[:, q:],),
                              (lambda q, m: build_attention_mask("itg", q, m),)),
    "check_itc_loss": ((en.itc_right,), (en.ITC_SLIPS["summed"][0],)),
    "check_negative_weights": ((en.weights_right,), (en._masked_softmax,)),
    "check_encoder_inputs": ((en.encoder_inputs_right,), (en.ENCODER_SLIPS["prompt first"][0],)),
    "check_labels": ((lambda ids, mask: ids.masked_fill(mask == 0, -100),), (lambda ids, mask: ids,)),
    "check_placeholder_ids": ((en.placeholder_ids_right,),
                              (lambda ids, mask, q, tok: en.placeholder_ids_right(ids, mask, 1, tok),)),
    "check_precision_guard": ((_safe,), (lambda lm: all(p.dtype != torch.float16 for p in lm.parameters()),)),
    "check_pooled_tokens": ((en._pool,), (lambda x, s: en._pool(x, s, skip_cls=False),)),
    "check_masked_perceiver_attention": ((en._perceiver,),
                                         (lambda a, x, lat, m: en._perceiver(a, x, lat, m, how="multiply"),)),
    "check_left_padding": ((en._left_pad,), (lambda e, m: (e.flip(1), m.flip(1)),)),
    "check_decoder_labels": ((en._labels,), (lambda *a: en._labels(*a, queries=False),)),
    "check_instruction_batch": ((en._read_batch,), (lambda q, x, i: en._read_batch(q, x, i, side="left"),)),
    "check_frame_positions": ((en._with_positions,), (lambda x, t: x.flatten(1, 2),)),
}


def test_every_checker_has_a_right_and_a_wrong_answer_here():
    assert sorted(ANSWERS_OF) == sorted(n for n in checks.__all__ if n.startswith("check_"))


@pytest.mark.parametrize("name", sorted(ANSWERS_OF))
def test_a_checker_passes_and_hints_in_japanese(capsys, name):
    checker = getattr(checks, name)
    right, wrong = ANSWERS_OF[name]
    ok, out = run(capsys, checker, *right)
    assert ok and out.startswith(PREFIXES[0]), out
    is_japanese(out, in_english(checker, *right))
    ok, out = run(capsys, checker, *wrong)
    assert not ok and out.startswith(PREFIXES[1]), out
    is_japanese(out, in_english(checker, *wrong))


@pytest.mark.parametrize("key", sorted(checks.ANSWERS))
def test_every_short_answer_has_a_japanese_hint(capsys, key):
    expected, hint = checks.ANSWERS[key]
    set_language("en")
    english_hint = checks.ANSWERS[key][1]
    set_language("ja")
    assert KANA.search(hint) and hint != english_hint and not ENGLISH.search(hint), hint
    wrong = (not expected) if isinstance(expected, bool) else ("nope" if isinstance(expected, str) else expected + 1)
    ok, out = run(capsys, checks.check_answer, key, wrong)
    assert not ok and f"ヒント：{hint}" in out
    is_japanese(out)
    assert run(capsys, checks.check_answer, key, expected)[0]


def test_every_message_of_the_short_answers_is_japanese(capsys):
    bool_answers = {"yes_or_no": (False, ("think of the order of the blocks.", "ブロックの順番を考えましょう。"))}
    cases = [("self_attention_params", ...), ("no_such_key", 1), ("self_attention_params", 2_000_000),
             ("images_in_2048_queries", True), ("images_in_2048_queries", "64"),
             ("images_in_2048_queries", float("nan")), ("instructblip_mask", 2), ("instructblip_mask", "itg"),
             ("yes_or_no", 1, bool_answers), ("yes_or_no", True, bool_answers)]
    for args in cases:
        ok, out = run(capsys, checks.check_answer, *args)
        assert not ok
        is_japanese(out, in_english(checks.check_answer, *args))
    assert "小さすぎます" in run(capsys, checks.check_answer, "self_attention_params", 2_000_000)[1]
    assert "大きすぎます" in run(capsys, checks.check_answer, "images_in_2048_all_tokens", 2048 / 677)[1]
    assert "ブロックの順番" in run(capsys, checks.check_answer, "yes_or_no", True, bool_answers)[1]
    # a hint given as one string is shown as it is, in either language
    ok, out = run(capsys, checks.check_answer, "yes_or_no", True, {"yes_or_no": (False, "think again.")})
    assert out.endswith("ヒント：think again.")


def test_an_error_in_the_learners_code_is_reported_in_japanese(capsys):
    def add_norm(x, residual, dense, layer_norm):
        normed = layer_norm(x)  # the 16-wide x through an 8-wide LayerNorm: raises inside torch
        return dense(normed) + residual

    ok, out = run(capsys, checks.check_add_norm, add_norm)
    assert not ok and "で RuntimeError が発生しました" in out
    assert f"（{en.line_of(add_norm, 'normed = layer_norm(x)')} 行目、add_norm 内：normed = layer_norm(x)" in out
    is_japanese(out, english_words=True)  # torch's own message stays in English
    ok, out = run(capsys, checks.check_attention, en.no_return)
    assert "None を返しました" in out
    ok, out = run(capsys, checks.check_queries, en.Unwritten)
    assert "まだ書かれていません" in out


# --- the language setting ----------------------------------------------------------------------

def test_the_prefixes():
    assert (checks.PASS, checks.FAIL) == ("✓ Correct", "✗ Not yet")  # kept for the English tests and pages
    assert checks.PASS_JA.startswith("✓ ") and checks.FAIL_JA.startswith("✗ ")
    assert KANA.search(checks.FAIL_JA) and checks.PASS_JA != checks.PASS


def test_an_unknown_language_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError) as err:
        set_language("xx")
    for word in ("'xx'", "'en'", "'ja'"):
        assert word in str(err.value), err.value
    assert language() == "ja" and LANGUAGES == ("en", "ja")


def test_the_language_is_read_when_a_check_runs(capsys):
    """Not when checks.py is imported: the module-level messages (the answers' hints, the
    refusal of chapter 3's module call) follow set_language too."""
    cases = [("en", checks.FAIL, "calls the module itself", "both ways"),
             ("ja", checks.FAIL_JA, "モジュール自体", "双方向"),
             ("en", checks.FAIL, "calls the module itself", "both ways")]
    for lang, prefix, refusal, hint in cases:
        set_language(lang)
        assert not checks.check_cross_attention(en.calls_the_module)
        out = capsys.readouterr().out
        assert out.startswith(prefix) and refusal in " ".join(out.split()), out
        assert hint in checks.ANSWERS["instructblip_mask"][1]
    set_language("ja")
    assert checks.check_cross_attention(en.good_cross).message.startswith(checks.PASS_JA)


def test_the_language_comes_from_the_environment_by_default():
    code = ("from qformer_lite.book import checks, language; print(language()); "
            "checks.check_answer('images_in_2048_queries', 64)")
    for env, expected in (("ja", "ja\n" + checks.PASS_JA), ("en", "en\n" + checks.PASS), ("xx", "en\n" + checks.PASS)):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                             env={**os.environ, "QFORMER_LITE_LANG": env}).stdout
        assert out.startswith(expected), (env, out)


def test_strict_mode_raises_in_japanese_too(monkeypatch):
    monkeypatch.setenv(checks.STRICT_ENV, "1")
    with pytest.raises(AssertionError, match="2 で割りましょう") as err:
        checks.check_itc_loss(en.ITC_SLIPS["summed"][0])
    assert f"{checks.STRICT_ENV}=1" in str(err.value) and str(err.value).startswith(checks.FAIL_JA)
    with pytest.raises(AssertionError, match="小さすぎます"):
        checks.check_answer("self_attention_params", 2_000_000)
    assert checks.check_itc_loss(en.itc_right)
    monkeypatch.setenv(checks.STRICT_ENV, "0")
    assert not checks.check_itc_loss(en.ITC_SLIPS["summed"][0])  # a learner's run: a hint


# --- wrapping Japanese at 70 display columns ---------------------------------------------------

TEXT = ("✗ もう一歩：ヘッドが交互に混ざった順で結合されています。ヒント：ヘッド h はチャネル h·d から (h+1)·d "
        "を持ちます：'(d h)' ではなく rearrange(out, 'b h q d -> b q (h d)') です。"
        "attn.value.weight と attn.key.weight、そして 105,137,664 個のパラメータ（バイアスを含みます）。"
        "クロスアテンションとセルフアテンションの違いを、もう一度ゆっくり確かめてみましょう。")


def test_japanese_lines_wrap_at_70_display_columns():
    out = checks._wrap_wide(TEXT)
    lines = out.splitlines()
    assert len(lines) >= 4 and all(columns(line) <= 70 for line in lines), out
    assert max(columns(line) for line in lines) >= 66, out  # filled, not cut short
    assert all(line.startswith("  ") for line in lines[1:]), out
    assert "".join(out.split()) == "".join(TEXT.split())  # nothing lost, nothing added
    assert not any(line.lstrip()[0] in "、。：）」" for line in lines[1:]), out  # no line starts with them
    assert not any(line.rstrip()[-1] in "（「" for line in lines), out
    for word in ("attn.value.weight", "attn.key.weight", "105,137,664", "(h+1)·d", "rearrange(out,",
                 "クロスアテンション", "セルフアテンション"):
        assert any(word in line for line in lines), (word, out)  # never cut in the middle


def test_a_word_longer_than_a_line_is_cut_as_textwrap_cuts_it():
    text = "長い名前：" + "x" * 150 + " です。"
    lines = checks._wrap_wide(text).splitlines()
    assert all(columns(line) <= 70 for line in lines) and "".join("".join(lines).split()) == "".join(text.split())


def test_a_short_message_stays_on_one_line():
    assert checks._wrap_wide("✓ 正解：short は 3 です。") == "✓ 正解：short は 3 です。"


# lines the reviewers found broken inside a word, as they were worded then: the break must move to
# a place that reads well, a few columns earlier
SPLIT_WORDS = [
    ("✓ 正解：T 行 × (Q + T) 列：テキストはキャッシュされたクエリと、それより前のテキストを読みます。",
     "クエリと、", "それより前"),
    ("✓ 正解：パディングが先、実在のトークンは元の順序のままです：各行の最後の位置がその行の最後のトークンです。",
     "各行の", "最後の位置"),
    ("✓ 正解：予測対象はキャプションとその終端だけです：クエリ、開始トークン、プロンプト、パディングは -100 です。",
     "クエリ、", "開始トークン"),
    ("✓ 正解：latent が 1 つの softmax で画像と互いを読んでいます：Flamingo のリサンプラーの 1 ステップです。",
     "読んでいます：", "Flamingo のリサンプラー"),
]


@pytest.mark.parametrize("text, ends, starts", SPLIT_WORDS)
def test_a_line_breaks_where_it_reads_well_not_inside_a_word(text, ends, starts):
    lines = checks._wrap_wide(text).splitlines()
    assert len(lines) == 2 and all(columns(line) <= 70 for line in lines), lines
    assert lines[0].endswith(ends) and lines[1].startswith("  " + starts), lines
    assert "".join("".join(lines).split()) == "".join(text.split())


def test_the_preferred_break_points():
    """After punctuation or a particle, at a space, where ASCII meets Japanese; not inside a word,
    not between a number and its counter, not between a code name and its particle."""
    quality = checks._break_quality
    good = [("う", "、", "次", False), ("果", "の", "位", False), ("", "ヒント：", "ク", False),
            ("", "を", "す", False), ("ト", "は", "す", False), ("", "値", "(B,", True),
            ("", "ヘッド", "attn.head_dim", True), ("", "です", "（", False)]
    for previous, before, after, space in good:
        assert quality(previous, before, after, space) == 3, (before, after)
    bad = [("", "で", "す", False), ("", "そ", "れ", False), ("", "32", "個", True), ("", "第", "0", True),
           ("", "N", "列", True), ("", "開", "始", False), ("", "始", "トークン", False)]
    for previous, before, after, space in bad:
        assert quality(previous, before, after, space) == 0, (before, after)
    assert 0 < quality("", "softmax", "で", True) < 3  # a code name keeps its particle if it can
    assert 0 < quality("", "'b", "h", True, True) < 3  # a space inside a piece of code
    # with no good place within the last 12 columns, the line is filled as before (a word may split)
    text = "あ" * 40
    assert checks._wrap_wide(text).splitlines()[0] == "あ" * 35


def test_a_piece_of_code_stays_on_one_line_when_a_better_place_is_near():
    text = ("✗ もう一歩：ヘッドが交互に混ざっています。ヒント：ヘッド h は連続したスライス x[..., h*d:(h+1)*d] "
            "を持つので、パターンは '(d h)' ではなく '(h d)' です。")
    lines = checks._wrap_wide(text).splitlines()
    assert all(columns(line) <= 70 for line in lines), lines
    assert any("'(d h)'" in line for line in lines) and any("ヘッド h は" in line for line in lines), lines


def test_the_numbers_of_a_right_short_answer_have_thousands_separators(capsys):
    ok, out = run(capsys, checks.check_answer, "cross_attention_params", 3_346_944)
    assert ok and out.endswith("cross_attention_params は 3,346,944 です。"), out
    assert in_english(checks.check_answer, "cross_attention_params", 3_346_944).endswith(
        "cross_attention_params = 3346944.")
    assert run(capsys, checks.check_answer, "instructblip_mask", "itm")[1].endswith("'itm' です。")


def test_the_japanese_messages_use_the_books_terms():
    """The words of the Japanese chapters and glossary, not English words or other spellings."""
    import ast

    source = inspect.getsource(checks)
    japanese = [node.value for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and KANA.search(node.value)
                and "``" not in node.value]  # docstrings mention the old splits as examples
    text = "".join(japanese)
    for old in ("plain 形式", "リサンプラー", "実在の", "演習", "参照してよい", "スケール付き", "層 0、",
                "を与え", "プレースホルダー", "query の", "key と", "value の", "hidden "):
        assert old not in text, old
    assert not re.search(r"\blatent\b", text)  # latents, in code, stays
    for new in ("通常の形", "リサンプラ", "実際の", "練習問題", "注意を向けてよい", "スケール化内積アテンション",
                "第 0, f, 2f, … 層", "潜在ベクトル"):
        assert new in text, new

def test_english_lines_still_wrap_with_textwrap(capsys):
    set_language("en")
    checks.check_itc_loss(en.ITC_SLIPS["summed"][0])
    out = capsys.readouterr().out
    assert out.startswith(checks.FAIL) and all(len(line) <= checks.WIDTH for line in out.splitlines())


# --- every English test again, each check run in both languages ------------------------------

def _in_both_languages(checker):
    """``checker`` run first in Japanese (its output checked here, then dropped), then in
    English for the English test: the same verdict, a Japanese message, wrapped at 70 columns."""

    @functools.wraps(checker)
    def both(*args, **kwargs):
        set_language("ja")
        try:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                japanese = checker(*args, **kwargs)
        finally:
            set_language("en")
        english = checker(*args, **kwargs)
        assert bool(japanese) == bool(english), (japanese.message, english.message)
        printed_in_japanese(out.getvalue(), japanese)
        quotes_english = "が発生しました" in japanese.message or (checker.__name__ == "check_answer" and len(args) > 2)
        is_japanese(japanese.message, english.message, english_words=quotes_english)
        return english

    return both


def _reruns():
    """The English tests that run a checker (strict mode is tested above, in Japanese)."""
    for name, test in vars(en).items():
        if name.startswith("test_") and inspect.isfunction(test):
            source = inspect.getsource(test)
            if "checks.check_" in source and "STRICT" not in source:
                yield f"test_both_languages__{name[len('test_'):]}", test


globals().update(_reruns())  # collected here too: their checks run in both languages (see _language)


def test_the_reruns_cover_every_checker():
    reruns = [name for name in globals() if name.startswith("test_both_languages__")]
    assert len(reruns) > 30
    source = "\n".join(inspect.getsource(globals()[name]) for name in reruns)
    for name in checks.__all__:
        if name.startswith("check_"):
            assert f"checks.{name}" in source, name

