"""The ``qformer-lite`` command: a quick end-to-end run, then every bad input it must refuse."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from qformer_lite.miniature import cli
from qformer_lite.miniature.data import DataConfig, ShapesDataset


@pytest.fixture(scope="module")
def trained(module_cache, tmp_path_factory):  # module_cache: this module's own, empty at first
    out = tmp_path_factory.mktemp("run") / "mini"
    assert cli.main(["train", "--output", str(out), "--preset", "quick", "--quiet"]) == 0
    return out


def _image_file(folder, name="shape.png", index=0):
    image, caption = ShapesDataset("test", DataConfig())[index]
    path = folder / name
    Image.fromarray(image).save(path)
    return path, caption


def test_train_writes_everything(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "stage1.safetensors", "metrics.json",
            "stage1_losses.png", "stage2_loss.png", "test_captions.png"} <= names
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("caption_exact_match", "image_text_recall_at_1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["wall_seconds"] > 0
    assert not [p for p in trained.parent.iterdir() if p.name.endswith(".tmp")]


def test_caption_images(trained, tmp_path, capsys):
    a, _ = _image_file(tmp_path, "a.png", 0)
    b, _ = _image_file(tmp_path, "b.png", 5)
    assert cli.main(["caption", str(a), str(b), "--checkpoint", str(trained)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(a), str(b)]


def test_caption_resizes_other_sizes(trained, tmp_path, capsys):
    path, _ = _image_file(tmp_path)
    Image.open(path).resize((96, 96), Image.NEAREST).save(tmp_path / "big.png")
    assert cli.main(["caption", str(tmp_path / "big.png"), "--checkpoint", str(trained)]) == 0


def _one_error_line(capsys, code):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("qformer-lite: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


def test_caption_missing_file(trained, tmp_path, capsys):
    line = _one_error_line(capsys, cli.main(["caption", str(tmp_path / "nope.png"), "--checkpoint", str(trained)]))
    assert "no such file" in line


def test_caption_non_image_file(trained, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    line = _one_error_line(capsys, cli.main(["caption", str(text), "--checkpoint", str(trained)]))
    assert "not an image file" in line


def test_caption_incomplete_checkpoint(trained, tmp_path, capsys):
    path, _ = _image_file(tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((trained / "config.json").read_text())
    line = _one_error_line(capsys, cli.main(["caption", str(path), "--checkpoint", str(partial)]))
    assert "incomplete" in line and "model.safetensors" in line
    line = _one_error_line(capsys, cli.main(["caption", str(path), "--checkpoint", str(tmp_path / "none")]))
    assert "does not exist" in line


def test_caption_corrupt_checkpoint(trained, tmp_path, capsys):
    import shutil

    path, _ = _image_file(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    line = _one_error_line(capsys, cli.main(["caption", str(path), "--checkpoint", str(broken)]))
    assert "model.safetensors" in line


def test_train_refuses_a_non_empty_output(trained, capsys):
    line = _one_error_line(capsys, cli.main(["train", "--output", str(trained), "--preset", "quick"]))
    assert "already exists" in line


def test_interrupted_train_leaves_nothing(tmp_path, monkeypatch, capsys):
    import qformer_lite.miniature.checkpoint as checkpoint

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", interrupted)
    out = tmp_path / "run"
    assert cli.main(["train", "--output", str(out), "--preset", "quick", "--quiet"]) == 130
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder
    assert "interrupted" in capsys.readouterr().err


def test_console_script_error_is_one_line(tmp_path):
    env_cache = {"QFORMER_LITE_CACHE": str(tmp_path / "cache")}
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "qformer_lite.miniature.cli", "caption", str(tmp_path / "missing.png"), "--checkpoint", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, **env_cache}, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr
