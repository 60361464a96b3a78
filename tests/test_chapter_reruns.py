"""A chapter prints the same numbers on its first run (the stand-ins are trained and cached)
and on every later one (they are read from the cache): each random step takes its own seed.

The stand-ins train for a few steps here instead of hundreds: what is checked is that no cell
after their training depends on the random numbers it drew, which does not depend on how long
it ran."""

import json
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "06_stage1_training.ipynb"


def opening_cells(path: Path, stop_at: str):
    """The notebook's cells before the first code cell that contains ``stop_at``."""
    nb = nbformat.reads(path.read_text(), as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and stop_at in cell.source:
            nb.cells = nb.cells[:i]
            return nb
    raise AssertionError(f"{path.name} has no code cell with {stop_at!r}")


# appended to the cell that makes the config: everything as in the chapter but the stand-ins'
# training length
SHORT_STANDINS = """
from dataclasses import replace as _replace
config = _replace(config, vision=_replace(config.vision, optim=_replace(config.vision.optim, steps=12)),
                  language=_replace(config.language, optim=_replace(config.language.optim, steps=24)))
"""


def with_short_standins(nb):
    cell = next(c for c in nb.cells if c.cell_type == "code" and "config = MiniatureConfig.default()" in c.source)
    cell.source += "\n" + SHORT_STANDINS
    return nb


def printed(nb) -> list[str]:
    """What each code cell printed or returned as text (progress bars go to stderr: left out).
    The kernel may cut one cell's printing into several stream messages: they are joined."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        text = "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout")
        text += "".join(o["data"]["text/plain"] for o in cell.outputs
                        if o["output_type"] == "execute_result" and "text/plain" in o.get("data", {}))
        out.append(text)
    return out


def execute(nb):
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(CHAPTER.parent)}}).execute()
    return nb


def test_chapter_6_opening_prints_the_same_cold_and_warm(module_cache):
    assert not any(Path(module_cache).iterdir()), "the first run must find an empty cache"
    cold = printed(execute(with_short_standins(opening_cells(CHAPTER, "cached_stage1("))))
    assert any(Path(module_cache).iterdir()), "the first run trains the stand-ins and caches them"
    warm = printed(execute(with_short_standins(opening_cells(CHAPTER, "cached_stage1("))))
    assert len(cold) >= 10
    for i, (a, b) in enumerate(zip(cold, warm)):
        assert a == b, f"code cell {i} printed\n{json.dumps(a)}\ncold and\n{json.dumps(b)}\nwarm"
