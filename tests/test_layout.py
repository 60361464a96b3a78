"""The package reads as the book's table of contents: each file at the top level and in
``miniature/`` is named in its map, the core never imports the miniature or the book's
helpers, and nothing outside the notebooks (and the command's figures) imports ``book``."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "qformer_lite"


def modules(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}


def imports(path: Path) -> set[str]:
    """The qformer_lite modules a file imports, as dotted names relative to the package."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(ROOT).with_suffix("").parts[:-1]  # the file's package
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                name = ".".join(base + ((node.module,) if node.module else ()))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {n for n in found if n.startswith("qformer_lite")}


def test_the_top_level_is_the_taught_core_and_two_folders():
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders == {"miniature", "book"}
    assert modules(PKG) == {
        "config.py", "queries.py", "attention.py", "masks.py", "layer.py", "qformer.py",
        "losses.py", "pretraining.py", "blip2_t5.py", "blip2_opt.py", "minigpt4.py", "instructblip.py", "video.py", "hf.py", "captioning.py", "testing.py", "connectors.py",
    }


def test_every_file_is_on_its_map():
    package_map = (PKG / "__init__.py").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in modules(PKG):
        assert re.search(rf"^    {re.escape(name)} ", package_map, re.M), f"{name} is missing from the package docstring"
        assert f"| `{name}` |" in readme, f"{name} is missing from the README's module table"
    miniature_map = (PKG / "miniature" / "README.md").read_text()
    for name in modules(PKG / "miniature"):
        assert f"| `{name}` |" in miniature_map, f"miniature/{name} is missing from miniature/README.md"
    for name in modules(PKG / "book"):
        assert f"`book/{name}`" in readme, f"book/{name} is missing from the README's module table"


def test_the_core_imports_neither_the_miniature_nor_the_book():
    for path in PKG.glob("*.py"):
        bad = {n for n in imports(path) if n.startswith(("qformer_lite.miniature", "qformer_lite.book"))}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_only_the_command_borrows_from_the_book():
    for path in (PKG / "miniature").glob("*.py"):
        borrowed = {n for n in imports(path) if n.startswith("qformer_lite.book")}
        if path.name == "cli.py":
            assert borrowed <= {"qformer_lite.book.plotting"} | {
                n for n in borrowed if n.startswith("qformer_lite.book.plotting.")}
        else:
            assert not borrowed, f"miniature/{path.name} imports {sorted(borrowed)}"
