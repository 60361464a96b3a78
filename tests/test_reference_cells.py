"""Every chapter's "Reference" cell is meant to be copied into a project of one's own, so it
must run alone: here each one runs in a fresh interpreter, in an empty folder, with none of
its chapter's earlier cells."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def reference_cell(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "markdown" and "".join(cell["source"]).startswith("## Reference"):
            code = next(c for c in cells[i + 1:] if c["cell_type"] == "code")
            return "".join(code["source"])
    raise AssertionError(f"{path.name} has no '## Reference' section")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_reference_cell_runs_alone(path, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "agg"}
    run = subprocess.run([sys.executable, "-c", reference_cell(path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{path.name}'s reference cell failed alone:\n{run.stderr[-3000:]}"
