"""Settings that chapter 9's prose names (steps and batch sizes) are the ones its code runs, in
both editions: a change to ``connector_world`` or to the miniature's defaults must reach the
sentences that describe them."""

import re

import pytest
from test_book import ROOT, load, source

from qformer_lite.miniature.compare import connector_world
from qformer_lite.miniature.config import MiniatureConfig

CHAPTER = "notebooks/09_why_a_qformer.ipynb"


def prose(path) -> str:
    return " ".join(source(c) for c in load(path)["cells"] if c["cell_type"] == "markdown").replace("\n", " ")


def expected() -> dict[str, int]:
    world, default = connector_world(), MiniatureConfig.default()
    return {"steps": world.stage2.optim.steps, "batch": world.stage2.optim.batch_size,
            "ch7_steps": default.stage2.optim.steps, "ch7_batch": default.stage2.optim.batch_size,
            "stage1_steps": world.stage1.optim.steps}


PATTERNS = {
    "en": [r"`config\.stage2`: (?P<steps>\d+) steps of (?P<batch>\d+) captions, where chapter 7 gives its "
           r"Q-Former (?P<ch7_steps>\d+) of (?P<ch7_batch>\d+)",
           r"for (?P<stage1_steps>\d+) steps \(`config\.stage1`"],
    "ja": [r"`config\.stage2`: (?P<batch>\d+) キャプションのバッチで (?P<steps>\d+) ステップ。第 7 章の Q-Former は "
           r"(?P<ch7_batch>\d+) キャプションで (?P<ch7_steps>\d+) ステップ",
           r"(?P<stage1_steps>\d+) ステップ学習します（`config\.stage1`"],
}


@pytest.mark.parametrize("edition", ["en", "ja"])
def test_chapter_9_names_the_budgets_its_code_runs(edition):
    text = prose(ROOT / CHAPTER if edition == "en" else ROOT / "ja" / CHAPTER)
    found = {}
    for pattern in PATTERNS[edition]:
        match = re.search(pattern, text)
        assert match, f"chapter 9 ({edition}) no longer has the sentence {pattern!r}: update this test with it"
        found.update({k: int(v) for k, v in match.groupdict().items()})
    assert found == expected()
