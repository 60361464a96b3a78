"""The English and Japanese editions hold the same code: what ``test_editions.py`` compares.

A Japanese chapter may translate its comments and the strings it shows the reader; every other
token of every code cell must be the English one. Code is compared as Python syntax trees:

- comments are not in the tree, so they are free;
- a string constant may differ only where the Japanese one is a translation (it contains
  Japanese script); an ASCII string that differs is a code change (a caption, a prompt, a key);
- an f-string that was translated may reorder its text, but must hold the same ``{...}`` fields
  with the same conversions and format specs;
- ``set_language("ja")`` and its import, which only the Japanese edition has, are left out;
- the cells must match one to one, with the same tags (``skip-execution``, ``hide-input``, ...).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JA = ROOT / "ja"
JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def code_cells(path: Path) -> list[dict]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = cell["source"]
        cells.append({"source": "".join(src) if isinstance(src, list) else src,
                      "tags": sorted(cell.get("metadata", {}).get("tags", []))})
    return cells


def _is_language_switch(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return [a.name for a in node.names] == ["set_language"]
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        fn = node.value.func
        name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
        return name == "set_language"
    return False


def _strip_switch(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                setattr(node, field, [s for s in body if not _is_language_switch(s)])
    return tree


def _fields(node: ast.JoinedStr) -> list[str]:
    return sorted(ast.dump(v) for v in node.values if isinstance(v, ast.FormattedValue))


def _text(node: ast.JoinedStr) -> str:
    return "".join(v.value for v in node.values if isinstance(v, ast.Constant))


def differences(en, ja, cell: str = "", line: int | None = None) -> list[str]:
    """Where the Japanese tree is not the English one, allowing translated strings."""
    line = getattr(en, "lineno", line)
    where = f"{cell}, line {line}" if line else cell
    if isinstance(en, ast.Constant) and isinstance(ja, ast.Constant) \
            and isinstance(en.value, str) and isinstance(ja.value, str):
        if en.value == ja.value or JAPANESE.search(ja.value):
            return []
        return [f"{where}: the string {en.value!r} became {ja.value!r} (not a translation)"]
    if isinstance(en, ast.JoinedStr) and isinstance(ja, ast.JoinedStr) and JAPANESE.search(_text(ja)):
        if _fields(en) != _fields(ja):
            return [f"{where}: a translated f-string must keep the fields of {ast.unparse(en)}, "
                    f"got {ast.unparse(ja)}"]
        return []
    if type(en) is not type(ja):
        show = lambda n: ast.unparse(n) if isinstance(n, ast.AST) else repr(n)  # noqa: E731
        return [f"{where}: {show(en)} became {show(ja)}"]
    if isinstance(en, list):
        if len(en) != len(ja):
            return [f"{where}: {len(en)} statements or items became {len(ja)}"]
        return [d for a, b in zip(en, ja) for d in differences(a, b, cell, line)]
    if not isinstance(en, ast.AST):
        return [] if en == ja else [f"{where}: {en!r} became {ja!r}"]
    return [d for field in en._fields
            for d in differences(getattr(en, field, None), getattr(ja, field, None), cell, line)]


def parse(source: str) -> ast.Module:
    # Shell and magic lines (none in the book today) would not parse as Python.
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("!", "%"))]
    return ast.parse("\n".join(lines))


def compare(en_path: Path, ja_path: Path) -> list[str]:
    """Every difference in code between an English chapter and its Japanese edition."""
    en, ja = code_cells(en_path), code_cells(ja_path)
    if len(en) != len(ja):
        return [f"{len(en)} code cells in English, {len(ja)} in Japanese"]
    out = []
    for i, (a, b) in enumerate(zip(en, ja)):
        where = f"code cell {i + 1}"
        if a["tags"] != b["tags"]:
            out.append(f"{where}: tags {a['tags']} became {b['tags']}")
        try:
            tree_ja = _strip_switch(parse(b["source"]))
        except SyntaxError as err:
            out.append(f"{where}: the Japanese cell does not parse: {err}")
            continue
        out += differences(parse(a["source"]), tree_ja, where)
    return out
