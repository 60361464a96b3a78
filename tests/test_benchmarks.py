"""The GPU benchmark scripts run where no GPU is: their ``--smoke`` mode builds a small model
on the CPU and must find the same token ids as HuggingFace, so that a lent GPU's minutes are
not spent on a script that breaks."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("lm", ["t5", "opt"])
def test_the_captioning_benchmark_runs_small_and_finds_hfs_ids(lm, tmp_path, capsys):
    bench = load("bench_captioning")
    out = tmp_path / "result.json"
    bench.main(["--smoke", "--lm", lm, "--repeats", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["language_model"] == lm and result["device"] == "cpu"
    assert result["identical_token_ids_fraction"] == 1.0
    assert result["soft_prompt_max_abs_diff"] < 1e-5
    assert "ratio lite/hf" in capsys.readouterr().out
