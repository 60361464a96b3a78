"""Hygiene of the book: configuration, table of contents, notebooks and citations.

These run in a second and catch what a strict build or a reader would otherwise find late:
a notebook left out of the toc, committed outputs, a badge pointing at another chapter,
Jupyter Book 2 installed by accident, a citation key with no entry.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PAGES = sorted((ROOT / "book").glob("*.md"))
BADGE_IMAGE = "../book/images/colab-badge.svg"  # vendored: the offline book shows no broken image


def toc_files(node) -> list[str]:
    """Every ``file:`` (and the root) named anywhere in the toc."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(toc_files(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(toc_files(item))
    return found


def resolve(entry: str) -> Path | None:
    """The source file a toc entry names (the extension is optional in the toc)."""
    base = ROOT / entry
    if base.suffix in (".md", ".ipynb") and base.exists():
        return base
    for suffix in (".md", ".ipynb"):
        if base.with_suffix(suffix).exists():
            return base.with_suffix(suffix)
    return None


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def executed(path: Path) -> bool:
    """Notebooks under ``execute.exclude_patterns`` keep their outputs; the rest must not."""
    rel = path.relative_to(ROOT).as_posix()
    return not any(fnmatch(rel, pattern) for pattern in CONFIG["execute"].get("exclude_patterns") or [])


def repository() -> str:
    url = CONFIG["repository"]["url"].rstrip("/")
    assert url.startswith("https://github.com/")
    return url.removeprefix("https://github.com/")


def cite_keys(text: str) -> set[str]:
    keys = set()
    for group in re.findall(r"\{cite(?::[a-z]+)?\}`([^`]+)`", text):
        keys.update(k.strip() for k in group.split(","))
    return keys


def bib_keys() -> set[str]:
    return set(re.findall(r"@\w+\{([^,\s]+),", (ROOT / "references.bib").read_text()))


# --- the tool ---------------------------------------------------------------------------------

def test_jupyter_book_is_version_1_and_the_tree_is_a_1x_book():
    # Jupyter Book 2 ignores _config.yml/_toc.yml, builds nothing and exits 0.
    assert version("jupyter-book").split(".")[0] == "1"
    assert not (ROOT / "myst.yml").exists()
    assert (ROOT / "_config.yml").exists() and (ROOT / "_toc.yml").exists()


def test_config_executes_every_cpu_chapter_with_an_explicit_timeout():
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] == "force"
    assert isinstance(execute["timeout"], int) and 60 <= execute["timeout"] <= 900
    assert execute.get("allow_errors") is False
    assert CONFIG["only_build_toc_files"] is True


@pytest.mark.parametrize("pattern", [
    ".venv", "_build", "tests", "qformer_lite", "README.md", ".pytest_cache", "*.egg-info", "benchmarks", "_vendor",
])
def test_config_excludes_what_is_not_the_book(pattern):
    assert pattern in CONFIG["exclude_patterns"]


def test_config_repository_colab_and_extensions():
    assert CONFIG["repository"]["branch"] == "main"
    assert CONFIG["repository"]["path_to_book"] == ""
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["html"]["use_repository_button"] and CONFIG["html"]["use_issues_button"]
    assert {"sphinx_exercise", "sphinx_proof"} <= set(CONFIG["sphinx"]["extra_extensions"])
    assert CONFIG["bibtex_bibfiles"] == ["references.bib"]
    extensions = set(CONFIG["parse"]["myst_enable_extensions"])
    assert {"dollarmath", "amsmath", "colon_fence"} <= extensions


def test_math_and_widget_scripts_are_served_by_the_book_itself():
    sphinx = CONFIG["sphinx"]["config"]
    assert sphinx["html_static_path"] == ["_vendor"]
    assert (ROOT / "_vendor" / sphinx["mathjax_path"]).is_file()
    assert (ROOT / "_vendor/mathjax/output/chtml/fonts/woff-v2").is_dir()
    for script in sphinx["nb_ipywidgets_js"]:
        assert (ROOT / "_vendor" / script).is_file(), script
    # a _static/ folder would add each of its .js/.css files to every page
    assert not (ROOT / "_static").exists()


def test_nothing_sets_mplbackend():
    # kernels inherit it, and plt.show() then silently draws nothing
    for path in [ROOT / "Makefile", ROOT / "_config.yml", *(ROOT / ".ci").glob("*"), *NOTEBOOKS]:
        if path.is_file():
            assert "MPLBACKEND" not in path.read_text(), path


