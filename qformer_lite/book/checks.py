"""Checkers for the book's exercises, chapter by chapter in the order of the book.

Each ``check_*`` runs the learner's answer against ``qformer_lite`` on small random inputs,
prints one clear message (a pass, or what is wrong and a hint), and returns a ``CheckResult``
that is true when the answer passed; ``check_answer`` does the same for the short answers
(numbers and words) of every chapter.
They never raise: an exception inside the learner's code is reported as a hint that names
the learner's own line. The one exception is the book's own build: with
``QFORMER_LITE_STRICT_CHECKS=1`` in the environment (``make test`` and ``make book`` set it), a
check that does not pass raises ``AssertionError``, so that a solution that has drifted from
the library fails the build instead of printing a hint nobody reads.

Every message is written in English and in Japanese, side by side (``_tr(en, ja)``), and is
printed in the language of ``qformer_lite.book.set_language`` (English by default, or
``$QFORMER_LITE_LANG``), read when the check runs. The lines wrap at ``WIDTH`` columns; in
Japanese a wide character counts as two columns, and a line may break between two of them,
preferably after punctuation or a particle, at a space, or where ASCII meets Japanese.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import sysconfig
import textwrap
import traceback
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import torch
from einops import rearrange
from torch import nn

from .. import losses
from ..attention import MultiHeadAttention, attention_from_scratch, cross_attention_form
from ..config import QFormerConfig
from ..masks import MODES, build_attention_mask
from ..queries import vit_tokens
from . import language

__all__ = [
    # every chapter
    "PASS",
    "FAIL",
    "PASS_JA",
    "FAIL_JA",
    "WIDTH",
    "STRICT_ENV",
    "CheckResult",
    "ANSWERS",
    "check_answer",
    "learners_frame",
    # chapter 1
    "check_queries",
    "check_equivariance_test",
    # chapter 2
    "check_attention",
    "check_split_heads",
    # chapter 3
    "check_cross_attention",
    "check_query_side_attention",
    # chapter 4
    "check_cross_layers",
    "check_add_norm",
    "check_query_path_params",
    "query_path_formula",
    # chapter 5
    "check_mask",
    "check_cached_itg_mask",
    # chapter 6
    "check_itc_loss",
    "check_negative_weights",
    # chapter 7
    "check_encoder_inputs",
    "check_labels",
    # chapter 8
    "check_placeholder_ids",
    "check_precision_guard",
    # chapter 9
    "check_pooled_tokens",
    "check_masked_perceiver_attention",
    # chapter 10
    "check_left_padding",
    "check_decoder_labels",
    # chapter 11
    "check_instruction_batch",
    # chapter 12
    "check_frame_positions",
]

PASS = "✓ Correct"
FAIL = "✗ Not yet"
PASS_JA = "✓ 正解"  # the same in Japanese (set_language("ja"))
FAIL_JA = "✗ もう一歩"
WIDTH = 70  # printed lines wrap here: a solution's dropdown in the book shows about 70 columns


# --- what every checker shares ---------------------------------------------------------------

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


STRICT_ENV = "QFORMER_LITE_STRICT_CHECKS"


def _keeps_random_state(checker: Callable) -> Callable:
    """Run ``checker`` on a fork of PyTorch's global generator: its random inputs are the same
    on every call, and the learner's next cells draw what they would have drawn without it."""

    @functools.wraps(checker)
    def run(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return checker(*args, **kwargs)

    return run


def _tr(en: str, ja: str) -> str:
    """The message in the language the checkers speak now: ``en`` or ``ja`` (``set_language``)."""
    return ja if language() == "ja" else en


# a line may not start with these (closing brackets and punctuation, small kana) nor end with
# the opening brackets: they stay with their neighbour when a Japanese line is wrapped
_NO_LINE_START = frozenset("、。，．・：；？！）］｝〕〉》」』】ー々ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮ)]},.:;!?")
_NO_LINE_END = frozenset("（［｛〔〈《「『【([{")


def _is_wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in "WF"


def _columns(text: str) -> int:
    """How many columns ``text`` takes on screen: an East Asian wide character takes two."""
    return sum(2 if _is_wide(c) else 1 for c in text)


def _kind(char: str) -> str:
    if char.isspace():
        return "space"
    if "\u30a1" <= char <= "\u30fa" or char == "ー":
        return "katakana"
    return "wide" if _is_wide(char) else "narrow"


def _atoms(text: str) -> list[str]:
    """``text`` cut where a Japanese line may break: each space, each wide character, and each
    run of narrow characters (a code name, a number, an English word) or of katakana (a word
    such as クロスアテンション) whole."""
    atoms: list[str] = []
    kind = None
    for char in text:
        new = _kind(char)
        if new == kind and new in ("narrow", "katakana"):
            atoms[-1] += char
        else:
            atoms.append(char)
        kind = new
    kept: list[str] = []  # the line-breaking rules (kinsoku): glue the atoms that must stay together
    for atom in atoms:
        if (kept and not atom.isspace() and not kept[-1].isspace()
                and (atom[0] in _NO_LINE_START or kept[-1][-1] in _NO_LINE_END)):
            kept[-1] += atom
        else:
            kept.append(atom)
    return kept


# where a Japanese line reads well when it must break (``_wrap_wide`` looks back this many
# columns for such a place): after these, after a particle, at a space, where ASCII meets Japanese
_LOOKBACK = 12
_BREAK_AFTER = frozenset("、。，．：；！？）］｝〕〉》」』】")
_PARTICLES = frozenset("はがをにでとのもへや")
_OPENING, _CLOSING = frozenset("([{（"), frozenset(")]}）")
_OPERATORS = frozenset(("×", "x", "+", "-", "*", "/", "//", "%", "=", "==", "->", "→", "@"))


def _is_hiragana(char: str) -> bool:
    return "\u3041" <= char <= "\u309f"


def _is_kanji(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff" or char == "々"


def _depth_after(depth: int, atom: str) -> int:
    """How deep inside brackets or quotes (a piece of code such as rearrange(x, 'b h l d')) the
    text is after ``atom``, from ``depth`` before it; a sentence's end (。) closes everything."""
    for k, char in enumerate(atom):
        before = atom[k - 1] if k else " "
        if char in _OPENING or (char == "'" and (before.isspace() or before in _OPENING or before == "=")):
            depth += 1
        elif char in _CLOSING or char == "'":
            depth = max(0, depth - 1)
        elif char == "。":
            depth = 0
    return depth


def _break_quality(previous: str, before: str, after: str, space: bool, inside: bool = False) -> int:
    """How well a Japanese line reads broken between the atoms ``before`` and ``after``
    (``space``: there is a space between them; ``previous``: the character before ``before``,
    or ""; ``inside``: the place is inside brackets or quotes), from 3 (best) to 0.

    3: after 、。：） and their kind, after a particle (は が を に で と の も へ や), before an
    opening bracket, at a space, or where ASCII meets Japanese. 2: at a space in a formula
    (Q × N, d = 64, 第 0, f, 2f). 1: at a space inside a piece of code (rearrange(x, 'b h l d'),
    [x; latents]), or between a code name and its particle (Flamingo の). 0, as bad as anywhere
    else (inside a word: それよ / り前): between a number or a short name and the word next to
    it (32 個, 1 つ, N 列, 第 0, 層 i)."""
    last, first = before[-1], after[0]
    if last in _BREAK_AFTER or (first in _NO_LINE_END and _is_wide(first)):
        return 3
    if space or _is_wide(last) != _is_wide(first):
        if not _is_wide(last) and _is_wide(first) and (len(before) <= 2 or last.isdigit()):
            return 0  # a number or a short name and its word: 32 個, 1 つ, N 列
        if _is_wide(last) and not _is_wide(first) and len(after) <= 2 and (
                _is_kanji(last) or _kind(last) == "katakana"):
            return 0  # a word and its short name or number: 第 0, 層 i, クエリ 1 つ, ヘッド h
        if not _is_wide(last) and _is_hiragana(first):
            return 1  # a code name and its particle: softmax で, cfg から
        if not _is_wide(last) and not _is_wide(first):
            if inside:
                return 1  # inside a piece of code: 'b h l d', [x; latents], (B, Q, D)
            if before in _OPERATORS or after in _OPERATORS or (len(before) <= 3 and last == ","):
                return 2  # in a formula: Q × N, d = 64, 0, f, 2f
        return 3
    if len(before) != 1 or last not in _PARTICLES:
        return 0
    if not _is_hiragana(first):  # の位置, を使い, で割る; not で|す, も|う, が|ら
        return 3
    # a particle before more hiragana: を always; the others but で after a noun (テキストは|すべて,
    # 必要が|あります), and は after で, に, と (では|ありません)
    if last == "を" or (last != "で" and previous != "" and not _is_hiragana(previous)) or (
            last == "は" and previous in ("で", "に", "と")):
        return 3
    return 0


def _wrap_wide(text: str, width: int = WIDTH, indent: str = "  ") -> str:
    """``textwrap.fill`` for text with wide characters: lines of at most ``width`` columns, the
    next ones indented by ``indent``, broken at a space or between two wide characters, never
    inside a run of narrow characters unless it is longer than a line.

    Where a line must break, it breaks at the place within ``_LOOKBACK`` columns of the end that
    reads best (``_break_quality``: after 、。：） or a particle, at a space, where ASCII meets
    Japanese), the last of the best; only where none reads even passably does it break right
    before the atom that does not fit, which may split a word (それよ / り前)."""
    lines: list[str] = []
    # the atoms on the current line: (atom, a space before it, inside brackets or quotes before it)
    line: list[tuple[str, bool, bool]] = []
    start, space, depth = "", False, 0  # start: "" on the first line, then indent

    def shown(atoms: list[tuple[str, bool, bool]]) -> str:
        return start + "".join((" " if gap and k else "") + atom for k, (atom, gap, _) in enumerate(atoms))

    def quality(k: int) -> int:  # of a break before line[k]
        previous = line[k - 2][0][-1] if k > 1 else ""
        return _break_quality(previous, line[k - 1][0], *line[k])

    for atom in _atoms(text):
        if atom.isspace():
            space = bool(line)  # a space between two atoms; none at the start of a line
            continue
        line.append((atom, space, depth > 0))
        space, depth = False, _depth_after(depth, atom)
        while _columns(shown(line)) > width:
            fitting = [k for k in range(len(line) - 1, 0, -1) if _columns(shown(line[:k])) <= width]
            if fitting:  # break before the atom that does not fit, or at a better place a little earlier
                reach = _columns(shown(line[:fitting[0]])) - _LOOKBACK
                k = max((k for k in fitting if _columns(shown(line[:k])) >= reach), key=quality)
                k = k if quality(k) else fitting[0]  # the last of the best, or the current rule
                lines.append(shown(line[:k]))
                start, line = indent, line[k:]
                continue
            piece, _, inside = line[0]  # an atom longer than a line: cut it, as textwrap does
            fits = max(1, max(n for n in range(len(piece) + 1) if _columns(start + piece[:n]) <= width))
            lines.append(start + piece[:fits])
            start, line = indent, [(piece[fits:], False, inside), *line[1:]]
    if line:
        lines.append(shown(line))
    return "\n".join(lines)


def _say(ok: bool, message: str) -> CheckResult:
    if language() == "ja":
        line = f"{PASS_JA}：{message}" if ok else f"{FAIL_JA}：{message}"
        print(_wrap_wide(line))
    else:
        line = f"{PASS}: {message}" if ok else f"{FAIL}: {message}"
        print(textwrap.fill(line, width=WIDTH, subsequent_indent="  ", break_on_hyphens=False))
    if not ok and os.environ.get(STRICT_ENV) == "1":
        raise AssertionError(_tr(f"{line} ({STRICT_ENV}=1: the book's solutions must pass their checks)",
                                 f"{line}（{STRICT_ENV}=1：本書の解答はチェックに合格する必要があります）"))
    return CheckResult(ok, line)


def _library_dirs() -> tuple[str, ...]:
    """Folders whose code is not the learner's: torch, einops, this package, the stdlib and
    any installed package."""
    import einops

    dirs = {os.path.dirname(torch.__file__), os.path.dirname(einops.__file__), os.path.dirname(__file__)}
    paths = sysconfig.get_paths()
    dirs.update(paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths)
    return tuple(os.path.realpath(d) + os.sep for d in dirs)


def learners_frame(err: BaseException) -> traceback.FrameSummary | None:
    """The last traceback frame in the learner's code (a notebook cell, a script), or None."""
    skip = _library_dirs()
    frames = traceback.extract_tb(err.__traceback__)
    for frame in reversed(frames):
        path = os.path.realpath(frame.filename) if os.path.isabs(frame.filename) else frame.filename
        if frame.filename.startswith("<frozen") or path.startswith(skip):
            continue
        if any(part in path.split(os.sep) for part in ("site-packages", "dist-packages")):
            continue
        return frame
    return None


class _CalledTheModule(RuntimeError):
    """Raised when an exercise asks for a computation by hand and the learner's code called
    what it was to write; its message says what was called, and the hint."""


def _refuse(en: str, ja: str) -> Callable:
    """A stand-in for a method an exercise's answer must not call; it says why in the reader's
    language (``en`` or ``ja``, chosen when it is called)."""

    def refused(*args, **kwargs):
        raise _CalledTheModule(_tr(en, ja))

    return refused


def _raised(name: str, err: BaseException) -> CheckResult:
    if isinstance(err, _CalledTheModule):
        return _say(False, f"{name} {err}")
    first_line = (str(err).strip().splitlines() or [""])[0]
    if len(first_line) > 160:
        first_line = first_line[:157] + "..."
    frame = learners_frame(err)
    where = ""
    if frame is not None:
        code = " ".join((frame.line or "").split())
        if len(code) > 80:
            code = code[:77] + "..."
        where = _tr(f" (line {frame.lineno}, in {frame.name}" + (f": {code}" if code else "") + ")",
                    f"（{frame.lineno} 行目、{frame.name} 内" + (f"：{code}" if code else "") + "）")
    return _say(False, _tr(f"{name} raised {type(err).__name__}: {first_line}{where}. Hint: run it on "
                           f"a small input and print the shapes step by step.",
                           f"{name} で {type(err).__name__} が発生しました：{first_line}{where}。ヒント："
                           f"小さな入力で実行し、各ステップの形状を print してみましょう。"))


def _call(name: str, fn: Callable, *args):
    """Run the learner's function; return (failure or None, result)."""
    try:
        return None, fn(*args)
    except NotImplementedError:
        return _say(False, _tr(f"{name} is not written yet (it raises NotImplementedError).",
                               f"{name} はまだ書かれていません（NotImplementedError を送出しています）。")), None
    except Exception as err:  # any mistake in the learner's code becomes a hint
        return _raised(name, err), None


def _first(result):
    """Accept either a tensor or a tuple whose first item is the tensor."""
    return result[0] if isinstance(result, (tuple, list)) and len(result) else result


def _returned_none(name: str) -> CheckResult:
    return _say(False, _tr(f"{name} returned None. Hint: end the function with `return ...`.",
                           f"{name} が None を返しました。ヒント：関数の最後に `return ...` を書きましょう。"))


def _before_desu(text: str) -> str:
    """``text`` followed by a space before です, unless it ends in a full-width bracket."""
    return text if text.endswith(("）", "」")) else text + " "


def _same_shape(name: str, got, expected: torch.Tensor, what: str):
    if got is None:
        return _returned_none(name)
    if not isinstance(got, torch.Tensor):
        return _say(False, _tr(f"{name} returned a {type(got).__name__}; expected a tensor of shape {what}.",
                               f"{name} が {type(got).__name__} を返しました。形状 {what} のテンソルが必要です。"))
    if tuple(got.shape) != tuple(expected.shape):
        return _say(False, _tr(f"{name} returned shape {tuple(got.shape)}; expected {tuple(expected.shape)} = {what}.",
                               f"{name} が返した形状は {tuple(got.shape)} です。正しい形状は "
                               f"{tuple(expected.shape)} = {_before_desu(what)}です。"))
    return None


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that a hint stays one short message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _plain(value: Any) -> Any:
    """A one-element tensor or numpy scalar as the Python number or bool it holds."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        return value.item()
    return value


# --- the short answers, chapter by chapter ---------------------------------------------------

# key -> (expected, (hint when wrong in English, the same in Japanese)). Where the expected
# value follows from the miniature's settings (chapters 6 and 7) it is a function of
# ``MiniatureConfig.default()``, called when the answer is looked up, so that importing the
# checkers stays light.
_ANSWERS: dict[str, tuple[Any, tuple[str, str]]] = {
    # chapter 1
    "images_in_2048_all_tokens": (
        2048 // vit_tokens(364),
        ("ViT-g/14 cuts a 364-px image into (364 // 14)² patches of 14 px and adds one [CLS] "
         "token; only whole images fit: 2048 // (tokens per image).",
         "ViT-g/14 は 364 px の画像を 14 px のパッチ (364 // 14)² 個に切り分け、[CLS] トークンを "
         "1 つ加えます。画像は 1 枚まるごとでなければ入らないので、答えは "
         "2048 // (画像 1 枚あたりのトークン数) です。"),
    ),
    "images_in_2048_queries": (
        2048 // 32,
        ("The Q-Former hands the language model num_query_tokens = 32 vectors per image, "
         "whatever the image size: 2048 // 32.",
         "Q-Former は画像の大きさによらず、画像 1 枚につき num_query_tokens = 32 個のベクトルを"
         "言語モデルに渡します。したがって 2048 // 32 です。"),
    ),
    # chapter 2
    "self_attention_params": (
        2_363_904,
        ("Count query, key, value and the output dense: four Linear(768, 768) with biases, "
         "then one LayerNorm(768) with a weight and a bias.",
         "クエリ、キー、バリューの射影と出力の dense を数えましょう。バイアス付きの Linear(768, 768) "
         "が 4 つと、重みとバイアスを持つ LayerNorm(768) が 1 つです。"),
    ),
    # chapter 3
    "cross_attention_params": (
        3_346_944,
        ("The query projection is Linear(768, 768), but key and value read the 1408-wide image "
         "features: Linear(1408, 768). Add the output dense (768, 768) and its LayerNorm.",
         "クエリの射影は Linear(768, 768) ですが、キーとバリューは幅 1408 の画像特徴を読むので "
         "Linear(1408, 768) です。出力の dense (768, 768) とその LayerNorm も足しましょう。"),
    ),
    "cross_blocks_reaching_text": (
        6,
        ("The text reads the queries in every layer's self-attention, which runs before that "
         "layer's cross-attention. A block in layer i changes the queries after the text has "
         "read them, so the text first sees its work in layer i + 1, if there is one.",
         "テキストがクエリを読むのは各層のセルフアテンションで、これはその層のクロスアテンションより"
         "前に実行されます。第 i 層のブロックがクエリを変えるのはテキストが読んだ後なので、テキストが"
         "その結果を初めて見るのは第 i + 1 層です（その層があれば）。"),
    ),
    "cross_blocks_reaching_text_odd": (
        5,
        ("The text reads the queries in every layer's self-attention, which runs before that "
         "layer's cross-attention. A block in layer i reaches the text in layer i + 1; the "
         "last layer, 11, has no next layer.",
         "テキストがクエリを読むのは各層のセルフアテンションで、これはその層のクロスアテンションより"
         "前に実行されます。第 i 層のブロックがテキストに届くのは第 i + 1 層です。最後の第 11 層には"
         "次の層がありません。"),
    ),
    "cross_macs_plain": (
        2 * 257 * 1408 * 768,
        ("The plain form projects every image token to a key and a value: two Linear(1408, 768) "
         "on N = 257 tokens, N·C·D multiply-adds each (biases left out).",
         "通常の形では、すべての画像トークンをキーとバリューに射影します。N = 257 個のトークンに "
         "Linear(1408, 768) を 2 回かけ、それぞれ N·C·D 回の積和です（バイアスは数えません）。"),
    ),
    "cross_macs_query_side": (
        2 * 12 * 32 * 1408 * (257 + 64),
        ("Per head, for its Q = 32 queries: W_k into the queries (Q·d·C), the scores against "
         "the image tokens (Q·C·N), their weighted sum (Q·N·C) and W_v after it (Q·C·d), "
         "with d = 64; then times H = 12 heads.",
         "ヘッドごとに、Q = 32 個のクエリについて数えます。クエリに掛ける W_k (Q·d·C)、画像トークン"
         "とのスコア (Q·C·N)、その重み付き和 (Q·N·C)、最後に掛ける W_v (Q·C·d) です（d = 64）。"
         "これをヘッド数 H = 12 倍しましょう。"),
    ),
    # chapter 5
    "instructblip_mask": (
        "itm",
        ("The instruction and the queries must read each other both ways, with no causality.",
         "指示文とクエリは、因果的な制約なしに、互いを双方向に読む必要があります。"),
    ),
    # chapter 6
    "itm_pairs_per_batch": (
        lambda m: 3 * m.stage1.optim.batch_size,
        ("Each matching pair brings one hard negative image and one hard negative text.",
         "一致するペア 1 つにつき、ハードネガティブの画像 1 枚とハードネガティブのテキスト 1 つが加わります。"),
    ),
    # chapter 7
    "soft_prompt_length": (
        lambda m: m.qformer.num_query_tokens + 1,
        ("The T5 encoder reads every projected query, then the prompt; an empty prompt is "
         "tokenised as '</s>' alone.",
         "T5 エンコーダは射影されたクエリをすべて読み、続いてプロンプトを読みます。空のプロンプトを"
         "トークン化すると '</s>' だけになります。"),
    ),
    "projection_params": (
        lambda m: m.qformer.hidden_size * m.language.d_model + m.language.d_model,
        ("One Linear from the Q-Former's width to T5's d_model, with a bias.",
         "Q-Former の幅から T5 の d_model への、バイアス付きの Linear 1 つです。"),
    ),
    # chapter 9 (its world: 48-px images in 6-px patches, the miniature's T5)
    "linear_prompt_length": (
        64 + 1,
        ("LLaVA's projection maps every patch token, [CLS] left out: (48 // 6)² of them, "
         "then the empty prompt's </s>.",
         "LLaVA の射影は [CLS] を除くすべてのパッチトークン、つまり (48 // 6)² 個を写します。その後に"
         "空のプロンプトの </s> が続きます。"),
    ),
    "t5_encoder_macs_pooled_25": (
        lambda m: _t5_encoder_macs(m, 25 + 1),
        ("Per layer and position: q, k, v and o are d_model x (heads x d_kv) each; the scores and "
         "their weighted sum are length x heads x d_kv each; the gated FFN is three d_model x d_ff "
         "maps. Count 25 + 1 positions and config.language.num_layers layers.",
         "層と位置ごとに、q、k、v、o はそれぞれ d_model x (heads x d_kv)、スコアとその重み付き和は"
         "それぞれ length x heads x d_kv、ゲート付き FFN は d_model x d_ff の写像 3 つです。位置は "
         "25 + 1 個、層は config.language.num_layers 個として数えましょう。"),
    ),
    # chapter 10
    "minigpt4_13b_proj_params": (
        768 * 5120 + 5120,
        ("llama_proj is one Linear from the Q-Former's width (768) to Vicuna-13B's hidden size "
         "(5120), with a bias.",
         "llama_proj は、Q-Former の幅 (768) から Vicuna-13B の隠れ状態のサイズ (5120) への、"
         "バイアス付きの Linear 1 つです。"),
    ),
    "chat_positions": (
        lambda m: 1 + 2 + m.qformer.num_query_tokens + 5,
        ("Count what the stand-in reads: </s>, the words before <ImageHere> (###Human: <Img>), "
         "one vector per query in its place, then the words after it up to ###Assistant:.",
         "代役のモデルが読むものを数えましょう。</s>、<ImageHere> より前の語 (###Human: <Img>)、"
         "<ImageHere> の位置に入るクエリ 1 つにつき 1 つのベクトル、そしてその後ろの ###Assistant: "
         "までの語です。"),
    ),
    # chapter 11
    "instructblip_extra_t5_positions": (
        0,
        ("Only the Q-Former's 32 query outputs go on to T5, whatever it read beside them; T5 reads "
         "the prompt in its own tokens in both models.",
         "Q-Former から T5 に渡るのは、横で何を読んだかによらず、32 個のクエリの出力だけです。T5 は、"
         "どちらのモデルでも、プロンプトを自分のトークンで読みます。"),
    ),
    "instructblip_extra_qformer_positions": (
        12,
        ("BLIP-2's Q-Former reads its 32 queries alone; InstructBLIP's reads the prompt's 12 ids "
         "after them.",
         "BLIP-2 の Q-Former は 32 個のクエリだけを読みます。InstructBLIP の Q-Former は、その後ろに"
         "プロンプトの 12 個の ID も読みます。"),
    ),
    # chapter 12
    "video_tokens_concat": (
        256,
        ("Every frame hands on all of its queries: frames x queries.",
         "どのフレームもクエリをすべて渡すので、フレーム数 × クエリ数です。"),
    ),
    "video_tokens_videoqformer": (
        32,
        ("The video Q-Former hands on its own queries, however many frames it read.",
         "ビデオ Q-Former が渡すのは自分のクエリだけで、フレーム数には依存しません。"),
    ),
}


def _t5_encoder_macs(m, length: int) -> int:
    from ..miniature.compare import t5_encoder_macs
    from ..miniature.standins import CaptionTokenizer, t5_config

    return t5_encoder_macs(t5_config(m.language, CaptionTokenizer()), length)


class _Answers(Mapping):
    """The answer table, with the miniature's answers computed when they are looked up, and
    each hint in the reader's language."""

    def __init__(self, table: dict[str, tuple[Any, tuple[str, str]]]):
        self._table = table

    def __getitem__(self, key: str) -> tuple[Any, str]:
        expected, hint = self._table[key]
        if callable(expected):
            from ..miniature.config import MiniatureConfig

            expected = expected(MiniatureConfig.default())
        return expected, _tr(*hint)

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


ANSWERS: Mapping[str, tuple[Any, str]] = _Answers(_ANSWERS)


@_keeps_random_state
def check_answer(key: str, value: Any, answers: Mapping[str, tuple[Any, str]] | None = None) -> CheckResult:
    """Compare a short answer (a number, a bool or a word) with the book's (``answers``:
    key -> (expected, hint); by default the chapters' ``ANSWERS``). A hint may be one string
    or a pair (English, Japanese).

    A bool answer must be ``True`` or ``False`` (not 0 or 1); a number must not be a bool.
    """
    answers = ANSWERS if answers is None else answers
    if key not in answers:
        return _say(False, _tr(f"unknown exercise key {key!r}; known: {', '.join(sorted(answers))}",
                               f"練習問題のキー {key!r} はありません。使えるキー：{', '.join(sorted(answers))}"))
    expected, hint = answers[key]
    hint = _tr(*hint) if isinstance(hint, tuple) else hint
    if value is None or value is ...:
        return _say(False, _tr(f"no answer yet for {key!r}. Replace the ... with your value.",
                               f"{key!r} の答えがまだありません。... を答えの値に置き換えてください。"))
    value = _plain(value)
    kind = type(value).__name__
    if isinstance(expected, bool):
        if not isinstance(value, bool):
            return _say(False, _tr(f"{key} expects True or False; got the {kind} {_short(value)}. "
                                   f"Hint: write the answer as True or False, not as 0 or 1.",
                                   f"{key} の答えは True か False です。受け取ったのは {kind} の {_short(value)} "
                                   f"です。ヒント：0 や 1 ではなく、True か False で答えてください。"))
        ok = value == expected
    elif isinstance(expected, str):
        if not isinstance(value, str):
            return _say(False, _tr(f"{key} expects a word in quotes, such as one of the names in the "
                                   f"question; got the {kind} {_short(value)}.",
                                   f"{key} の答えは、問題文に出てくる名前のような、引用符で囲んだ単語です。"
                                   f"受け取ったのは {kind} の {_short(value)} です。"))
        ok = value.strip().lower() == expected
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return _say(False, _tr(f"{key} expects a number; got the {kind} {_short(value)}.",
                                   f"{key} の答えは数値です。受け取ったのは {kind} の {_short(value)} です。"))
        if math.isnan(value):
            return _say(False, _tr(f"{key} is NaN. Hint: {hint}", f"{key} が NaN です。ヒント：{hint}"))
        ok = value == expected
    if ok:
        shown = f"{value:,}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
        return _say(True, _tr(f"{key} = {value!r}.", f"{key} は {shown} です。"))
    if isinstance(expected, numbers.Real) and not isinstance(expected, bool):
        high = value > expected
        shown = f"{value:,}" if float(value).is_integer() else f"{value:,.4g}"
        return _say(False, _tr(f"{shown} is {'too high' if high else 'too low'} for {key}. Hint: {hint}",
                               f"{key} の答えとして {shown} は{'大きすぎ' if high else '小さすぎ'}ます。"
                               f"ヒント：{hint}"))
    return _say(False, _tr(f"{_short(value)} is not the answer for {key}. Hint: {hint}",
                           f"{_short(value)} は {key} の答えではありません。ヒント：{hint}"))


# --- chapter 1 -------------------------------------------------------------------------------

def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` is a view of ``b``'s storage (no copy was made)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@_keeps_random_state
def check_queries(cls: Callable[[int, int], nn.Module]) -> CheckResult:
    """``cls(num_queries, hidden_size)`` must build a module whose only parameter is a (1, Q, D)
    tensor drawn from N(0, 0.02²), and whose ``forward(batch)`` returns it for the batch as a
    view (``expand``: no copy), with the gradients of every image reaching the parameter."""
    name = getattr(cls, "__name__", _tr("your class", "あなたのクラス"))
    torch.manual_seed(0)
    failed, module = _call(name, cls, 32, 768)
    if failed is not None:
        return failed
    if not isinstance(module, nn.Module):
        return _say(False, _tr(f"{name}(32, 768) is a {type(module).__name__}, not an nn.Module.",
                               f"{name}(32, 768) は {type(module).__name__} で、nn.Module ではありません。"))
    params = list(module.parameters())
    if len(params) != 1:
        return _say(False, _tr(f"{name} holds {len(params)} parameters; the queries are one nn.Parameter "
                               f"of shape (1, Q, D).",
                               f"{name} のパラメータは {len(params)} 個です。クエリは形状 (1, Q, D) の "
                               f"nn.Parameter 1 つです。"))
    weight = params[0]
    if tuple(weight.shape) != (1, 32, 768):
        return _say(False, _tr(f"the parameter has shape {tuple(weight.shape)}; expected (1, 32, 768) = (1, Q, D). "
                               f"Hint: the leading 1 lets one set of queries serve every image in a batch.",
                               f"パラメータの形状が {tuple(weight.shape)} です。正しい形状は (1, 32, 768) = "
                               f"(1, Q, D) です。ヒント：先頭の 1 があるので、1 組のクエリをバッチ内のすべての"
                               f"画像で共有できます。"))
    values = weight.detach().float()
    std, mean = float(values.std()), float(values.mean())
    if not (0.018 < std < 0.022 and abs(mean) < 0.002):
        return _say(False, _tr(f"the queries have mean {mean:.2g} and std {std:.2g}; LAVIS draws them from "
                               f"N(0, 0.02²). Hint: nn.init.normal_(weight, mean=0.0, std=0.02).",
                               f"クエリの平均は {mean:.2g}、標準偏差は {std:.2g} です。LAVIS はクエリを "
                               f"N(0, 0.02²) からサンプリングします。ヒント："
                               f"nn.init.normal_(weight, mean=0.0, std=0.02)。"))
    within_one_std = float(((values - mean).abs() < std).float().mean())  # 0.683 for a normal
    if not 0.65 < within_one_std < 0.72:
        return _say(False, _tr(f"the queries have std 0.02 but are not normal: {within_one_std:.0%} of them lie "
                               f"within one std of the mean, where a normal distribution has 68%. "
                               f"Hint: nn.init.normal_(weight, mean=0.0, std=0.02), not uniform_.",
                               f"クエリの標準偏差は 0.02 ですが、正規分布ではありません。平均から 1 標準偏差以内に"
                               f"あるのは {within_one_std:.0%} で、正規分布なら 68% です。ヒント：uniform_ ではなく "
                               f"nn.init.normal_(weight, mean=0.0, std=0.02) を使いましょう。"))
    failed, out = _call(f"{name}.forward", module, 3)
    if failed is None:
        failed = _same_shape(f"{name}(3)", out, torch.empty(3, 32, 768), "(B, Q, D)")
    if failed is not None:
        return failed
    if not all(torch.equal(out[b], weight[0]) for b in range(3)):
        return _say(False, _tr("every image in the batch must get the same queries: out[b] == weight[0].",
                               "バッチ内のすべての画像が、同じクエリを受け取る必要があります（out[b] == weight[0]）。"))
    if not out.requires_grad:
        return _say(False, _tr("the output carries no gradients back to the parameter (it is detached, or "
                               "made from .data). Hint: return self.weight.expand(batch_size, -1, -1).",
                               "出力から勾配がパラメータに戻りません（detach されているか、.data から作られて"
                               "います）。ヒント：return self.weight.expand(batch_size, -1, -1) と書きましょう。"))
    out.sum().backward()
    if weight.grad is None or not torch.allclose(weight.grad, torch.full_like(weight, 3.0)):
        return _say(False, _tr("the batch's gradients do not reach the parameter (or not all of them). "
                               "Hint: weight.expand(batch, -1, -1) keeps the graph and copies nothing.",
                               "バッチの勾配がパラメータに届いていません（または一部しか届いていません）。"
                               "ヒント：weight.expand(batch, -1, -1) なら、計算グラフを保ったまま何もコピーしません。"))
    if not _shares_memory(out, weight):
        return _say(False, _tr("the batch is a copy of the queries: it does not share the parameter's memory. "
                               "Hint: use .expand(batch_size, -1, -1), which returns a view; .repeat(), "
                               "torch.cat and .contiguous() copy.",
                               "バッチがクエリのコピーになっていて、パラメータとメモリを共有していません。"
                               "ヒント：ビューを返す .expand(batch_size, -1, -1) を使いましょう。.repeat()、"
                               "torch.cat、.contiguous() はコピーを作ります。"))
    return _say(True, _tr("one (1, Q, D) parameter, N(0, 0.02²), shared by the batch as a view (no copy).",
                          "N(0, 0.02²) で初期化した (1, Q, D) のパラメータ 1 つを、バッチがビューとして"
                          "（コピーせずに）共有しています。"))


@_keeps_random_state
def check_equivariance_test(fn: Callable) -> CheckResult:
    """``fn(f, x, perm)`` must return True when ``f(x[:, perm])`` equals ``f(x)[:, perm]``."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
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

    cases = [(mixing, True, _tr("self-attention without positions", "位置情報のないセルフアテンション")),
             (pooled, True, _tr("a per-token map plus a mean", "トークンごとの写像に平均を足したもの")),
             (with_positions, False, _tr("self-attention after adding position embeddings",
                                         "位置埋め込みを加えた後のセルフアテンション"))]
    for f, expected, label in cases:
        failed, got = _call(name, fn, f, x.clone(), perm.clone())
        if failed is not None:
            return failed
        got = _plain(got)
        if isinstance(got, torch.Tensor):
            return _say(False, _tr(f"{name} returns a tensor of shape {tuple(got.shape)}; it should return one "
                                   f"True or False. Hint: torch.allclose(f(x[:, perm]), f(x)[:, perm]) compares "
                                   f"all entries at once.",
                                   f"{name} は形状 {tuple(got.shape)} のテンソルを返しています。True か False を "
                                   f"1 つだけ返す必要があります。ヒント：torch.allclose(f(x[:, perm]), f(x)[:, perm]) "
                                   f"ならすべての要素を一度に比較できます。"))
        if not isinstance(got, bool):
            return _say(False, _tr(f"{name} returns {_short(got)}; it should return True or False.",
                                   f"{name} は {_short(got)} を返しています。True か False を返す必要があります。"))
        if got != expected:
            return _say(False, _tr(f"for {label} your test says {got!r}; it should say {expected}. "
                                   f"Hint: compare f(x[:, perm]) with f(x)[:, perm] using torch.allclose.",
                                   f"{label}に対して、あなたのテストは {got!r} と答えていますが、正しくは "
                                   f"{expected} です。ヒント：f(x[:, perm]) と f(x)[:, perm] を torch.allclose で"
                                   f"比較しましょう。"))
    return _say(True, _tr("your test tells order-free maps from maps that use positions.",
                          "あなたのテストは、順序によらない写像と位置を使う写像を見分けられています。"))


# --- chapter 2 -------------------------------------------------------------------------------

def _attention_inputs():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = torch.rand(2, 1, 5, 7) > 0.4
    # every row sees at least one key and hides at least one, so that the inverted mask is a
    # mask too (a row that hides every key gives NaN)
    mask[..., 0] = True
    mask[..., -1] = False
    return q, k, v, mask


def _attention_output(name: str, got, expected: torch.Tensor, num_keys: int):
    """The output tensor from what the learner returned, or a failure with a hint."""
    if isinstance(got, (tuple, list)):
        tensors = [t for t in got if isinstance(t, torch.Tensor)]
        if (len(tensors) == 2 and tuple(tensors[1].shape) == tuple(expected.shape)
                and tuple(tensors[0].shape) != tuple(expected.shape)):
            return _say(False, _tr(f"{name} returns (probabilities, output); return the output first: "
                                   f"(output, probabilities).",
                                   f"{name} は (probabilities, output) の順で返しています。出力を先にして "
                                   f"(output, probabilities) を返しましょう。")), None
        got = _first(got)
    if isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(expected.shape[:-1]) + (num_keys,):
        return _say(False, _tr(f"{name} returned shape {tuple(got.shape)}, the shape of the probabilities "
                               f"(B, H, L_q, L_k). Hint: the output is probabilities @ v.",
                               f"{name} が返した形状 {tuple(got.shape)} は、確率 (B, H, L_q, L_k) の形状です。"
                               f"ヒント：出力は probabilities @ v です。")), None
    return _same_shape(name, got, expected, "(B, H, L_q, d)"), got


@_keeps_random_state
def check_attention(fn: Callable) -> CheckResult:
    """``fn(q, k, v, mask=None)`` must equal softmax(q kᵀ / √d) v, with a bool mask (True = may attend).
    It may return the output alone or (output, probabilities)."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    q, k, v, mask = _attention_inputs()
    scores = q @ k.transpose(-2, -1)  # (B, H, L_q, L_k), not yet scaled
    expected, _ = attention_from_scratch(q, k, v)
    failed, got = _call(name, fn, q.clone(), k.clone(), v.clone())
    if failed is not None:
        return failed
    failed, got = _attention_output(name, got, expected, k.shape[-2])
    if failed is not None:
        return failed
    if not torch.allclose(got, expected, atol=1e-5):
        wrong = [
            (torch.softmax(scores, dim=-1) @ v, _tr("the scores are not scaled. Hint: divide q @ kᵀ by √d, "
                                                    "d = q.shape[-1].",
                                                    "スコアがスケーリングされていません。ヒント：q @ kᵀ を √d "
                                                    "(d = q.shape[-1]) で割りましょう。")),
            (torch.softmax(scores / 8, dim=-1) @ v, _tr("the scores are divided by d; the scale is √d, "
                                                        "math.sqrt(q.shape[-1]).",
                                                        "スコアを d で割っています。スケールは √d、つまり "
                                                        "math.sqrt(q.shape[-1]) です。")),
            (torch.softmax(scores / math.sqrt(8), dim=-2) @ v, _tr("the softmax runs over the wrong axis. Hint: "
                                                                   "each row (one query) is a distribution over "
                                                                   "the keys: softmax(dim=-1).",
                                                                   "softmax をかける軸が違います。ヒント：各行"
                                                                   "（1 つのクエリ）はキー上の分布なので "
                                                                   "softmax(dim=-1) です。")),
        ]
        for candidate, message in wrong:
            if torch.allclose(got, candidate, atol=1e-5):
                return _say(False, message)
        gap = float((got - expected).abs().max())
        return _say(False, _tr(f"the output differs from softmax(q kᵀ / √d) v by up to {gap:.3g}.",
                               f"出力が softmax(q kᵀ / √d) v と最大 {gap:.3g} ずれています。"))
    failed, got = _call(name, fn, q.clone(), k.clone(), v.clone(), mask.clone())
    if failed is not None:
        return failed
    expected_masked, _ = attention_from_scratch(q, k, v, mask)
    failed, got = _attention_output(name, got, expected_masked, k.shape[-2])
    if failed is not None:
        return failed
    if not torch.allclose(got, expected_masked, atol=1e-5):
        scaled = scores / math.sqrt(8)
        inverted, _ = attention_from_scratch(q, k, v, ~mask)
        zero_scores = scaled.masked_fill(~mask, 0.0).softmax(-1) @ v
        zeroed_after = scaled.softmax(-1).masked_fill(~mask, 0.0) @ v
        slips = (  # what each usual mistake computes, and its hint
            (expected, _tr("the mask is ignored. Hint: scores.masked_fill(~mask, float('-inf')) before the softmax.",
                           "マスクが無視されています。ヒント：softmax の前に "
                           "scores.masked_fill(~mask, float('-inf')) を適用しましょう。")),
            (inverted, _tr("the mask is inverted: your function hides the keys where mask is True. "
                           "True means the key MAY be attended to: fill the scores where ~mask.",
                           "マスクが反転しています。あなたの関数は mask が True のキーを隠しています。True は"
                           "「そのキーに注意を向けてよい」という意味です。~mask の位置のスコアを埋めましょう。")),
            (zero_scores, _tr("hidden scores are set to 0, which still gets weight e⁰ = 1 in the softmax. "
                              "Hint: fill them with float('-inf').",
                              "隠すスコアを 0 にしていますが、softmax では e⁰ = 1 の重みが残ります。ヒント："
                              "float('-inf') で埋めましょう。")),
            (zeroed_after, _tr("the hidden weights are zeroed after the softmax, so the visible ones no "
                               "longer sum to 1. Hint: hidden scores get -inf before the softmax.",
                               "softmax の後で隠す重みを 0 にしているので、見える重みの和が 1 になりません。"
                               "ヒント：softmax の前に、隠すスコアを -inf にしましょう。")),
        )
        for computed, hint in slips:
            if torch.allclose(got, computed, atol=1e-5):
                return _say(False, hint)
        return _say(False, _tr("with a mask, the output differs. Hint: hidden keys get -inf before the softmax "
                               "(not after), so the visible ones still sum to 1.",
                               "マスクありのときの出力が違います。ヒント：隠すキーは softmax の（後ではなく）前に "
                               "-inf にします。そうすれば見える重みの和は 1 のままです。"))
    return _say(True, _tr("scaled dot-product attention, with and without a mask.",
                          "マスクあり・なしの両方で、スケール化内積アテンションを計算できています。"))


@_keeps_random_state
def check_split_heads(split: Callable, merge: Callable, num_heads: int = 4) -> CheckResult:
    """``split(x, h)``: (B, L, h·d) -> (B, h, L, d); ``merge(x)``: back to (B, L, h·d).
    Tried with ``num_heads`` heads and with half as many."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    for h in dict.fromkeys((num_heads, max(1, num_heads // 2))):
        expected = rearrange(x, "b l (h d) -> b h l d", h=h)
        failed, got = _call(getattr(split, "__name__", "split"), split, x.clone(), h)
        if failed is None:
            failed = _same_shape(f"split(x, {h})", got, expected, "(B, H, L, d)")
        if failed is not None:
            return failed
        if not torch.equal(got, expected):
            if torch.equal(got, rearrange(x, "b l (d h) -> b h l d", h=h)):
                return _say(False, _tr("the heads are interleaved. Hint: head h owns the contiguous slice "
                                       "x[..., h*d:(h+1)*d], so the pattern is '(h d)', not '(d h)'.",
                                       "ヘッドが交互に混ざっています。ヒント：ヘッド h は連続したスライス "
                                       "x[..., h*d:(h+1)*d] を持つので、パターンは '(d h)' ではなく '(h d)' です。"))
            if torch.equal(got, x.reshape(expected.shape)):
                return _say(False, _tr("a reshape alone to (B, H, L, d) mixes positions and channels. Hint: split "
                                       "the last axis into (H, d), then move H before L: "
                                       "rearrange(x, 'b l (h d) -> b h l d', h=num_heads).",
                                       "(B, H, L, d) への reshape だけでは、位置とチャネルが混ざります。ヒント："
                                       "最後の軸を (H, d) に分けてから、H を L の前に移しましょう。"
                                       "rearrange(x, 'b l (h d) -> b h l d', h=num_heads) です。"))
            return _say(False, _tr("split puts the wrong numbers in the heads. Hint: "
                                   "rearrange(x, 'b l (h d) -> b h l d', h=num_heads).",
                                   "split が各ヘッドに間違った値を入れています。ヒント："
                                   "rearrange(x, 'b l (h d) -> b h l d', h=num_heads)。"))
        failed, back = _call(getattr(merge, "__name__", "merge"), merge, expected.clone())
        if failed is None:
            failed = _same_shape("merge", back, x, "(B, L, H·d)")
        if failed is not None:
            return failed
        if not torch.equal(back, x):
            if torch.equal(back, expected.reshape(x.shape)):
                return _say(False, _tr("merge reshapes (B, H, L, d) straight to (B, L, H·d), which mixes heads and "
                                       "positions. Hint: move H next to d first: "
                                       "rearrange(x, 'b h l d -> b l (h d)').",
                                       "merge が (B, H, L, d) を直接 (B, L, H·d) に reshape しているため、ヘッドと"
                                       "位置が混ざります。ヒント：先に H を d の隣に移しましょう。"
                                       "rearrange(x, 'b h l d -> b l (h d)') です。"))
            return _say(False, _tr("merge(split(x)) is not x. Hint: rearrange(x, 'b h l d -> b l (h d)').",
                                   "merge(split(x)) が x に戻りません。ヒント：rearrange(x, 'b h l d -> b l (h d)')。"))
    return _say(True, _tr("split and merge are exact inverses, with head h owning channels h·d to (h+1)·d.",
                          "split と merge は互いに正確な逆変換で、ヘッド h がチャネル h·d から (h+1)·d までを"
                          "受け持っています。"))


# --- chapter 3 -------------------------------------------------------------------------------

_by_hand = _refuse("calls the module itself. Hint: compute it from attn.query, attn.key and attn.value "
                   "yourself; attn(...) is what your function should reproduce.",
                   "はモジュール自体を呼び出しています。ヒント：attn.query、attn.key、attn.value を使って"
                   "自分で計算しましょう。attn(...) は、あなたの関数が再現すべき結果そのものです。")


@_keeps_random_state
def check_cross_attention(fn: Callable) -> CheckResult:
    """``fn(queries, image, attn)`` must compute ``attn``'s cross-attention by hand: queries
    (B, Q, D) read image tokens (B, N, C) through ``attn.query``, ``attn.key``, ``attn.value``."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    torch.manual_seed(0)
    attn = MultiHeadAttention(hidden_size=32, num_heads=4, context_size=24).eval()
    queries, image = torch.randn(2, 5, 32), torch.randn(2, 9, 24)
    with torch.no_grad():
        expected, _, _ = attn(queries, image)
        attn.forward = _by_hand  # the exercise is to write what forward does
        failed, got = _call(name, fn, queries.clone(), image.clone(), attn)
    del attn.forward
    if failed is not None:
        return failed
    got = _first(got)
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (2, 4, 5, 8):
        return _say(False, _tr(f"{name} returned shape (2, 4, 5, 8) = (B, H, Q, d): the heads are not merged. "
                               f"Hint: rearrange(out, 'b h q d -> b q (h d)').",
                               f"{name} が返した形状は (2, 4, 5, 8) = (B, H, Q, d) で、ヘッドが結合されていません。"
                               f"ヒント：rearrange(out, 'b h q d -> b q (h d)')。"))
    failed = _same_shape(name, got, expected, "(B, Q, D)")
    if failed is not None:
        return failed
    if not torch.allclose(got, expected, atol=1e-5):
        with torch.no_grad():
            split = "b l (h d) -> b h l d"
            q = rearrange(attn.query(queries), split, h=4)  # (B, H, Q, d)
            k = rearrange(attn.key(image), split, h=4)  # (B, H, N, d)
            v = rearrange(attn.value(image), split, h=4)
            scores = q @ k.transpose(-2, -1)  # (B, H, Q, N), unscaled
            one_head = attn.query(queries) @ attn.key(image).transpose(-2, -1)  # (B, Q, N)
            wrong = [
                ((scores / math.sqrt(32)).softmax(-1) @ v, _tr("scaled by √D instead of √d. Hint: each head "
                                                               "scales by its own width, attn.head_dim.",
                                                               "√d ではなく √D でスケーリングしています。ヒント："
                                                               "各ヘッドは自分の幅 attn.head_dim でスケーリングします。")),
                ((scores / math.sqrt(8)).softmax(-2) @ v, _tr("the softmax runs over the queries. Hint: each "
                                                              "query's weights are a distribution over the "
                                                              "image tokens: softmax(dim=-1).",
                                                              "softmax をクエリの軸にかけています。ヒント：各クエリの"
                                                              "重みは画像トークン上の分布なので softmax(dim=-1) です。")),
                (None, _tr("the heads are missing: one attention over the full width. Hint: split q, k and v "
                           "into attn.num_heads heads, attend per head, then merge.",
                           "ヘッドがありません。全幅で 1 つのアテンションになっています。ヒント：q、k、v を "
                           "attn.num_heads 個のヘッドに分け、ヘッドごとにアテンションを計算してから結合しましょう。")),
            ]
            single = [(one_head / math.sqrt(s)).softmax(-1) @ attn.value(image) for s in (8, 32)]
        for candidate, message in wrong:
            if candidate is None:
                if any(torch.allclose(got, s, atol=1e-5) for s in single):
                    return _say(False, message)
            elif torch.allclose(got, rearrange(candidate, "b h l d -> b l (h d)"), atol=1e-5):
                return _say(False, message)
        right = (scores / math.sqrt(8)).softmax(-1) @ v  # (B, H, Q, d)
        if torch.allclose(got, rearrange(right, "b h l d -> b l (d h)"), atol=1e-5):
            return _say(False, _tr("the heads are merged interleaved. Hint: head h owns channels h·d to (h+1)·d: "
                                   "rearrange(out, 'b h q d -> b q (h d)'), not '(d h)'.",
                                   "ヘッドが交互に混ざった順で結合されています。ヒント：ヘッド h が持つのはチャネル "
                                   "h·d から (h+1)·d までです。'(d h)' ではなく rearrange(out, 'b h q d -> b q (h d)') "
                                   "です。"))
        return _say(False, _tr("the output differs from the module's. Hint: q from the queries, k and v "
                               "from the image; split heads; softmax over the image tokens; merge heads.",
                               "出力がモジュールの出力と違います。ヒント：q はクエリから、k と v は画像から作り、"
                               "ヘッドに分け、画像トークン上で softmax をとり、ヘッドを結合します。"))
    return _say(True, _tr("queries read the image: Q rows, N image tokens per head.",
                          "クエリが画像を読んでいます。マップはヘッドごとに、Q 行 × N 列です。"))



def _query_side(attn: MultiHeadAttention, queries: torch.Tensor, image: torch.Tensor, *, scale=None,
                value_bias=True, dim=-1, heads="(h d) c -> h d c") -> torch.Tensor:
    """``attn``'s cross-attention from the query side, or what a usual slip computes instead
    (the keyword arguments)."""
    h = attn.num_heads
    q = rearrange(attn.query(queries), "b q (h d) -> b h q d", h=h)  # (B, H, Q, d)
    w_k = rearrange(attn.key.weight, heads, h=h)  # (H, d, C)
    w_v = rearrange(attn.value.weight, heads, h=h)  # (H, d, C)
    x = image[:, None]  # (B, 1, N, C)
    scores = (q @ w_k) @ x.transpose(-2, -1) / (scale or math.sqrt(attn.head_dim))  # (B, H, Q, N)
    out = rearrange((scores.softmax(dim) @ x) @ w_v.transpose(-2, -1), "b h q d -> b q (h d)")
    return out + attn.value.bias if value_bias else out


@_keeps_random_state
def check_query_side_attention(fn: Callable) -> CheckResult:
    """``fn(queries, image, attn)`` must compute ``attn``'s cross-attention from the query side:
    queries (B, Q, D), image tokens (B, N, C), the scores as (q W_k) xᵀ, W_v and its bias after
    the weighted sum, and no projection of the image tokens. Compared with the plain form."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    for hidden, heads, width, q_len, n in ((32, 4, 24, 5, 9), (24, 2, 40, 3, 6)):
        torch.manual_seed(hidden)
        attn = MultiHeadAttention(hidden, heads, context_size=width).eval()
        queries, image = torch.randn(2, q_len, hidden), torch.randn(2, n, width)
        with torch.no_grad(), cross_attention_form("plain"):
            expected, _, _ = attn(queries, image)
            attn.forward = _refuse("calls the module itself. Hint: write the form from attn.query, "
                                   "attn.key.weight, attn.value.weight and attn.value.bias.",
                                   "はモジュール自体を呼び出しています。ヒント：attn.query、attn.key.weight、"
                                   "attn.value.weight、attn.value.bias を使って、この形を書きましょう。")
            attn.key.forward = attn.value.forward = _refuse(
                "projects the image tokens with attn.key or attn.value, as the plain form does. Hint: "
                "from the query side the image tokens meet only the weights: fold attn.key.weight into "
                "the queries, and apply attn.value.weight after the weighted sum.",
                "は通常の形と同じように、画像トークンを attn.key や attn.value で射影しています。ヒント："
                "クエリ側から計算すると、画像トークンはクエリ側のベクトルと掛け合わされるだけです。"
                "attn.key.weight は先にクエリに掛け、attn.value.weight は重み付き和の後に掛けましょう。")
            failed, got = _call(name, fn, queries.clone(), image.clone(), attn)
        del attn.forward, attn.key.forward, attn.value.forward
        if failed is not None:
            return failed
        got = _first(got)
        per_head = {
            (2, heads, q_len, hidden // heads): _tr("the heads are not merged. Hint: "
                                                    "rearrange(out, 'b h q d -> b q (h d)').",
                                                    "ヘッドが結合されていません。ヒント："
                                                    "rearrange(out, 'b h q d -> b q (h d)')。"),
            (2, heads, q_len, width): _tr("the weighted sum of the image tokens is still C wide: W_v comes "
                                          "after it. Hint: multiply each head's sum by its slice of "
                                          "attn.value.weight, transposed to (C, d).",
                                          "画像トークンの重み付き和の幅が C のままです。W_v はその後に掛けます。"
                                          "ヒント：各ヘッドの和に、attn.value.weight のうちそのヘッドの部分を "
                                          "(C, d) に転置して掛けましょう。"),
            (2, heads, q_len, hidden): _tr("each head applied all of attn.value.weight. Hint: head h takes "
                                           "only its own d rows of it, h·d to (h+1)·d.",
                                           "各ヘッドが attn.value.weight の全体を掛けています。ヒント：ヘッド h "
                                           "が使うのは、そのうち自分の d 行（h·d 行目から (h+1)·d 行目の手前"
                                           "まで）だけです。"),
        }
        if isinstance(got, torch.Tensor) and tuple(got.shape) in per_head:
            return _say(False, _tr(f"{name} returned shape {tuple(got.shape)}: {per_head[tuple(got.shape)]}",
                                   f"{name} が返した形状は {tuple(got.shape)} です。{per_head[tuple(got.shape)]}"))
        failed = _same_shape(name, got, expected, "(B, Q, D)")
        if failed is not None:
            return failed
        if torch.allclose(got, expected, atol=1e-5):
            continue
        slips = [
            (dict(scale=1.0), _tr("the scores are not scaled. Hint: divide them by √d, d = attn.head_dim, as "
                                  "in the plain form: folding W_k into the queries changes no score.",
                                  "スコアがスケーリングされていません。ヒント：通常の形と同じく √d "
                                  "(d = attn.head_dim) で割りましょう。W_k を先にクエリに掛けても、スコアは"
                                  "変わりません。")),
            (dict(scale=math.sqrt(hidden)), _tr("scaled by √D instead of √d. Hint: each head scales by its "
                                                "own width, attn.head_dim.",
                                                "√d ではなく √D でスケーリングしています。ヒント：各ヘッドは"
                                                "自分の幅 attn.head_dim でスケーリングします。")),
            (dict(value_bias=False), _tr("the value bias is missing. Hint: in the plain form every value "
                                         "carries attn.value.bias, and each row of weights sums to 1, so "
                                         "it comes out unchanged: add it at the end.",
                                         "バリューのバイアスがありません。ヒント：通常の形ではどのバリューも "
                                         "attn.value.bias を含み、重みの各行の和は 1 なので、バイアスはそのまま"
                                         "出力に残ります。最後に足しましょう。")),
            (dict(dim=-2), _tr("the softmax runs over the queries. Hint: each query's weights are a "
                               "distribution over the image tokens: softmax(dim=-1).",
                               "softmax をクエリの軸にかけています。ヒント：各クエリの重みは画像トークン上の"
                               "分布なので softmax(dim=-1) です。")),
            (dict(heads="(d h) c -> h d c"), _tr("the heads' slices of the weights are interleaved. Hint: "
                                                 "head h owns rows h·d to (h+1)·d of attn.key.weight and "
                                                 "attn.value.weight: '(h d) c -> h d c'.",
                                                 "重みをヘッドごとに切り分けるとき、行が交互に混ざっています。"
                                                 "ヒント：ヘッド h が持つのは、attn.key.weight と "
                                                 "attn.value.weight の h·d 行目から (h+1)·d 行目の手前までです。"
                                                 "パターンは '(h d) c -> h d c' です。")),
        ]
        with torch.no_grad():
            for flags, message in slips:
                if torch.allclose(got, _query_side(attn, queries, image, **flags), atol=1e-5):
                    return _say(False, message)
        gap = float((got - expected).abs().max())
        return _say(False, _tr(f"the output differs from the plain form's by up to "
                               f"{gap:.3g}. Hint: per head, the scores "
                               f"(q W_k) xᵀ / √d, a softmax over the image tokens, then (P x) W_vᵀ; merge the "
                               f"heads and add attn.value.bias.",
                               f"出力が通常の形と最大 {gap:.3g} ずれています。ヒント：ヘッドごとにスコア "
                               f"(q W_k) xᵀ / √d、画像トークン上の softmax、(P x) W_vᵀ を順に計算し、ヘッドを"
                               f"結合してから attn.value.bias を足します。"))
    return _say(True, _tr("the plain form's numbers, and the image tokens met no projection of their own.",
                          "通常の形と同じ値が得られ、しかも画像トークン自体は一度も射影されていません。"))

# --- chapter 4 -------------------------------------------------------------------------------

@_keeps_random_state
def check_cross_layers(fn: Callable) -> CheckResult:
    """``fn(num_layers, frequency)`` must list the layers that hold cross-attention."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    for layers, freq in ((12, 2), (6, 1), (4, 3), (5, 2)):
        expected = [i for i in range(layers) if i % freq == 0]
        failed, got = _call(name, fn, layers, freq)
        if failed is not None:
            return failed
        if got is None:
            return _returned_none(name)
        try:
            got = [_plain(i) for i in got]
        except TypeError:
            return _say(False, _tr(f"{name}({layers}, {freq}) returned the {type(got).__name__} {_short(got)}; "
                                   f"expected a list of layer indices such as {expected}.",
                                   f"{name}({layers}, {freq}) は {type(got).__name__} の {_short(got)} を返しました。"
                                   f"{expected} のような層番号のリストが必要です。"))
        if got != expected:
            if len(got) == layers and all(isinstance(i, bool) for i in got):
                hint = _tr("return the indices of the layers that hold it, not one True/False per layer",
                           "層ごとの True/False ではなく、クロスアテンションを持つ層の番号を返しましょう")
            elif got == [i for i in range(layers) if (i + 1) % freq == 0]:
                hint = _tr("BLIP-2 starts counting at layer 0: layer_index % frequency == 0",
                           "BLIP-2 は層を第 0 層から数えます。条件は layer_index % frequency == 0 です")
            else:
                hint = _tr("a layer i holds cross-attention when i % frequency == 0",
                           "第 i 層がクロスアテンションを持つのは、i % frequency == 0 のときです")
            return _say(False, _tr(f"{name}({layers}, {freq}) = {got}; expected {expected}. Hint: {hint}.",
                                   f"{name}({layers}, {freq}) = {got} ですが、正しくは {expected} です。"
                                   f"ヒント：{hint}。"))
    return _say(True, _tr("cross-attention in layers 0, f, 2f, ...: six of BLIP-2's twelve.",
                          "クロスアテンションは第 0, f, 2f, … 層、つまり f 層ごと（f は引数 frequency）に"
                          "あります。BLIP-2 では 12 層のうち 6 層です。"))


@_keeps_random_state
def check_add_norm(fn: Callable) -> CheckResult:
    """``fn(x, residual, dense, layer_norm)`` must be BERT's post-LN step (dropout left out)."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    torch.manual_seed(0)
    dense, norm = nn.Linear(16, 8), nn.LayerNorm(8)
    nn.init.normal_(norm.weight, 1.0, 0.3)
    nn.init.normal_(norm.bias, 0.0, 0.3)
    x, residual = torch.randn(2, 3, 16), torch.randn(2, 3, 8)
    with torch.no_grad():
        expected = norm(dense(x) + residual)
        failed, got = _call(name, fn, x.clone(), residual.clone(), dense, norm)
        if failed is None:
            failed = _same_shape(name, got, expected, "(B, L, D)")
        if failed is not None:
            return failed
        if not torch.allclose(got, expected, atol=1e-5):
            _, again = _call(name, fn, x.clone(), residual.clone(), dense, norm)
            if isinstance(again, torch.Tensor) and not torch.equal(again, got):
                return _say(False, _tr("two calls with the same inputs gave different results: dropout is on. "
                                       "Hint: the exercise leaves dropout out: LayerNorm(dense(x) + residual).",
                                       "同じ入力で 2 回呼ぶと結果が変わります。ドロップアウトが有効になっています。"
                                       "ヒント：この練習問題ではドロップアウトを省き、"
                                       "LayerNorm(dense(x) + residual) だけを計算します。"))
            if torch.allclose(got, norm(dense(x)), atol=1e-5):
                return _say(False, _tr("the residual is missing. Hint: add it before the LayerNorm.",
                                       "残差がありません。ヒント：LayerNorm の前に足しましょう。"))
            if torch.allclose(got, residual + norm(dense(x)), atol=1e-5):
                return _say(False, _tr("the LayerNorm comes before the sum, as in pre-LN transformers such as "
                                       "GPT-2. BERT and the Q-Former normalise after it: "
                                       "LayerNorm(dense(x) + residual).",
                                       "GPT-2 のような pre-LN の Transformer と同じく、LayerNorm が和の前に来て"
                                       "います。BERT と Q-Former は和の後で正規化します。"
                                       "LayerNorm(dense(x) + residual) です。"))
            return _say(False, _tr("the result differs from LayerNorm(dense(x) + residual).",
                                   "結果が LayerNorm(dense(x) + residual) と違います。"))
    return _say(True, _tr("post-LN: LayerNorm(dense(x) + residual), as in BERT.",
                          "BERT と同じ post-LN です：LayerNorm(dense(x) + residual)。"))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def query_path_formula(cfg: QFormerConfig, *, biases=True, norms=True, embedding_norm=True, image_width=None,
                       cross_every_layer=False, cross_one_based=False, text_ffn=False, text_embeddings=False,
                       query_tokens=False) -> int:
    """The query-path count, or what a typical mistake counts instead (the keyword flags)."""
    d, f, c = cfg.hidden_size, cfg.intermediate_size, image_width or cfg.encoder_hidden_size

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + (n_out if biases else 0)

    norm = 2 * d if norms else 0
    self_attention = 4 * linear(d, d) + norm
    cross = 2 * linear(d, d) + 2 * linear(c, d) + norm
    ffn = linear(d, f) + linear(f, d) + norm
    n, freq = cfg.num_hidden_layers, cfg.cross_attention_frequency
    if cross_every_layer:
        n_cross = n
    elif cross_one_based:
        n_cross = sum((i + 1) % freq == 0 for i in range(n))
    else:
        n_cross = sum(i % freq == 0 for i in range(n))
    total = (norm if embedding_norm else 0) + n * (self_attention + ffn) + n_cross * cross
    total += n * ffn if text_ffn else 0
    total += (cfg.vocab_size + cfg.max_position_embeddings) * d if text_embeddings else 0
    total += cfg.num_query_tokens * d if query_tokens else 0
    return total


_QUERY_PATH_MISTAKES = [  # (what the mistake counts, (its hint in English, in Japanese))
    (dict(query_tokens=True), ("leave the query tokens out: they are counted separately.",
                               "クエリトークンは別に数えるので、含めないでください。")),
    (dict(text_ffn=True), ("the text FFN is not on the query path: the queries go through the query FFN only.",
                           "テキスト用の FFN はクエリの経路にありません。クエリが通るのはクエリ用の FFN だけです。")),
    (dict(text_embeddings=True), ("the word and position embeddings belong to the text, not to the query path.",
                                  "単語埋め込みと位置埋め込みはテキストのもので、クエリの経路には含まれません。")),
    (dict(cross_every_layer=True), ("only the layers with i % cross_attention_frequency == 0 hold "
                                    "cross-attention, not every layer.",
                                    "クロスアテンションを持つのはすべての層ではなく、"
                                    "i % cross_attention_frequency == 0 の層だけです。")),
    (dict(cross_one_based=True), ("cross-attention sits in layers 0, f, 2f, ...: i % frequency == 0, "
                                  "counting from 0.",
                                  "クロスアテンションは第 0, f, 2f, … 層、つまり f 層ごと"
                                  "（f は cross_attention_frequency）にあります。層は 0 から数え、条件は "
                                  "i % f == 0 です。")),
    (dict(image_width="hidden"), ("cross-attention keys and values read the image: Linear(encoder_hidden_size, "
                                  "hidden_size), not Linear(hidden_size, hidden_size).",
                                  "クロスアテンションのキーとバリューは画像を読みます。Linear(hidden_size, "
                                  "hidden_size) ではなく Linear(encoder_hidden_size, hidden_size) です。")),
    (dict(biases=False), ("every Linear has a bias too: n_in * n_out + n_out.",
                          "どの Linear にもバイアスがあります。パラメータ数は n_in * n_out + n_out です。")),
    (dict(norms=False), ("every block ends in a LayerNorm with a weight and a bias (2·D each), and the "
                         "embeddings have one too.",
                         "どのブロックも、重みとバイアスを持つ LayerNorm（1 つあたり 2·D）で終わります。"
                         "埋め込みにも 1 つあります。")),
    (dict(embedding_norm=False), ("add the embedding LayerNorm (2·D) that the queries pass through first.",
                                  "クエリが最初に通る、埋め込みの LayerNorm（2·D）を足しましょう。")),
]


@_keeps_random_state
def check_query_path_params(fn: Callable) -> CheckResult:
    """``fn(config)`` must count the query path: the embedding LayerNorm and, in every layer,
    self-attention, the query FFN and (where present) cross-attention. No text parts, no queries."""
    from ..qformer import QFormer

    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    configs = [QFormerConfig.blip2(), QFormerConfig.tiny(), QFormerConfig.tiny(cross_attention_frequency=3),
               QFormerConfig.tiny(num_hidden_layers=5, encoder_hidden_size=40)]
    right_for_blip2 = False
    for cfg in configs:
        with torch.device("meta"):
            model = QFormer(QFormerConfig(**{**cfg.to_dict(), "use_qformer_text_input": False}))
        expected = _count(model) - _count(model.query_tokens)
        failed, got = _call(name, fn, cfg)
        if failed is not None:
            return failed
        got = _plain(got)
        if got is None:
            return _returned_none(name)
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            return _say(False, _tr(f"{name} returned the {type(got).__name__} {_short(got)}; expected a number.",
                                   f"{name} は {type(got).__name__} の {_short(got)} を返しました。数値が必要です。"))
        if got == expected:
            right_for_blip2 = right_for_blip2 or cfg == configs[0]
            continue
        label = _tr("BLIP-2's config", "BLIP-2 の設定") if cfg == configs[0] else _tr(
            f"a config with {cfg.num_hidden_layers} layers, frequency {cfg.cross_attention_frequency}, "
            f"hidden {cfg.hidden_size}, image width {cfg.encoder_hidden_size}",
            f"層数 {cfg.num_hidden_layers}、クロスアテンションの頻度 {cfg.cross_attention_frequency}、"
            f"Q-Former の幅 {cfg.hidden_size}、画像の幅 {cfg.encoder_hidden_size} の設定")
        hint = None
        for flags, message in _QUERY_PATH_MISTAKES:
            if flags.get("image_width") == "hidden":
                flags = {**flags, "image_width": cfg.hidden_size}
                if cfg.hidden_size == cfg.encoder_hidden_size:
                    continue
            if got == query_path_formula(cfg, **flags):
                hint = _tr(*message)
                break
        if hint is None and right_for_blip2:
            hint = _tr("your count is right for BLIP-2 but not here: read every size from cfg (hidden_size, "
                       "intermediate_size, encoder_hidden_size, num_hidden_layers, cross_attention_frequency) "
                       "instead of writing BLIP-2's numbers.",
                       "BLIP-2 では正しい数ですが、この設定では違います。BLIP-2 の数値を直接書かずに、すべての"
                       "サイズを cfg から読みましょう（hidden_size、intermediate_size、encoder_hidden_size、"
                       "num_hidden_layers、cross_attention_frequency）。")
        if hint is None:
            hint = _tr("remember the biases and the LayerNorms (a weight and a bias each), and that "
                       "cross-attention keys and values take encoder_hidden_size inputs.",
                       "バイアスと LayerNorm（重みとバイアスを 1 つずつ持ちます）を忘れないでください。また、"
                       "クロスアテンションのキーとバリューの入力は encoder_hidden_size 次元です。")
        shown = f"{got:,}" if float(got).is_integer() else f"{got:,.1f}"
        return _say(False, _tr(f"for {label} you count {shown}; expected {expected:,}. Hint: {hint}",
                               f"{label}では {shown} と数えていますが、正しくは {expected:,} です。ヒント：{hint}"))
    return _say(True, _tr("your formula gives 105,137,664 for BLIP-2 and matches smaller configs too.",
                          "あなたの式では BLIP-2 の設定で 105,137,664 となり、より小さな設定でも正しい値と"
                          "一致します。"))


# --- chapter 5 -------------------------------------------------------------------------------

def _side(i: int, q: int) -> str:
    return _tr("query", "クエリ") if i < q else _tr("text", "テキスト")


def _mask_hint(mode: str, q: int, text_mask: torch.Tensor, b: int, i: int, j: int) -> tuple[str, str, str]:
    """What is wrong at cell (b, i, j) of a [queries; text] mask: (the row, what it should see, hint)."""
    padded_column = j >= q and not bool(text_mask[b, j - q])
    padded_row = i >= q and not bool(text_mask[b, i - q])
    expected = bool(build_attention_mask(mode, q, text_mask)[b, i, j])
    block = f"{_side(i, q)} → {_side(j, q)}"
    row = _tr(f"row {i} ({_side(i, q)})", f"行 {i}（{_side(i, q)}）")
    see = _tr(f"{'should' if expected else 'should not'} see "
              f"column {j} ({block} block{', a padded column' if padded_column else ''})",
              f"列 {j}（{block} ブロック{'、パディングされた列' if padded_column else ''}）"
              f"{'を見る必要があります' if expected else 'を見てはいけません'}")
    if padded_column:
        hint = _tr("padded text columns are hidden from every row, in every mode.",
                   "パディングされたテキストの列は、どのモードでもすべての行から隠されます。")
    elif padded_row:
        hint = _tr("a padded row keeps its mode's pattern (its output is computed and never used); only the "
                   "padded columns are closed. A row that sees nothing would give NaN.",
                   "パディングされた行もそのモードのパターンのままです（出力は計算されますが使われません）。"
                   "閉じるのはパディングされた列だけです。何も見えない行があると NaN になります。")
    elif mode == "itc":
        hint = _tr("ITC is unimodal: queries see only queries, text sees only text.",
                   "ITC はユニモーダルです。クエリはクエリだけを、テキストはテキストだけを見ます。")
    elif mode == "itm":
        hint = _tr("ITM is bi-directional: everyone sees every real token.",
                   "ITM は双方向です。どの位置も、パディング以外のすべてのトークンを見ます。")
    elif i < q and j < q:
        hint = _tr("in ITG the queries see all the queries, both ways: only the text is causal.",
                   "ITG でも、クエリはすべてのクエリを双方向に見ます。因果的なのはテキストだけです。")
    elif i < q:
        hint = _tr("in ITG the queries see only the queries (they must not peek at the caption).",
                   "ITG では、クエリはクエリだけを見ます（キャプションを盗み見てはいけません）。")
    elif j < q:
        hint = _tr("in ITG every text token sees all the queries.",
                   "ITG では、どのテキストトークンもすべてのクエリを見ます。")
    else:
        hint = _tr("in ITG text token i sees text tokens 0..i (itself and earlier), never later ones.",
                   "ITG では、テキストトークン i が見るのはテキストトークン 0..i（自分自身とそれより前）"
                   "だけです。後ろのトークンは見ません。")
    return row, see, hint


def _bool_mask(name: str, got, expected: torch.Tensor, what: str, label: str):
    """A failure unless ``got`` is a bool tensor of ``expected``'s shape."""
    if got is None:
        return _returned_none(name)
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else _tr(
            f"a {type(got).__name__}", f"{type(got).__name__}（テンソルではありません）")
        return _say(False, _tr(f"{label} the mask has shape {shape}; expected {tuple(expected.shape)} = {what}.",
                               f"{label}マスクの形状が {_before_desu(str(shape))}です。正しい形状は {tuple(expected.shape)} = "
                               f"{_before_desu(what)}です。"))
    if got.dtype != torch.bool:
        return _say(False, _tr(f"{label} the mask has dtype {got.dtype}; expected torch.bool (True = may attend). "
                               f"Hint: build it from torch.bool blocks or comparisons (LAVIS's additive 0 / -10000 "
                               f"form is another mask, not this one).",
                               f"{label}マスクの dtype が {got.dtype} です。torch.bool（True = 注意を向けてよい）"
                               f"が必要です。ヒント：torch.bool のブロックや比較演算から作りましょう（LAVIS の "
                               f"0 / -10000 を足す形式は別のマスクで、ここで求めているものではありません）。"))
    return None


@_keeps_random_state
def check_mask(fn: Callable) -> CheckResult:
    """``fn(mode, num_queries, text_mask)`` must return the bool (B, Q+T, Q+T) mask of the mode
    (True = may attend), with padded text columns closed."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    text_masks = [torch.ones(1, 4, dtype=torch.long), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])]
    for mode in MODES:
        for q in (3, 1):
            for text_mask in text_masks:
                expected = build_attention_mask(mode, q, text_mask)
                failed, got = _call(name, fn, mode, q, text_mask.clone())
                if failed is not None:
                    return failed
                label = _tr(f"for mode {mode!r}, Q={q}, text mask of shape {tuple(text_mask.shape)}",
                            f"モード {mode!r}、Q={q}、テキストマスクの形状 {tuple(text_mask.shape)} のとき、")
                failed = _bool_mask(name, got, expected, "(B, Q+T, Q+T)", label)
                if failed is not None:
                    return failed
                if torch.equal(got, expected):
                    continue
                real = torch.cat([torch.ones(text_mask.shape[0], q, dtype=torch.bool), text_mask.bool()], 1)
                pattern = build_attention_mask(mode, q, torch.ones_like(text_mask))
                if torch.equal(got, ~expected) or torch.equal(got, ~pattern & real[:, None, :]):
                    return _say(False, _tr(f"mode {mode!r}: the mask is inverted. True means 'may attend': the "
                                           f"cells a row may see are True, the hidden ones False.",
                                           f"モード {mode!r}：マスクが反転しています。True は「注意を向けてよい」"
                                           f"という意味です。行から見えるセルが True、隠すセルが False です。"))
                b, i, j = (int(t) for t in (got != expected).nonzero()[0])
                row, see, hint = _mask_hint(mode, q, text_mask, b, i, j)
                return _say(False, _tr(f"mode {mode!r}, Q={q}: {row} {see}. Hint: {hint}",
                                       f"モード {mode!r}、Q={q}：{row}は{see}。ヒント：{hint}"))
    return _say(True, _tr("ITC, ITM and ITG masks, with padding, equal qformer_lite.build_attention_mask.",
                          "パディングを含む ITC、ITM、ITG のマスクが qformer_lite.build_attention_mask と一致します。"))


@_keeps_random_state
def check_cached_itg_mask(fn: Callable) -> CheckResult:
    """``fn(num_queries, text_mask)`` must return the bool (B, T, Q+T) mask of LAVIS's cached ITG
    pass: only the text rows, with the cached queries as the first Q columns."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    for q, text_mask in ((3, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])), (2, torch.ones(1, 5, dtype=torch.long))):
        expected = build_attention_mask("itg", q, text_mask)[:, q:]
        failed, got = _call(name, fn, q, text_mask.clone())
        if failed is not None:
            return failed
        failed = _bool_mask(name, got, expected, _tr("(B, T, Q+T): text rows only", "(B, T, Q+T)（テキストの行だけ）"),
                            _tr(f"for Q={q},", f"Q={q} のとき、"))
        if failed is not None:
            return failed
        if not torch.equal(got, expected):
            b, i, j = (int(t) for t in (got != expected).nonzero()[0])
            _, see, hint = _mask_hint("itg", q, text_mask, b, i + q, j)
            return _say(False, _tr(f"text row {i}: {see}. Hint: {hint}",
                                   f"テキストの行 {i} は{see}。ヒント：{hint}"))
    return _say(True, _tr("T rows × (Q + T) columns: the text reads the cached queries and earlier text.",
                          "T 行 × (Q + T) 列のマスクです。どのテキストトークンも、キャッシュされたクエリ、"
                          "自分自身、自分より前のテキストトークンを見ます。"))


# --- chapter 6 -------------------------------------------------------------------------------

def _random_sim(b: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, b, generator=gen) * 2 - 1  # cosines in [-1, 1]


@_keeps_random_state
def check_itc_loss(fn: Callable) -> CheckResult:
    """``fn(sim_i2t, temp)`` -> the symmetric ITC loss with label smoothing 0.1 (a scalar)."""
    ce = torch.nn.functional.cross_entropy
    for b, temp in ((6, 0.07), (3, 0.5)):
        sim = _random_sim(b, seed=b)
        failed, got = _call("itc_loss", fn, sim.clone(), temp)
        if failed is not None:
            return failed
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            return _say(False, _tr(f"itc_loss returned {type(got).__name__}; expected a scalar tensor.",
                                   f"itc_loss が {type(got).__name__} を返しました。スカラーのテンソルが必要です。"))
        expected = losses.itc_loss(sim, temp, 0.1)
        if abs(float(got) - float(expected)) <= 1e-5:
            continue
        targets = torch.arange(b)
        near = {  # the usual slips, each with what it gives
            "one_way": ce(sim / temp, targets, label_smoothing=0.1),
            "summed": 2 * expected,
            "no_smoothing": losses.itc_loss(sim, temp, 0.0),
            "no_temp": losses.itc_loss(sim, 1.0, 0.1),
            "times_temp": losses.itc_loss(sim * temp * temp, temp, 0.1),
        }
        hints = {
            "one_way": _tr("that is image->text only; average it with text->image (the transpose).",
                           "それは画像 → テキストの方向だけです。テキスト → 画像（転置）の方向と平均をとりましょう。"),
            "summed": _tr("that is the sum of the two directions; ITC is their mean: divide by 2.",
                          "それは 2 方向の和です。ITC はその平均なので、2 で割りましょう。"),
            "no_smoothing": _tr("add label_smoothing=0.1 to both cross-entropies.",
                                "両方の交差エントロピーに label_smoothing=0.1 を加えましょう。"),
            "no_temp": _tr("divide the similarities by temp before the cross-entropies.",
                           "交差エントロピーの前に、類似度を temp で割りましょう。"),
            "times_temp": _tr("divide the similarities by temp; do not multiply by it.",
                              "類似度は temp で割ります。掛けてはいけません。"),
        }
        slip = next((k for k, v in near.items() if abs(float(got) - float(v)) < 1e-5), None)
        hint = hints[slip] if slip else _tr("logits = sim_i2t / temp; the targets are the diagonal, arange(B).",
                                            "logits = sim_i2t / temp で、正解は対角成分 arange(B) です。")
        return _say(False, _tr(f"itc_loss gave {float(got):.4f}, expected {float(expected):.4f}. Hint: {hint}",
                               f"itc_loss が {float(got):.4f} を返しましたが、正しくは {float(expected):.4f} です。"
                               f"ヒント：{hint}"))
    return _say(True, _tr("the symmetric ITC loss, with temperature and label smoothing, as in LAVIS.",
                          "LAVIS と同じ、温度とラベル平滑化つきの対称な ITC 損失です。"))


@_keeps_random_state
def check_negative_weights(fn: Callable) -> CheckResult:
    """``fn(sim_i2t, temp)`` -> (B, B) probabilities of drawing each text as the negative of each
    image, as LAVIS 1.0.2 draws them: softmax of sim / temp over the row, plus 1e-4, the positive
    (diagonal) at exactly 0, each row renormalised to sum to 1."""
    b, temp = 5, 0.02  # a low temperature: some negatives get far less than the floor
    sim = _random_sim(b, seed=3)
    failed, got = _call("negative_weights", fn, sim.clone(), temp)
    if failed is not None:
        return failed
    expected = losses.negative_weights(sim, temp, floor=1e-4)
    bad = _same_shape("negative_weights", got, expected, "(B, B)")
    if bad is not None:
        return bad
    got = got.detach().double()
    if (got.diagonal().abs() > 1e-9).any():
        return _say(False, _tr("the diagonal is not 0: the positive itself could be drawn as a negative. "
                               "Hint: set it to 0 after adding the floor.",
                               "対角成分が 0 ではありません。これでは正例そのものが負例として選ばれてしまいます。ヒント："
                               "下限値を足した後で 0 にしましょう。"))
    if (got - expected.double()).abs().max() <= 1e-6:
        return _say(True, _tr("every negative keeps at least a small chance, the similar ones much more; "
                              "never the positive.",
                              "どの負例にも少なくとも小さな確率が残り、似たものほど大きな確率になります。正例が"
                              "選ばれることはありません。"))
    eye = torch.eye(b, dtype=torch.bool)
    softmax = (sim / temp).softmax(dim=1)
    unnormalised = (softmax + 1e-4).masked_fill(eye, 0.0)
    near = {
        "no_floor": losses.negative_weights(sim, temp, floor=0.0),
        "floor_unnormalised": unnormalised,
        "zeroed_unnormalised": softmax.masked_fill(eye, 0.0),
        "no_temp": losses.negative_weights(sim, 1.0, floor=1e-4),
        "columns": losses.negative_weights(sim.t(), temp, floor=1e-4).t(),
    }
    hints = {
        "no_floor": _tr("that is the draw without a floor (LAVIS's main branch). Add 1e-4 to the softmax, "
                        "then set the positive to 0 and renormalise, as LAVIS 1.0.2 does.",
                        "それは下限値のないサンプリングです（LAVIS の main ブランチ）。LAVIS 1.0.2 と同じく、softmax に "
                        "1e-4 を足してから正例を 0 にし、正規化し直しましょう。"),
        "floor_unnormalised": _tr("the rows do not sum to 1: after zeroing the positive, divide each row "
                                  "by its sum (torch.multinomial would do it silently; here say it).",
                                  "行の和が 1 になっていません。正例を 0 にした後、各行をその和で割りましょう"
                                  "（torch.multinomial は黙って正規化しますが、ここでは明示的に割ります）。"),
        "zeroed_unnormalised": _tr("the rows do not sum to 1: after zeroing the positive, divide each row "
                                   "by its sum; and add the 1e-4 floor before zeroing.",
                                   "行の和が 1 になっていません。正例を 0 にした後、各行をその和で割りましょう。"
                                   "また、0 にする前に下限値 1e-4 を足しましょう。"),
        "no_temp": _tr("divide the similarities by temp before the softmax.",
                       "softmax の前に、類似度を temp で割りましょう。"),
        "columns": _tr("each row (an image) is one distribution over the texts: softmax over dim=1.",
                       "各行（1 枚の画像）はテキスト上の 1 つの分布です。dim=1 で softmax をとりましょう。"),
    }
    slip = next((k for k, v in near.items() if (got - v.double()).abs().max() <= 1e-6), None)
    if slip:
        return _say(False, hints[slip])
    gap = float((got - expected).abs().max())
    return _say(False, _tr(f"the weights differ from LAVIS's by up to {gap:.3g}. "
                           "Hint: softmax(sim / temp, dim=1) + 1e-4, the diagonal set to 0, rows renormalised.",
                           f"重みが LAVIS のものと最大 {gap:.3g} ずれています。ヒント：softmax(sim / temp, dim=1) "
                           "+ 1e-4 を計算し、対角成分を 0 にして、各行を正規化し直します。"))


# --- chapter 7 -------------------------------------------------------------------------------

@_keeps_random_state
def check_encoder_inputs(fn: Callable) -> CheckResult:
    """``fn(prefix, prompt_embeds, prompt_mask)`` -> (inputs_embeds, attention_mask): the projected
    queries first, then the prompt; ones for the queries in front of the prompt's mask."""
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randn(2, 4, 6, generator=gen)  # (B, Q, d_model)
    prompt = torch.randn(2, 3, 6, generator=gen)  # (B, T, d_model)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    failed, got = _call("encoder_inputs", fn, prefix, prompt, mask)
    if failed is not None:
        return failed
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return _say(False, _tr("return two things: (inputs_embeds, attention_mask).",
                               "2 つの値 (inputs_embeds, attention_mask) を返しましょう。"))
    embeds, got_mask = got
    expected = torch.cat([prefix, prompt], dim=1)
    bad = _same_shape("inputs_embeds", embeds, expected, "(B, Q + T, d_model)")
    if bad is not None:
        return bad
    if torch.allclose(embeds, torch.cat([prompt, prefix], dim=1)) and not torch.allclose(embeds, expected):
        return _say(False, _tr("the prompt comes first; BLIP-2 puts the queries in front of it.",
                               "プロンプトが先に来ています。BLIP-2 はクエリをその前に置きます。"))
    if not torch.allclose(embeds, expected):
        return _say(False, _tr("inputs_embeds is not [prefix; prompt] along the sequence axis (dim=1).",
                               "inputs_embeds が、系列の軸（dim=1）に沿って [prefix; prompt] を連結したものに"
                               "なっていません。"))
    expected_mask = torch.cat([torch.ones(2, 4, dtype=mask.dtype), mask], dim=1)
    if not isinstance(got_mask, torch.Tensor) or tuple(got_mask.shape) != (2, 7):
        return _say(False, _tr("attention_mask must have shape (B, Q + T): ones for the queries, then the "
                               "prompt's mask.",
                               "attention_mask の形状は (B, Q + T) です。クエリの数だけ 1 を並べ、その後に"
                               "プロンプトのマスクを続けます。"))
    if not torch.equal(got_mask.long(), expected_mask.long()):
        return _say(False, _tr("attention_mask is wrong: every query is real (1), the prompt keeps its padding (0).",
                               "attention_mask が違います。クエリはすべて実際のトークン（1）です。プロンプトの"
                               "パディング（0）はそのまま残します。"))
    return _say(True, _tr("queries first, then the prompt; the mask opens every query.",
                          "クエリが先、次にプロンプトです。マスクでは、クエリの位置がすべて 1 になっています。"))


@_keeps_random_state
def check_labels(fn: Callable) -> CheckResult:
    """``fn(ids, mask)`` -> T5 labels: the ids, with -100 wherever the mask is 0."""
    ids = torch.tensor([[7, 8, 9, 1, 0], [7, 9, 1, 0, 0]])
    mask = (ids != 0).long()
    given = ids.clone()
    failed, got = _call("make_labels", fn, given, mask)
    if failed is not None:
        return failed
    expected = ids.masked_fill(mask == 0, -100)
    bad = _same_shape("make_labels", got, expected, "(B, T)")
    if bad is not None:
        return bad
    if not torch.equal(given, ids):
        return _say(False, _tr("make_labels changed its input in place. Hint: clone() first, or use masked_fill.",
                               "make_labels が入力をインプレースで書き換えています。ヒント：先に clone() するか、"
                               "masked_fill を使いましょう。"))
    if not torch.equal(got, expected):
        return _say(False, _tr("padding must become -100 (ignored by the loss); every real token, </s> "
                               "included, stays. T5 shifts the labels itself: do not shift them.",
                               "パディングは -100（損失で無視される値）にする必要があります。</s> を含む実際の"
                               "トークンは、すべてそのまま残します。T5 はラベルを自分でずらすので、ずらさないで"
                               "ください。"))
    return _say(True, _tr("padding is ignored, </s> is learned, and T5 builds its decoder inputs from these.",
                          "パディングは無視され、</s> は学習されます。T5 はこのラベルからデコーダの入力を作ります。"))

# --- chapter 8 -------------------------------------------------------------------------------

@_keeps_random_state
def check_placeholder_ids(fn: Callable) -> CheckResult:
    """``fn(prompt_ids, prompt_mask, num_queries, image_token_id)`` must return HuggingFace's
    ``input_ids`` and ``attention_mask``: the image placeholders in front of the prompt."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    ids = torch.tensor([[17, 23, 5, 1], [44, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    q, image_token = 3, 99
    exp_ids = torch.cat([torch.full((2, q), image_token), ids], dim=1)
    exp_mask = torch.cat([torch.ones(2, q, dtype=torch.long), mask], dim=1)
    failed, got = _call(name, fn, ids, mask, q, image_token)
    if failed is not None:
        return failed
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return _say(False, _tr(f"{name} should return two tensors (input_ids, attention_mask), got "
                               f"{type(got).__name__}.",
                               f"{name} は 2 つのテンソル (input_ids, attention_mask) を返す必要がありますが、"
                               f"{type(got).__name__} が返されました。"))
    got_ids, got_mask = (torch.as_tensor(t) for t in got)
    if tuple(got_ids.shape) != tuple(exp_ids.shape):
        return _say(False, _tr(f"input_ids has shape {tuple(got_ids.shape)}; expected {tuple(exp_ids.shape)}. "
                               "Hint: one placeholder per query, for every image of the batch.",
                               f"input_ids の形状が {tuple(got_ids.shape)} です。正しい形状は "
                               f"{tuple(exp_ids.shape)} です。ヒント：バッチのどの画像にも、クエリ 1 つにつき"
                               "プレースホルダが 1 つ必要です。"))
    if torch.equal(got_ids, torch.cat([ids, torch.full((2, q), image_token)], dim=1)):
        return _say(False, _tr("the placeholders are after the prompt. Hint: the queries come first, "
                               "where Blip2T5 puts them.",
                               "プレースホルダがプロンプトの後ろにあります。ヒント：Blip2T5 と同じく、クエリが"
                               "先に来ます。"))
    if not torch.equal(got_ids, exp_ids):
        return _say(False, _tr(f"input_ids = {got_ids.tolist()}; expected {exp_ids.tolist()}.",
                               f"input_ids = {got_ids.tolist()} ですが、正しくは {exp_ids.tolist()} です。"))
    if not torch.equal(got_mask.long(), exp_mask):
        return _say(False, _tr(f"attention_mask = {got_mask.tolist()}; expected {exp_mask.tolist()}. "
                               "Hint: the placeholders are real inputs: ones, then the prompt's own mask.",
                               f"attention_mask = {got_mask.tolist()} ですが、正しくは {exp_mask.tolist()} です。"
                               "ヒント：プレースホルダは実際の入力です。1 を並べ、その後にプロンプト自身のマスクを"
                               "続けます。"))
    return _say(True, _tr("num_queries placeholders in front of the prompt: HF scatters the projected queries "
                          "into them.",
                          "プロンプトの前に num_queries 個のプレースホルダがあります。HF は射影したクエリを"
                          "そこに書き込みます。"))


@_keeps_random_state
def check_precision_guard(fn: Callable) -> CheckResult:
    """``fn(language_model)`` must be False exactly when a feed-forward output layer
    (``*.wo.weight``) is float16."""
    from transformers import T5Config, T5ForConditionalGeneration

    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=4)
    cases = []
    model = T5ForConditionalGeneration(cfg)
    cases.append(("float32", model, True))
    cases.append(("bfloat16", T5ForConditionalGeneration(cfg).to(torch.bfloat16), True))
    half = T5ForConditionalGeneration(cfg).half()
    cases.append((_tr("float16 throughout", "全体が float16"), half, False))
    mixed = T5ForConditionalGeneration(cfg).half()
    for module_name, module in mixed.named_modules():
        if module_name.endswith(".wo"):
            module.float()
    cases.append((_tr("float16 with wo in float32", "float16 で wo だけ float32"), mixed, True))
    only_one = T5ForConditionalGeneration(cfg)
    only_one.decoder.block[0].layer[-1].DenseReluDense.wo.half()
    cases.append((_tr("float32 but one wo in float16", "float32 で wo が 1 つだけ float16"), only_one, False))
    for label, lm, expected in cases:
        failed, got = _call(name, fn, lm)
        if failed is not None:
            return failed
        if got is None:
            return _returned_none(name)
        if bool(got) != expected:
            hint = (_tr("only the feed-forward output layers matter: the rest may be float16",
                        "問題になるのはフィードフォワードの出力層だけです。それ以外は float16 でもかまいません")
                    if expected else _tr("look at every parameter whose name ends in '.wo.weight'",
                                         "名前が '.wo.weight' で終わるパラメータをすべて調べましょう"))
            return _say(False, _tr(f"{name}(T5 in {label}) = {got}; expected {expected}. Hint: {hint}.",
                                   f"{name}({label} の T5) = {got} ですが、正しくは {expected} です。ヒント：{hint}。"))
    return _say(True, _tr("float16 is refused only where it overflows: in T5's feed-forward outputs.",
                          "float16 を拒むのは、オーバーフローする場所、つまり T5 のフィードフォワード出力だけです。"))


# --- chapter 9 -------------------------------------------------------------------------------

@_keeps_random_state
def check_pooled_tokens(fn: Callable) -> CheckResult:
    """``fn(image_embeds, side)`` -> (B, side², C): the patch tokens ([CLS] left out) as their
    square grid, average-pooled to ``side`` x ``side`` cells (``F.adaptive_avg_pool2d``), row
    by row, as DeCo's connector does before its MLP."""
    import torch.nn.functional as F

    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1 + 36, 5, generator=gen)  # (B, 1 + 6 x 6, C)
    grid = rearrange(x[:, 1:], "b (h w) c -> b c h w", h=6)
    expected = rearrange(F.adaptive_avg_pool2d(grid, 3), "b c h w -> b (h w) c")  # (B, 9, C)
    failed, got = _call(name, fn, x.clone(), 3)
    if failed is not None:
        return failed
    bad = _same_shape(name, got, expected, "(B, side², C)")
    if bad is not None:
        return bad
    with_cls = rearrange(F.adaptive_avg_pool2d(rearrange(x[:, :36], "b (h w) c -> b c h w", h=6), 3),
                         "b c h w -> b (h w) c")
    if torch.allclose(got, with_cls, atol=1e-5):
        return _say(False, _tr("the grid starts at [CLS]. Hint: drop image_embeds[:, 0] first; the 36 patches "
                               "follow it.",
                               "グリッドが [CLS] から始まっています。ヒント：まず image_embeds[:, 0] を取り除き"
                               "ましょう。36 個のパッチはその後に続きます。"))
    by_columns = rearrange(F.adaptive_avg_pool2d(grid, 3), "b c h w -> b (w h) c")
    if torch.allclose(got, by_columns, atol=1e-5):
        return _say(False, _tr("the cells come column by column. Hint: flatten the pooled grid row by row, "
                               "'b c h w -> b (h w) c', as the patches are numbered.",
                               "セルが列ごとの順に並んでいます。ヒント：パッチの番号の付け方と同じく、プーリング"
                               "したグリッドを行ごとに平坦化しましょう（'b c h w -> b (h w) c'）。"))
    if not torch.allclose(got, expected, atol=1e-5):
        return _say(False, _tr("the values differ from F.adaptive_avg_pool2d of the (B, C, 6, 6) patch grid. "
                               "Hint: put the channels first before pooling, 'b (h w) c -> b c h w'.",
                               "値が、(B, C, 6, 6) のパッチグリッドに F.adaptive_avg_pool2d をかけたものと"
                               "違います。ヒント：プーリングの前に、チャネルを先頭に移しましょう"
                               "（'b (h w) c -> b c h w'）。"))
    # 6 rows to 4 cells: windows of unequal, overlapping rows, which a fixed kernel cannot give
    expected = rearrange(F.adaptive_avg_pool2d(grid, 4), "b c h w -> b (h w) c")  # (B, 16, C)
    failed, got = _call(name, fn, x.clone(), 4)
    if failed is not None:
        return failed
    if tuple(got.shape) != tuple(expected.shape) or not torch.allclose(got, expected, atol=1e-5):
        return _say(False, _tr("right for 6 x 6 -> 3 x 3, wrong for 6 x 6 -> 4 x 4, where the side does not divide "
                               "the grid. Hint: F.adaptive_avg_pool2d(grid, side) picks each cell's window itself; "
                               "a fixed kernel of n // side patches fits only when side divides n.",
                               "6 x 6 -> 3 x 3 では正しいのですが、side がグリッドを割り切らない 6 x 6 -> 4 x 4 "
                               "では違います。ヒント：F.adaptive_avg_pool2d(grid, side) は各セルの窓を自分で"
                               "選びます。n // side パッチ幅の固定カーネルが合うのは、side が n を割り切るときだけです。"))
    return _say(True, _tr("36 patches in, 9 averaged cells out, in reading order: DeCo's compression, with no "
                          "parameters.",
                          "36 個のパッチを平均して 9 個のセルにし、行ごとの順に並べています。パラメータを"
                          "持たない DeCo の圧縮です。"))


@_keeps_random_state
def check_masked_perceiver_attention(fn: Callable) -> CheckResult:
    """``fn(attn, x, latents, media_mask)`` -> (B, M, C): Flamingo's resampler attention (a
    ``connectors.PerceiverAttention``) on a batch whose images bring different numbers of
    tokens, the padding masked: each image's result is ``attn`` on that image without its
    padding. The latents' own keys are never masked, as in Idefics2's resampler."""
    from ..connectors import PerceiverAttention

    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    gen = torch.Generator().manual_seed(0)
    attn = PerceiverAttention(width=8, heads=2, head_dim=4)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    x, latents = torch.randn(3, 6, 8, generator=gen), torch.randn(3, 3, 8, generator=gen)
    # (B, N): 1 real, 0 padding. The last row is a 2 x 2 grid padded to 2 x 3 and flattened, as
    # Idefics2's patch masks are: its padding sits in the middle of the sequence, not only at the end
    media_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 1, 0]])
    x = torch.where(media_mask[..., None].bool(), x, 3.0 + torch.randn(x.shape, generator=gen))  # loud padding
    with torch.no_grad():
        expected = torch.cat([attn(x[b:b + 1, media_mask[b].bool()], latents[b:b + 1]) for b in range(3)])
        failed, got = _call(name, fn, attn, x.clone(), latents.clone(), media_mask.clone())
    if failed is not None:
        return failed
    bad = _same_shape(name, got, expected, _tr("(B, M, C): one vector per latent",
                                                "(B, M, C)（潜在ベクトル 1 つにつき 1 つのベクトル）"))
    if bad is not None:
        return bad
    if torch.allclose(got, expected, atol=1e-5):
        return _say(True, _tr("each image's latents read its real tokens and each other, never its padding: "
                              "the result does not depend on how much padding the batch needed.",
                              "各画像の潜在ベクトルは、その画像の本物のトークンと互いだけを読み、パディングは"
                              "読みません。結果は、バッチに必要だったパディングの量によりません。"))

    # the usual mistakes, each from the same scores of queries (latents) against keys [x; latents]
    with torch.no_grad():
        xs, ls = attn.norm_media(x), attn.norm_latents(latents)
        q = rearrange(attn.to_q(ls), "b m (h d) -> b h m d", h=attn.heads)
        kv = attn.to_kv(torch.cat([xs, ls], dim=1))
        k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in kv.chunk(2, dim=-1))
        scores = q @ k.transpose(-2, -1) * attn.scale  # (B, H, M, N + M)
        ones = torch.ones(len(x), latents.shape[1], dtype=torch.bool)
        keep = torch.cat([media_mask.bool(), ones], dim=1)[:, None, None, :]  # (B, 1, 1, N + M)
        keep_no_latents = torch.cat([media_mask.bool(), ~ones], dim=1)[:, None, None, :]

        def out(probs):
            return attn.to_out(rearrange(probs @ v, "b h m d -> b m (h d)"))

        unmasked = attn(x, latents)
        multiplied = out((scores * keep).softmax(dim=-1))
        after = out(scores.softmax(dim=-1) * keep)
        latents_hidden = out(scores.masked_fill(~keep_no_latents, float("-inf")).softmax(dim=-1))
    if torch.allclose(got, unmasked, atol=1e-5):
        return _say(False, _tr("the padding still gets weight: this is attn(x, latents) on the padded batch. Hint: "
                               "set the scores of padded keys to -inf before the softmax.",
                               "パディングにまだ重みが付いています。パディングしたバッチに attn(x, latents) を"
                               "適用した結果と同じです。ヒント：softmax の前に、パディングのキーのスコアを "
                               "-inf にしましょう。"))
    if torch.allclose(got, multiplied, atol=1e-5):
        return _say(False, _tr("the scores were multiplied by the mask: a score of 0 still gets exp(0) = 1 in the "
                               "softmax. Hint: scores.masked_fill(~keep, float('-inf')).",
                               "スコアにマスクを掛けています。スコア 0 も、softmax では exp(0) = 1 の重みを"
                               "得ます。ヒント：scores.masked_fill(~keep, float('-inf')) です。"))
    if torch.allclose(got, after, atol=1e-5):
        return _say(False, _tr("the mask was applied after the softmax: the weights left no longer sum to 1. "
                               "Hint: mask the scores, then take the softmax.",
                               "マスクを softmax の後に掛けています。残った重みの和が 1 になりません。"
                               "ヒント：スコアをマスクしてから softmax を取りましょう。"))
    if torch.allclose(got, latents_hidden, atol=1e-5):
        return _say(False, _tr("the latents' own keys were masked too. Hint: the latents are never padding: "
                               "extend media_mask with ones for them, torch.cat([media_mask, ones], dim=1).",
                               "潜在ベクトル自身のキーまでマスクしています。ヒント：潜在ベクトルはパディングでは"
                               "ありません。torch.cat([media_mask, ones], dim=1) のように、潜在ベクトルの分は "
                               "1 で延ばしましょう。"))
    return _say(False, _tr("the output differs from attn on each image without its padding. Hint: the attention "
                           "of the cell that builds the resampler, with the keys [x; latents] masked by "
                           "[media_mask; ones] before the softmax.",
                           "出力が、パディングを除いた各画像に attn を適用した結果と違います。ヒント：リサンプラを"
                           "組み立てたセルのアテンションで、キー [x; latents] を、softmax の前に "
                           "[media_mask; ones] でマスクします。"))


# --- chapter 10 ------------------------------------------------------------------------------

@_keeps_random_state
def check_left_padding(fn: Callable) -> CheckResult:
    """``fn(embeds, mask)`` -> (embeds, mask): each row's padding moved to the front, its real
    positions after it in their own order, as a decoder-only model needs them to continue
    right after the last real token."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(3, 5, 4, generator=gen)  # (B, L, d)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    order = torch.sort(mask, dim=1, stable=True).indices  # 0s first, each group in its order
    expected = embeds.gather(1, order[..., None].expand(-1, -1, 4)), mask.gather(1, order)
    failed, got = _call(name, fn, embeds.clone(), mask.clone())
    if failed is not None:
        return failed
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return _say(False, _tr(f"{name} should return two tensors (embeds, mask), got {type(got).__name__}.",
                               f"{name} は 2 つのテンソル (embeds, mask) を返す必要がありますが、"
                               f"{type(got).__name__} が返されました。"))
    got_embeds, got_mask = got
    bad = _same_shape(name, got_embeds, expected[0], "(B, L, d)")
    if bad is not None:
        return bad
    if not isinstance(got_mask, torch.Tensor) or not torch.equal(got_mask.long(), expected[1]):
        if isinstance(got_mask, torch.Tensor) and torch.equal(got_mask.long(), mask):
            return _say(False, _tr("the mask stayed where it was. Hint: move it with the same indices as the "
                                   "embeddings.",
                                   "マスクが元の位置のままです。ヒント：埋め込みと同じインデックスでマスクも"
                                   "移動しましょう。"))
        shown = _short(getattr(got_mask, 'tolist', lambda: got_mask)(), 60)
        return _say(False, _tr(f"mask = {shown}; expected {expected[1].tolist()}: zeros first, then ones.",
                               f"mask = {shown} ですが、正しくは {expected[1].tolist()} です。0 が先で、その後に 1 "
                               f"が続きます。"))
    real = expected[1] == 1  # what sits at a padded position is masked out: any vector will do there
    if torch.allclose(got_embeds[real], embeds.flip(1)[real]):
        return _say(False, _tr("the rows are reversed: the real tokens came out back to front. Hint: move the "
                               "padding, keep the order of the rest (a stable sort of the mask, 0s before 1s).",
                               "行が反転しています。実際のトークンが逆順になっています。ヒント：パディングだけを"
                               "移動し、残りの順序は保ちましょう（マスクを安定ソートして、0 を 1 より前に）。"))
    if not torch.allclose(got_embeds[real], expected[0][real]):
        return _say(False, _tr("the real positions are not in their own order after the padding. Hint: "
                               "torch.sort(mask, dim=1, stable=True).indices gives that order; gather with it.",
                               "パディングの後ろにある実際の位置が、元の順序になっていません。ヒント："
                               "torch.sort(mask, dim=1, stable=True).indices でその順序が得られます。それを使って "
                               "gather しましょう。"))
    return _say(True, _tr("padding first, every real token in its order: each row's last position is its last "
                          "token.",
                          "パディングが先で、実際のトークンは元の順序のままです。各行の最後の位置が、その行の"
                          "最後のトークンです。"))


@_keeps_random_state
def check_decoder_labels(fn: Callable) -> CheckResult:
    """``fn(ids, mask, prompt_length, num_queries)`` -> labels (B, Q + T), as LAVIS's
    ``blip2_opt.py`` builds them: -100 for the Q query positions, for the first
    ``prompt_length`` text tokens (the start token and the prompt) and for the padding; the
    caption's own ids elsewhere."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    ids = torch.tensor([[2, 11, 12, 21, 22, 23, 9], [2, 11, 12, 24, 9, 1, 1]])  # "</s> prompt caption \n"
    mask = (ids != 1).long()
    q, prompt_length = 3, 3
    text = ids.masked_fill(mask == 0, -100)
    text[:, :prompt_length] = -100
    expected = torch.cat([torch.full((2, q), -100), text], dim=1)
    given = ids.clone()
    failed, got = _call(name, fn, given, mask, prompt_length, q)
    if failed is not None:
        return failed
    if isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(text.shape):
        return _say(False, _tr(f"labels have shape {tuple(got.shape)}, one per text token. Hint: the model's input "
                               f"is [queries; text], so put a block of Q = {q} labels of -100 in front.",
                               f"labels の形状が {tuple(got.shape)} で、テキストトークンごとに 1 つしかありません。"
                               f"ヒント：モデルの入力は [queries; text] なので、-100 のラベルを Q = {q} 個並べた"
                               f"ブロックを前に置きましょう。"))
    bad = _same_shape(name, got, expected, "(B, Q + T)")
    if bad is not None:
        return bad
    if not torch.equal(given, ids):
        return _say(False, _tr(f"{name} changed its input in place. Hint: clone() first, or use masked_fill.",
                               f"{name} が入力をインプレースで書き換えています。ヒント：先に clone() するか、"
                               f"masked_fill を使いましょう。"))
    got = got.long()
    if not (got[:, :q] == -100).all():
        return _say(False, _tr("the query positions must be -100: no token there is a target. Hint: "
                               "torch.full((B, Q), -100) in front of the text's labels.",
                               "クエリの位置は -100 でなければなりません。そこに予測対象のトークンはありません。"
                               "ヒント：テキストのラベルの前に torch.full((B, Q), -100) を置きましょう。"))
    if torch.equal(got[:, q:-1], expected[:, q + 1:]) or torch.equal(got[:, q + 1:], expected[:, q:-1]):
        return _say(False, _tr("the labels are shifted by one. Hint: give each position its own id; the model "
                               "shifts them itself (position t predicts label t + 1).",
                               "ラベルが 1 つずれています。ヒント：各位置には、その位置の id をそのまま入れましょう。"
                               "ずらすのはモデルの仕事です（位置 t がラベル t + 1 を予測します）。"))
    if (got[:, q:q + prompt_length] != -100).any():
        return _say(False, _tr("the start token and the prompt are targets. Hint: set the first prompt_length text "
                               "labels to -100, as LAVIS does (targets[:, :prompt_length] = -100).",
                               "開始トークンとプロンプトが予測対象になっています。ヒント：LAVIS と同じく、テキストの"
                               "最初の prompt_length 個のラベルを -100 にしましょう"
                               "（targets[:, :prompt_length] = -100）。"))
    if (got[:, q:][mask == 0] != -100).any():
        return _say(False, _tr("the padding is a target. Hint: -100 wherever the mask is 0.",
                               "パディングが予測対象になっています。ヒント：マスクが 0 の位置はすべて -100 にします。"))
    if not torch.equal(got, expected):
        return _say(False, _tr(f"labels = {got.tolist()}; expected {expected.tolist()}.",
                               f"labels = {got.tolist()} ですが、正しくは {expected.tolist()} です。"))
    return _say(True, _tr("only the caption and its end are targets: queries, start token, prompt and padding "
                          "are -100.",
                          "予測対象はキャプションとその終端だけです。クエリ、開始トークン、プロンプト、"
                          "パディングは -100 です。"))


# --- chapter 11 ------------------------------------------------------------------------------

@_keeps_random_state
def check_instruction_batch(fn: Callable) -> CheckResult:
    """``fn(qformer, image_embeds, instructions)`` -> (B, Q, D): InstructBLIP's query outputs
    for a batch of instructions of different lengths (a list of 1-D id tensors, unpadded),
    each row what the Q-Former gives for that image and instruction alone: padded on the
    right (the text's positions count from its first token) and masked."""
    from ..qformer import QFormer

    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    config = QFormerConfig.tiny()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        qformer = QFormer(config).eval()
    gen = torch.Generator().manual_seed(1)
    lengths = (4, 2, 3)
    image = torch.randn(len(lengths), 5, config.encoder_hidden_size, generator=gen)
    instructions = [torch.randint(1, config.vocab_size, (n,), generator=gen) for n in lengths]
    with torch.no_grad():
        expected = torch.cat([qformer(image[b:b + 1], ids[None], torch.ones(1, len(ids), dtype=torch.long),
                                      mode="itm").query_output for b, ids in enumerate(instructions)])
        failed, got = _call(name, fn, qformer, image.clone(), [ids.clone() for ids in instructions])
    if failed is not None:
        return failed
    got = getattr(got, "query_output", got)
    longest = max(lengths)
    if isinstance(got, torch.Tensor) and got.dim() == 3 and got.shape[1] == config.num_query_tokens + longest:
        return _say(False, _tr("that is [queries; instruction]: only the queries go on to the language model. "
                               "Hint: keep the first Q positions (out.query_output).",
                               "それは [queries; instruction] 全体です。言語モデルに渡るのはクエリだけです。"
                               "ヒント：最初の Q 個の位置（out.query_output）だけを残しましょう。"))
    bad = _same_shape(name, got, expected, _tr("(B, Q, D): one row of query outputs per instruction",
                                                "(B, Q, D)（指示文 1 つにつき、クエリの出力 1 組）"))
    if bad is not None:
        return bad
    if torch.allclose(got, expected, atol=1e-5):
        return _say(True, _tr("each image's queries read its own instruction and nothing of the padding: every row "
                              "is what that instruction gives alone.",
                              "各画像のクエリが、自分の指示文だけを読み、パディングは読んでいません。どの行も、"
                              "その指示文を単独で読んだ結果と同じです。"))
    pad = [longest - n for n in lengths]
    right = torch.stack([torch.cat([ids, ids.new_zeros(p)]) for ids, p in zip(instructions, pad)])  # (B, T)
    left = torch.stack([torch.cat([ids.new_zeros(p), ids]) for ids, p in zip(instructions, pad)])
    mask_right, mask_left = (right != 0).long(), (left != 0).long()
    with torch.no_grad():
        alone = qformer(image).query_output
        unmasked = qformer(image, right, torch.ones_like(right), mode="itm").query_output
        left_padded = qformer(image, left, mask_left, mode="itm").query_output
        causal = qformer(image, right, mask_right, mode="itg").query_output
    if torch.allclose(got, alone, atol=1e-5) or torch.allclose(got, causal, atol=1e-5):
        return _say(False, _tr("the queries did not read the instruction: it was left out, or the mode ('itc', "
                               "'itg') keeps the queries from the text. Hint: mode='itm', where the queries and the "
                               "instruction read each other both ways.",
                               "クエリが指示文を読んでいません。指示文を渡していないか、モード（'itc'、'itg'）"
                               "がクエリからテキストを隠しています。ヒント：クエリと指示文が互いを双方向に読む "
                               "mode='itm' を使いましょう。"))
    if torch.allclose(got, unmasked, atol=1e-5):
        return _say(False, _tr("the queries read the padding: the mask is all ones. Hint: pass a mask with 0 "
                               "where the padding is, (ids != pad).long().",
                               "クエリがパディングを読んでいます。マスクがすべて 1 です。ヒント：パディングの"
                               "位置を 0 にしたマスク、(ids != pad).long() を渡しましょう。"))
    if torch.allclose(got, left_padded, atol=1e-5):
        return _say(False, _tr("the padding is on the left: the masked positions are not read, but the real tokens "
                               "moved to later positions, and the Q-Former's text positions count from the first "
                               "token. Hint: pad on the right (a decoder-only LLM, chapter 10, wants the left).",
                               "パディングが左にあります。マスクした位置は読まれませんが、本物のトークンが後ろの"
                               "位置にずれます。Q-Former のテキストの位置は、最初のトークンから数えます。ヒント："
                               "右にパディングしましょう（左が必要なのは、10 章のデコーダのみの LLM です）。"))
    return _say(False, _tr("the values differ from each instruction read alone. Hint: pad the instructions on the "
                           "right to one length, mask the padding, then one pass with mode='itm'.",
                           "値が、各指示文を単独で読んだ結果と違います。ヒント：指示文を右側のパディングで同じ長さに"
                           "そろえ、パディングをマスクしてから、mode='itm' で 1 回通しましょう。"))


@_keeps_random_state
def check_frame_positions(fn: Callable) -> CheckResult:
    """``fn(frame_queries, table)`` -> (B, F * Q, D): each frame's learned position (a row of
    ``table``, an ``nn.Embedding``) added to every query output of that frame, then the frames
    one after the other, as Video-LLaMA feeds its video Q-Former."""
    name = getattr(fn, "__name__", _tr("your function", "あなたの関数"))
    gen = torch.Generator().manual_seed(3)
    b, f, q, d = 2, 3, 4, 8
    frame_queries = torch.randn(b, f, q, d, generator=gen)
    table = nn.Embedding(5, d)
    with torch.no_grad():
        table.weight.copy_(torch.randn(5, d, generator=gen))
    expected = (frame_queries + table.weight[:f][None, :, None, :]).flatten(1, 2)  # (B, F * Q, D)
    with torch.no_grad():
        failed, got = _call(name, fn, frame_queries.clone(), table)
    if failed is not None:
        return failed
    if isinstance(got, torch.Tensor) and got.shape == (b, f, q, d):
        return _say(False, _tr("that is still (B, F, Q, D). Hint: the video Q-Former reads one sequence of "
                               "F * Q tokens: flatten the frames and queries, frame after frame.",
                               "まだ (B, F, Q, D) のままです。ヒント：ビデオ Q-Former が読むのは、F * Q 個の"
                               "トークンからなる 1 本の系列です。フレームの順に、各フレームのクエリを 1 列に"
                               "並べましょう。"))
    bad = _same_shape(name, got, expected, "(B, F * Q, D)")
    if bad is not None:
        return bad
    if torch.allclose(got, frame_queries.flatten(1, 2), atol=1e-6):
        return _say(False, _tr("no position was added: without them the video Q-Former cannot tell the order "
                               "of the frames. Hint: table(torch.arange(F)) is one vector per frame.",
                               "位置が足されていません。位置がなければ、ビデオ Q-Former はフレームの順番を区別"
                               "できません。ヒント：table(torch.arange(F)) で、フレームごとに 1 つのベクトルが"
                               "得られます。"))
    per_query = (frame_queries + table.weight[:q][None, None, :, :]).flatten(1, 2)  # a row per query
    if torch.allclose(got, per_query, atol=1e-6):
        return _say(False, _tr("the positions were added per query, not per frame. Hint: every query of frame "
                               "f gets the same vector, table row f: index the table by the frame.",
                               "位置がクエリごとに足されていて、フレームごとではありません。ヒント：フレーム f の"
                               "クエリにはすべて同じベクトル（table の f 行目）を足します。"))
    shifted = (frame_queries + table.weight[1:f + 1][None, :, None, :]).flatten(1, 2)
    if torch.allclose(got, shifted, atol=1e-6):
        return _say(False, _tr("each frame took the next row of the table. Hint: frame f uses row f, counting "
                               "from 0: table(torch.arange(F)).",
                               "各フレームが table の 1 つ先の行を使っています。ヒント：フレーム f が使うのは、"
                               "0 から数えて f 行目です（table(torch.arange(F))）。"))
    by_query = (frame_queries + table.weight[:f][None, :, None, :]).transpose(1, 2).flatten(1, 2)
    if torch.allclose(got, by_query, atol=1e-6):
        return _say(False, _tr("the tokens are ordered query after query. Hint: Video-LLaMA puts the frames one "
                               "after the other: all of frame 0's queries, then frame 1's.",
                               "トークンがクエリごとの順に並んでいます。ヒント：Video-LLaMA はフレームを順に"
                               "並べます。フレーム 0 のクエリをすべて、次にフレーム 1 のクエリを並べます。"))
    if not torch.allclose(got, expected, atol=1e-6):
        return _say(False, _tr("the values differ from the per-frame queries plus their frame's position, frame "
                               "after frame.",
                               "値が「フレームごとのクエリ＋そのフレームの位置」をフレーム順に並べたものと"
                               "違います。"))
    return _say(True, _tr("each frame's position is added to its queries, and the frames follow one another: "
                          "what the video Q-Former cross-attends to.",
                          "各フレームの位置がそのクエリに足され、フレームが順に並んでいます。これを、ビデオ "
                          "Q-Former がクロスアテンションで読みます。"))
