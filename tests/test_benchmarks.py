"""The GPU benchmark scripts run where no GPU is: their ``--smoke`` mode builds a small model
on the CPU and must find the same token ids as HuggingFace, so that a lent GPU's minutes are
not spent on a script that breaks."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("lm, model", [("t5", "BLIP-2"), ("opt", "BLIP-2"), ("t5", "InstructBLIP")])
def test_the_captioning_benchmark_runs_small_and_finds_hfs_ids(lm, model, tmp_path, capsys):
    bench = load("bench_captioning")
    out = tmp_path / "result.json"
    instruct = ["--instruct"] if model == "InstructBLIP" else []
    bench.main(["--smoke", "--lm", lm, *instruct, "--repeats", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["model"] == model and result["language_model"] == lm and result["device"] == "cpu"
    assert result["identical_token_ids_fraction"] == 1.0
    assert result["soft_prompt_max_abs_diff"] < 1e-5
    assert "ratio lite/hf" in capsys.readouterr().out


def test_the_captioning_benchmark_measures_instructblip_with_flan_t5_only(capsys):
    bench = load("bench_captioning")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--smoke", "--lm", "opt", "--instruct"])
    assert exit_.value.code == 2
    assert "--instruct measures InstructBLIP-Flan-T5-XL: leave --lm at t5" in capsys.readouterr().err


def test_the_full_size_instructblip_is_flan_t5_xls_architecture():
    from transformers import InstructBlipForConditionalGeneration

    from qformer_lite.testing import untie_lm_head_

    cfg = load("bench_captioning").full_size_config("t5", instruct=True)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = untie_lm_head_(InstructBlipForConditionalGeneration(cfg))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert cfg.num_query_tokens == 32 and cfg.qformer_config.cross_attention_frequency == 2
    assert count(model.vision_model) == 985_952_256  # EVA ViT-g/14, as in BLIP-2
    # BLIP-2's Q-Former with its text parts, word and position embeddings, and the 32 queries
    assert count(model.qformer) + model.query_tokens.numel() == 185_684_736
    assert count(model.language_model) == 2_849_757_184  # Flan-T5-XL, with its own lm_head


def test_the_sweep_measures_each_variant_beside_the_defaults(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QFORMER_LITE_CACHE", str(tmp_path / "cache"))  # restored after: --cache sets it
    sweep = load("sweep_miniature")
    out = tmp_path / "rows.json"
    assert sweep.main(["--preset", "quick", "--cache", str(tmp_path / "cache"), "--json", str(out),
                       "stage1.optim.steps=3,stage1.optim.lr=0.003"]) == 0
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["defaults", "stage1.optim.steps=3,stage1.optim.lr=0.003"]
    defaults, variant = rows
    assert defaults["stage1_s"] is not None and defaults["t5_s"] is not None  # trained
    assert variant["t5_s"] is None and variant["image_encoder_s"] is None  # the stand-ins' settings are the defaults'
    assert variant["stage1_s"] is not None and variant["stage2_s"] is not None  # a new stage 1, so a new stage 2
    for row in rows:
        assert 0.0 <= row["exact_match"] <= 1.0 and 0.0 <= row["recall_at_1"] <= 1.0
    assert "stage1.optim.steps=3" in capsys.readouterr().out


def test_the_sweep_runs_every_variant_with_each_seed_and_prints_their_means(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QFORMER_LITE_CACHE", str(tmp_path / "cache"))
    sweep = load("sweep_miniature")
    out = tmp_path / "rows.json"
    assert sweep.main(["--preset", "quick", "--cache", str(tmp_path / "cache"), "--json", str(out),
                       "--seeds", "0,1", "stage2.optim.steps=3"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["variant"], r["seed"]) for r in rows] == [
        ("defaults", 0), ("stage2.optim.steps=3", 0), ("defaults", 1), ("stage2.optim.steps=3", 1)]
    assert rows[2]["t5_s"] is not None and rows[2]["stage1_s"] is not None  # seed 1 trains its own parts
    assert rows[3]["t5_s"] is None and rows[3]["stage1_s"] is None  # and its variant reads them
    printed = capsys.readouterr().out
    means = printed.split("mean over seeds 0, 1:\n")[1].splitlines()
    for name, line in zip(("defaults", "stage2.optim.steps=3"), means):
        mine = [r for r in rows if r["variant"] == name]
        exact = sum(r["exact_match"] for r in mine) / 2
        assert line.startswith(name) and f"{exact:.1%}" in line


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,1", "seed=3"], "a variant sets seed; with --seeds"),
    (["--seeds", "0,x"], "seeds must be integers separated by commas, got '0,x'"),
])
def test_the_sweep_refuses_seeds_it_cannot_run(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QFORMER_LITE_CACHE", str(tmp_path))
    sweep = load("sweep_miniature")
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--preset", "quick", "--cache", str(tmp_path), *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("variant, message", [
    ("stage1.optim.stepz=3", "OptimConfig has no setting 'stepz'; it has steps"),
    ("stage1=3", "MiniatureConfig.stage1 is a group of settings"),
    ("seed.x=1", "MiniatureConfig.seed is a value, not a group of settings"),
    ("stage1.optim.steps", "each setting must read name=value"),
    ("stage1.optim.steps=0", "OptimConfig.steps must be a positive integer, got 0"),
])
def test_the_sweep_names_a_bad_setting(variant, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QFORMER_LITE_CACHE", str(tmp_path))
    sweep = load("sweep_miniature")
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--preset", "quick", "--cache", str(tmp_path), variant])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_rank_of_the_two_process_stage_1_alone_computes_lavis_loss():
    """With a world of one (the gather returns what it is given), a rank's losses are those of
    ``QFormerPretraining.forward``, hard negatives included: the same draws from the same
    generator."""
    import torch
    from qformer_lite.miniature.config import MiniatureConfig
    from qformer_lite.pretraining import QFormerPretraining

    bench = load("bench_stage1_two_processes")
    config = MiniatureConfig.quick().qformer
    torch.manual_seed(0)
    model = QFormerPretraining(config).train()
    features = torch.randn(12, 10, config.encoder_hidden_size)
    ids = torch.randint(7, config.vocab_size, (12, 9))
    ids[:, 0] = 3
    mask = torch.ones_like(ids)
    mask[::3, -3:] = 0
    idx = torch.tensor([5, 0, 7, 2, 9, 11, 1, 3])
    ours = bench.rank_losses(model, features, ids, mask, idx, 0, 1, 5, torch.Generator().manual_seed(4), 1e-4,
                             lambda x: x)
    theirs = model(features[idx], ids[idx], mask[idx], dec_token_id=5, generator=torch.Generator().manual_seed(4)).loss
    assert torch.allclose(ours, theirs, atol=1e-5), (ours.item(), theirs.item())


def test_the_two_process_stage_1_runs_small(tmp_path):
    """Run as a script, as its workers must be importable by the processes it spawns."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "QFORMER_LITE_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_stage1_two_processes.py"),
                           "--preset", "quick"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "one process, 2 threads" in done.stdout and "two processes, 1 thread each" in done.stdout
