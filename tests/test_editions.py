"""The Japanese edition (``ja/``) is the English book page for page, and its code is the English
code: only comments and the strings shown to the reader may be translated (``editions.py``)."""

from __future__ import annotations

import ast
import json
import re

import pytest
import yaml

from editions import JA, ROOT, compare, differences, parse
from test_book import toc_files

EN_TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
JA_TOC = yaml.safe_load((JA / "_toc.yml").read_text(encoding="utf-8"))
EN_CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
JA_CONFIG = yaml.safe_load((JA / "_config.yml").read_text(encoding="utf-8"))
EN_NOTEBOOKS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
EN_PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "book").glob("*.md"))


def _captions(toc) -> list[str]:
    return [part["caption"] for part in toc["parts"]]


def test_every_page_has_its_counterpart():
    for rel in EN_NOTEBOOKS + EN_PAGES:
        assert (JA / rel).exists(), f"{rel} has no Japanese edition at ja/{rel}"
    for path in list((JA / "notebooks").glob("*.ipynb")) + list((JA / "book").glob("*.md")):
        rel = path.relative_to(JA).as_posix()
        assert (ROOT / rel).exists(), f"ja/{rel} has no English page at {rel}"


def test_the_tocs_are_the_same_book():
    assert toc_files(JA_TOC) == toc_files(EN_TOC)
    assert len(_captions(JA_TOC)) == len(_captions(EN_TOC))
    assert all(re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", c) for c in _captions(JA_TOC)), \
        "every part caption of ja/_toc.yml is in Japanese"


def test_the_configs_build_the_same_way():
    for key in ("execute", "parse", "only_build_toc_files"):
        assert JA_CONFIG[key] == EN_CONFIG[key], f"ja/_config.yml's {key} differs from _config.yml's"
    assert JA_CONFIG["repository"]["path_to_book"] == "ja"
    assert JA_CONFIG["sphinx"]["config"]["language"] == "ja"
    assert JA_CONFIG["sphinx"]["config"]["edition_counterpart"] == "../"
    assert EN_CONFIG["sphinx"]["config"]["edition_counterpart"] == "ja/"
    assert "qformer_lite.book.edition" in JA_CONFIG["sphinx"]["extra_extensions"]
    assert "qformer_lite.book.edition" in EN_CONFIG["sphinx"]["extra_extensions"]
    assert "ja" in EN_CONFIG["exclude_patterns"]


@pytest.mark.parametrize("rel", EN_NOTEBOOKS, ids=lambda r: r.split("/")[-1][:2])
def test_the_code_is_the_same(rel):
    problems = compare(ROOT / rel, JA / rel)
    assert not problems, f"ja/{rel} differs from {rel} in code:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("rel", EN_NOTEBOOKS, ids=lambda r: r.split("/")[-1][:2])
def test_japanese_chapters_speak_japanese(rel):
    nb = json.loads((JA / rel).read_text(encoding="utf-8"))
    first = "".join(nb["cells"][0]["source"])
    badge = f"https://colab.research.google.com/github/{EN_CONFIG['repository']['url'].removeprefix('https://github.com/')}/blob/main/ja/{rel}"
    assert badge in first, f"ja/{rel}'s Colab badge must open ja/{rel}"
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    if "checks." in code:
        assert 'set_language("ja")' in code, f"ja/{rel} uses checkers but never calls set_language(\"ja\")"
    prose = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    kana = len(re.findall(r"[\u3040-\u30ff]", prose))
    assert kana > len(prose) / 10, f"ja/{rel}'s prose is mostly untranslated"


# --- the comparison itself can fail ------------------------------------------------------------

EN = '''
import torch
from qformer_lite.book import checks
x = torch.randn(2, 8, 16)  # (B, Q, D)
caption = "a red circle at the top left"
print(f"{x.shape[0]} images, {x.shape[1]} queries of width {x.shape[2]:d}")
print("every query is the same vector:", bool((x[0] == x[1]).all()))
checks.check_answer("q", 32)
'''

JA_OK = '''
import torch
from qformer_lite.book import checks
from qformer_lite.book import set_language
set_language("ja")
x = torch.randn(2, 8, 16)  # (B, Q, D): バッチ、クエリ、幅
caption = "a red circle at the top left"
print(f"画像 {x.shape[0]} 枚、幅 {x.shape[2]:d} のクエリが {x.shape[1]} 個")
print("どのクエリも同じベクトル:", bool((x[0] == x[1]).all()))
checks.check_answer("q", 32)
'''


def _diff(ja: str) -> list[str]:
    import editions
    return differences(parse(EN), editions._strip_switch(parse(ja)), "cell")


def test_a_translation_is_the_same_code():
    assert _diff(JA_OK) == []


@pytest.mark.parametrize("edit, needle", [
    (("torch.randn(2, 8, 16)", "torch.randn(2, 8, 32)"), "16"),
    (('"a red circle at the top left"', '"a blue circle at the top left"'), "not a translation"),
    (('checks.check_answer("q", 32)', 'checks.check_answer("q", 33)'), "32"),
    (("{x.shape[2]:d}", "{x.shape[2]}"), "fields"),
    (("bool((x[0] == x[1]).all())", "bool((x[0] == x[0]).all())"), "line"),
    (("import torch\n", "import torch\nimport math\n"), "statements"),
])
def test_a_code_edit_in_the_japanese_edition_alone_fails(edit, needle):
    old, new = edit
    assert old in JA_OK
    problems = _diff(JA_OK.replace(old, new, 1))
    assert problems and needle in "\n".join(problems), problems


def test_an_edited_chapter_fails(tmp_path):
    """The real test on a real chapter: one number changed in ja/notebooks/01 is caught."""
    rel = EN_NOTEBOOKS[0]
    nb = json.loads((JA / rel).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines(keepends=True)
        ints = [n for n in ast.walk(ast.parse("".join(lines)))
                if isinstance(n, ast.Constant) and type(n.value) is int]
        if ints:
            n = ints[0]
            row = lines[n.lineno - 1]
            lines[n.lineno - 1] = row[:n.col_offset] + str(n.value + 1) + row[n.end_col_offset:]
            cell["source"] = "".join(lines)
            break
    edited = tmp_path / "edited.ipynb"
    edited.write_text(json.dumps(nb), encoding="utf-8")
    assert compare(ROOT / rel, JA / rel) == []
    assert compare(ROOT / rel, edited), "a Japanese chapter with one number changed passed"


@pytest.mark.parametrize("rel", EN_NOTEBOOKS, ids=lambda r: r.split("/")[-1][:2])
def test_japanese_chapters_are_committed_without_outputs(rel):
    nb = json.loads((JA / rel).read_text(encoding="utf-8"))
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"ja/{rel} has outputs"