def test_the_makefiles_longest_chapters_exist():
    # make test starts these first (see the Makefile): a renamed chapter would silently drop
    # out of the list and might then wait at the end of a worker's queue
    line = next(l for l in (ROOT / "Makefile").read_text().splitlines() if l.startswith("LONGEST"))
    names = line.split(":=")[1].split()
    assert len(names) == 2 and all((ROOT / "notebooks" / name).is_file() for name in names), names


# --- the table of contents --------------------------------------------------------------------

def test_every_toc_entry_exists():
    entries = toc_files(TOC)
    assert TOC["format"] == "jb-book" and TOC["root"] == "book/intro"
    missing = [entry for entry in entries if resolve(entry) is None]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"
    assert len(entries) == len(set(entries)), "a file is listed twice in _toc.yml"


def test_every_notebook_and_page_is_in_the_toc():
    listed = {resolve(entry) for entry in toc_files(TOC)}
    left_out = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS + PAGES if p not in listed]
    assert not left_out, f"add these to _toc.yml: {left_out}"


def test_toc_parts_have_captions():
    assert all(part.get("caption") for part in TOC["parts"])


# --- the notebooks ----------------------------------------------------------------------------

def test_there_are_chapters():
    names = [p.name for p in NOTEBOOKS]
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", n) for n in names), names
    assert {f"{i:02d}" for i in range(1, 6)} <= {n[:2] for n in names}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_is_python3(path):
    assert load(path)["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if executed(p)], ids=lambda p: p.name)
def test_cpu_notebooks_are_committed_without_outputs(path):
    nb = load(path)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, source(cell)[:80]
    assert "widgets" not in nb["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_badge_opens_this_notebook_on_main_in_colab(path):
    text = "".join(source(c) for c in load(path)["cells"] if c["cell_type"] == "markdown")
    links = re.findall(r"\(https://colab\.research\.google\.com/github/([^)\s]+)\)", text)
    expected = f"{repository()}/blob/main/notebooks/{path.name}"
    assert links == [expected], f"{path.name}: badge links {links}, expected [{expected}]"
    assert BADGE_IMAGE in text
    assert (path.parent / BADGE_IMAGE).is_file(), f"{BADGE_IMAGE} is missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_anatomy(path):
    cells = load(path)["cells"]
    markdown = "\n".join(source(c) for c in cells if c["cell_type"] == "markdown")
    code = [source(c) for c in cells if c["cell_type"] == "code"]
    assert source(cells[0]).startswith("# "), "the first cell holds the title"
    assert "Open In Colab" in source(cells[0]), "the badge sits under the title"
    for needed in ("**In this chapter you will**", "**Expected run time:**", "## Exercises", "## Summary",
                   "## Reference"):
        assert needed in markdown, f"{path.name} lacks {needed!r}"
    assert "```{exercise}" in markdown
    starts = re.findall(r"```\{solution-start\} (\S+)\n:class: dropdown", markdown)
    labels = re.findall(r"```\{exercise\}[^\n]*\n:label: (\S+)", markdown)
    assert labels and sorted(starts) == sorted(labels), "every exercise has a solution in a dropdown"
    assert markdown.count("```{solution-end}") == len(starts)
    assert any("checks.check_" in c for c in code), "exercises are checked with qformer_lite.book.checks"
    assert cite_keys(markdown), "the chapter cites its sources"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_setup_cell_is_guarded_and_leaves_torch_alone(path):
    code = [source(c) for c in load(path)["cells"] if c["cell_type"] == "code"]
    setup = [c for c in code if "pip" in c]
    assert setup, "a setup cell installs qformer_lite on Colab"
    for cell in setup:
        assert 'if "google.colab" in sys.modules:' in cell
        installs = re.findall(r"\"([^\"]+)\"", cell.split('if "google.colab" in sys.modules:', 1)[1])
        assert not any(re.match(r"torch(vision|audio)?\b", name) for name in installs), installs
        assert "--no-deps" in cell  # installing the package itself must not pull a new torch
    assert setup[0] == next(c for c in code), "the setup cell comes first"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_do_not_depend_on_the_working_directory_or_colab_only_tools(path):
    for cell in load(path)["cells"]:
        if cell["cell_type"] != "code":
            continue
        text = source(cell)
        for bad in ("os.chdir", "Path.cwd()", "os.getcwd()", '"../', "'../", '"./', "'./", "myst_nb", "%cd "):
            assert bad not in text, f"{path.name}: {bad!r} in\n{text[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_fits_the_page(path):
    # the book shows about 80 columns of code before a scroll bar, a solution's dropdown about 70
    inside_solution = False
    for cell in load(path)["cells"]:
        text = source(cell)
        if cell["cell_type"] == "markdown":
            if "```{solution-start}" in text:
                inside_solution = True
            if "```{solution-end}" in text:
                inside_solution = False
            continue
        limit = 70 if inside_solution else 88
        for line in text.splitlines():
            assert len(line) <= limit, f"{path.name}: {len(line)} columns (at most {limit} here): {line}"
        for pragma in ("# noqa", "# type: ignore", "# fmt:", "# pragma"):
            assert pragma not in text, f"{path.name}: a lint pragma in a cell the reader sees: {pragma}"


# --- pages and references ---------------------------------------------------------------------

@pytest.mark.parametrize("page", ["intro", "setup", "notation", "glossary", "misconceptions", "references"])
def test_front_and_back_matter_exist(page):
    assert (ROOT / "book" / f"{page}.md").is_file()


GLOSSARY_TERMS = [  # the chapters link these with {term}: each must be a term of the glossary
    "Q-Former", "learnable queries", "frozen image encoder", "LLM", "token budget", "patch", "[CLS] token",
    "position embedding", "permutation equivariance", "attention", "scaled dot-product attention",
    "self-attention", "multi-head attention", "cross-attention", "FFN", "post-LN", "attention mask", "padding",
    "causal mask", "unimodal mask", "bi-directional mask", "multimodal causal mask", "ITC", "ITM", "ITG",
    "key/value cache", "hard negative", "temperature", "stage 1", "stage 2", "soft prompt", "recall@1",
    "label smoothing", "ln_vision", "beam search", "LAVIS", "EVA-CLIP", "[DEC]", "prefix language modelling",
    "CapFilt", "connector", "Perceiver resampler", "adaptive average pooling", "decoder-only language model",
    "left padding", "chat template", "frame position embedding", "video Q-Former", "temporal pooling",
]


def glossary_entries() -> dict[str, str]:
    """Each term of the ``{glossary}`` directives of book/glossary.md -> its definition."""
    text = (ROOT / "book/glossary.md").read_text()
    entries: dict[str, str] = {}
    for block in re.findall(r"```\{glossary\}\n(.*?)\n```", text, flags=re.S):
        for entry in re.split(r"\n\s*\n(?=\S)", block.strip("\n")):
            lines = entry.splitlines()
            terms = [line for line in lines if line and not line[0].isspace()]
            definition = "\n".join(line.strip() for line in lines if line[:1].isspace())
            assert terms and definition, f"a glossary entry without a term or a definition: {entry[:80]!r}"
            for term in terms:
                assert term not in entries, f"{term!r} is defined twice"
                entries[term] = definition
    return entries


def test_glossary_has_every_term_the_chapters_link():
    entries = glossary_entries()
    missing = [term for term in GLOSSARY_TERMS if term not in entries]
    assert not missing, f"add these terms to the glossary: {missing}"
    for term, definition in entries.items():
        assert "日本語:" in definition, f"{term!r} has no Japanese term"
        assert re.search(r"[Cc]hapters?\b|\{doc\}", definition), f"{term!r} names no chapter"


def test_glossary_pairs_english_with_japanese():
    entries = glossary_entries()
    for english, japanese in [("learnable queries", "学習可能なクエリ"), ("cross-attention", "クロスアテンション"),
                              ("self-attention", "セルフアテンション"), ("causal mask", "因果マスク"),
                              ("unimodal mask", "ユニモーダルマスク"), ("token budget", "トークン予算")]:
        assert japanese in entries[english], english
    assert "Querying Transformer" in entries["Q-Former"]  # kept in English, not in katakana


LAVIS_PINS = ("506965b9c4a18c1e565bd32acaccabe0198433f7", "baad2d7c8df599d8d9b081ba2e946626eaa2dc34")  # main, v1.0.2


def test_source_links_are_pinned():
    # A link to a branch drifts as the code moves; the pages quote line numbers and settings.
    texts = {p.name: p.read_text() for p in PAGES}
    texts.update({p.name: "".join(source(c) for c in load(p)["cells"] if c["cell_type"] == "markdown")
                  for p in NOTEBOOKS})
    for name, text in texts.items():
        for ref in re.findall(r"https://github\.com/salesforce/LAVIS/(?:blob|tree)/([^/)\s]+)", text):
            assert ref in LAVIS_PINS, f"{name}: LAVIS link not pinned ({ref})"
        for ref in re.findall(r"https://github\.com/huggingface/transformers/(?:blob|tree)/([^/)\s]+)", text):
            assert re.fullmatch(r"v\d+\.\d+\.\d+", ref), f"{name}: transformers link not pinned ({ref})"


def test_recipe_page_follows_the_miniature_chapters():
    part = next(p for p in TOC["parts"] if "Part II" in p["caption"])
    files = [c["file"] for c in part["chapters"]]
    assert files.index("book/recipe") == files.index("notebooks/07_t5_projection") + 1


def test_references_hold_the_papers_the_book_rests_on():
    required = {"li2023blip2", "dai2023instructblip", "li2022blip", "devlin2019bert", "dosovitskiy2021vit",
                "raffel2020t5", "chung2022flant5", "alayrac2022flamingo", "liu2023llava", "vaswani2017attention"}
    assert required <= bib_keys()


def test_every_citation_has_an_entry():
    texts = [p.read_text() for p in PAGES] + [
        "".join(source(c) for c in load(p)["cells"] if c["cell_type"] == "markdown") for p in NOTEBOOKS
    ]
    cited = set().union(*(cite_keys(t) for t in texts))
    assert cited, "nothing is cited"
    assert not cited - bib_keys(), f"cited but not in references.bib: {sorted(cited - bib_keys())}"


# --- the reference cells ----------------------------------------------------------------------

def reference_cell(name: str) -> str:
    """The code cell right after a chapter's "## Reference" heading."""
    cells = load(ROOT / "notebooks" / name)["cells"]
    for i, cell in enumerate(cells[:-1]):
        if cell["cell_type"] == "markdown" and source(cell).startswith("## Reference"):
            return source(cells[i + 1])
    raise AssertionError(f"{name} has no reference cell")


def test_reference_cells_keep_bert_names_so_library_weights_load():
    # The chapters say the weights copy across by name: hold the copy-paste cells to it.
    import torch

    from qformer_lite import QFormerConfig
    from qformer_lite.layer import AttentionBlock, QFormerLayer

    tiny = QFormerConfig.tiny()
    cfg = QFormerConfig.tiny(intermediate_size=4 * tiny.hidden_size)  # the cells use F = 4D
    D, H, C = cfg.hidden_size, cfg.num_attention_heads, cfg.encoder_hidden_size
    torch.manual_seed(0)
    queries, image = torch.randn(2, cfg.num_query_tokens, D), torch.randn(2, 17, C)

    cell3: dict = {}
    exec(reference_cell("03_cross_attention.ipynb"), cell3)
    library = AttentionBlock(cfg, context_size=C).eval()
    block = cell3["CrossAttentionBlock"](D, H, C).eval()
    block.load_state_dict(library.state_dict(), strict=True)
    with torch.no_grad():
        expected, expected_maps, _ = library(queries, image, output_attentions=True)
        got, maps = block(queries, image)
    assert torch.allclose(got, expected, atol=1e-6) and torch.allclose(maps, expected_maps, atol=1e-6)

    cell4: dict = {}
    exec(reference_cell("04_qformer_stack.ipynb"), cell4)
    x = torch.randn(2, cfg.num_query_tokens + 5, D)  # [queries; text]
    for index in (0, 1):  # with and without cross-attention
        library = QFormerLayer(cfg, index).eval()
        layer = cell4["QFormerLayer"](D, H, C, cross=cfg.has_cross_attention(index)).eval()
        layer.load_state_dict(library.state_dict(), strict=True)
        with torch.no_grad():
            expected = library(x, cfg.num_query_tokens, image_embeds=image)[0]
            got = layer(x, cfg.num_query_tokens, image)
        assert torch.allclose(got, expected, atol=1e-6), index


def test_the_bibliography_labels_entries_as_the_text_cites_them():
    from pybtex.database import parse_file

    from qformer_lite.book.bibstyle import _label

    entries = parse_file(str(ROOT / "references.bib")).entries
    assert _label(entries["li2023blip2"]) == "Li et al., 2023"
    assert all(re.fullmatch(r"[^,]+, \d{4}", _label(e)) for e in entries.values())
    for config in (CONFIG, yaml.safe_load((ROOT / "ja" / "_config.yml").read_text(encoding="utf-8"))):
        assert "qformer_lite.book.bibstyle" in config["sphinx"]["extra_extensions"]
        assert config["sphinx"]["config"]["bibtex_default_style"] == "authoryear"
