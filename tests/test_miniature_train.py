"""Training the miniature: determinism, checkpoints, the cache (all on the seconds-long quick config)."""

import json

import pytest
import torch

from qformer_lite.miniature import cache
from qformer_lite.miniature.checkpoint import build_blip2, load_checkpoint, query_only, save_checkpoint
from qformer_lite.miniature.config import MiniatureConfig
from qformer_lite.miniature.data import ShapesDataset
from qformer_lite.miniature.evaluate import exact_match, generate_captions, retrieval
from qformer_lite.miniature.standins import encode_images, load_standins
from qformer_lite.miniature.train import CaptionBatches, cached_stage1, cached_stage2, train_stage1, train_stage2
from qformer_lite.miniature.trainer import OptimConfig, fit, lr_at


@pytest.fixture(scope="module")
def setup(module_cache):  # module_cache: this module's own, empty at first
    config = MiniatureConfig.quick()
    standins = load_standins(config, progress=False)
    features = encode_images(standins.image_encoder, standins.train_pool)
    test = ShapesDataset("test", config.data)
    test_pool = test.pool(range(12))
    return config, standins, features, test_pool, encode_images(standins.image_encoder, test_pool)


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("QFORMER_LITE_CACHE", str(tmp_path / "a"))
    assert cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("QFORMER_LITE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "qformer_lite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "qformer_lite"


def test_standins_are_cached_and_reused(setup):
    config, standins, *_ = setup
    again = load_standins(config, progress=False)
    assert again.from_cache and not standins.from_cache
    assert again.vision_history == standins.vision_history
    assert len(standins.vision_history["loss"]) == config.vision.optim.steps
    for a, b in zip(standins.language_model.parameters(), again.language_model.parameters()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in again.image_encoder.parameters())


def test_an_interrupted_cache_write_leaves_nothing(tmp_path):
    def fill(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.write_atomically(tmp_path / "entry", fill)
    assert list(tmp_path.iterdir()) == []


def test_stage1_is_deterministic_by_seed(setup):
    config, standins, features, *_ = setup
    captions, tok = standins.train_pool.captions, standins.tokenizer
    _, h1 = train_stage1(config, features, captions, tok, progress=False)
    _, h2 = train_stage1(config, features, captions, tok, progress=False)
    _, h3 = train_stage1(MiniatureConfig.quick(seed=1), features, captions, tok, progress=False)
    assert h1 == h2
    assert h1["loss"] != h3["loss"]
    assert set(h1) == {"loss", "itc", "itm", "itg"} and len(h1["loss"]) == config.stage1.optim.steps


def test_stage1_stopped_early_is_the_start_of_the_full_run(setup):
    config, standins, features, *_ = setup
    captions, tok = standins.train_pool.captions, standins.tokenizer
    _, full = train_stage1(config, features, captions, tok, progress=False)
    _, first = train_stage1(config, features, captions, tok, progress=False, stop_after=3)
    assert first == {name: values[:3] for name, values in full.items()}


def test_fit_stopped_early_keeps_the_full_schedule():
    optim = OptimConfig(steps=10, batch_size=1, lr=0.5, warmup_steps=4, weight_decay=0.0)
    weight = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    before, done = [], []

    def step(_):
        before.append(weight.item())
        return {"loss": weight}  # a constant gradient: each Adam step moves the weight by its lr

    history = fit([weight], optim, step, "toy", progress=False, callback=done.append, callback_every=100,
                  stop_after=6)
    moved = [a - b for a, b in zip(before, before[1:] + [weight.item()])]
    assert len(history["loss"]) == 6 and done == [6]
    assert moved == pytest.approx([lr_at(i, 10, 0.5, 4) for i in range(6)], rel=1e-6)
    assert moved[5] != pytest.approx(lr_at(5, 6, 0.5, 4))  # step 5 of 10, not the last of 6
    for bad in (0, 11, 2.5, True):
        with pytest.raises(ValueError, match=r"stop_after must be an integer from 1 to optim.steps = 10"):
            fit([weight], optim, step, "toy", progress=False, stop_after=bad)


def test_stage2_is_deterministic_by_seed(setup):
    config, standins, features, *_ = setup
    histories = []
    for _ in range(2):
        model = build_blip2(config, standins)
        histories.append(train_stage2(config, model, features, standins.train_pool.captions, standins.tokenizer,
                                      progress=False))
    assert histories[0] == histories[1] and len(histories[0]["loss"]) == config.stage2.optim.steps


def test_stage2_trains_only_the_qformer_and_projection(setup):
    config, standins, features, *_ = setup
    model = build_blip2(config, standins)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("qformer.", "language_projection."))}
    before = {k: v.clone() for k, v in model.qformer.state_dict().items()}
    train_stage2(config, model, features, standins.train_pool.captions, standins.tokenizer, progress=False)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, model.qformer.state_dict()[k]) for k, v in before.items())


def test_query_only_keeps_the_query_path(setup):
    config, standins, features, *_ = setup
    stage1, _ = train_stage1(config, features, standins.train_pool.captions, standins.tokenizer, progress=False)
    q = query_only(stage1.qformer)
    assert q.embeddings is None and all(layer.text_ffn is None for layer in q.layers)
    x = features[:3]
    assert torch.allclose(q(x).query_output, stage1.qformer(x).query_output, atol=1e-6)


def test_checkpoint_round_trip_gives_the_same_captions(setup, tmp_path):
    config, standins, features, test_pool, test_features = setup
    model = build_blip2(config, standins)
    train_stage2(config, model, features, standins.train_pool.captions, standins.tokenizer, progress=False)
    save_checkpoint(model, config, standins.tokenizer, tmp_path / "ckpt")
    loaded, loaded_config, tokenizer = load_checkpoint(tmp_path / "ckpt")
    assert loaded_config == config
    pixels = test_pool.pixels()
    a = generate_captions(model, standins.tokenizer, pixel_values=pixels, num_beams=2)
    b = generate_captions(loaded, tokenizer, pixel_values=pixels, num_beams=2)
    assert a == b
    # features or pixels: the same captions
    assert generate_captions(loaded, tokenizer, features=test_features, num_beams=2) == b


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="incomplete: missing model.safetensors, tokenizer.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_config_round_trip(tmp_path):
    config = MiniatureConfig.default(seed=3)
    config.save(tmp_path / "c.json")
    assert MiniatureConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="unknown MiniatureConfig fields"):
        MiniatureConfig.from_dict({"epochs": 3})
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        OptimConfig(steps=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        MiniatureConfig.from_dict({"stage1": {"optim": {"lr": 0}}})


def test_retrieval_measures(setup):
    config, standins, features, test_pool, test_features = setup
    stage1, _ = train_stage1(config, features, standins.train_pool.captions, standins.tokenizer, progress=False)
    out = retrieval(stage1, test_features, test_pool.captions, standins.tokenizer, rerank_k=3)
    assert out["candidates"] == sorted(set(test_pool.captions))
    assert out["similarity"].shape == (len(test_pool), len(out["candidates"]))
    assert 0.0 <= out["recall_at_1"] <= 1.0 and 0.0 <= out["recall_at_1_itm_rerank"] <= 1.0
    assert torch.equal(out["chosen"], out["similarity"].argmax(dim=1))
    itc_only = retrieval(stage1, test_features, test_pool.captions, standins.tokenizer, rerank_k=1)
    assert itc_only["recall_at_1"] == itc_only["recall_at_1_itm_rerank"]  # k = 1: nothing to re-rank


def test_exact_match():
    assert exact_match(["a b", "c"], ["a b", "d"]) == 0.5
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])


def test_caption_batches_hold_distinct_captions():
    captions = ShapesDataset("train").captions * 3
    batches = CaptionBatches(captions, 32, seed=0, related_fraction=0.5)
    for _ in range(20):
        idx = batches.next()
        assert len(idx) == 32 and len({captions[i] for i in idx}) == 32
    with pytest.raises(ValueError, match="exceeds the number of distinct captions"):
        CaptionBatches(["a", "b"], 3, seed=0)


def test_cached_stages_are_reused(setup):
    config, standins, features, *_ = setup
    s1, h1, hit1 = cached_stage1(config, standins, features, progress=False)
    s1b, h1b, hit1b = cached_stage1(config, standins, features, progress=False)
    assert not hit1 and hit1b and h1 == h1b
    for a, b in zip(s1.parameters(), s1b.parameters()):
        assert torch.equal(a, b)
    m, h2, hit2 = cached_stage2(config, standins, features, s1, progress=False)
    mb, h2b, hit2b = cached_stage2(config, standins, features, s1b, progress=False)
    assert not hit2 and hit2b and h2 == h2b
    for a, b in zip(m.parameters(), mb.parameters()):
        assert torch.equal(a, b)
    json.dumps(h2)  # histories are plain JSON


def test_a_change_to_the_language_model_leaves_stage1_cached():
    config = MiniatureConfig.quick()
    other_t5 = config.from_dict({**config.to_dict(), "language": {**config.language.to_dict(), "d_ff": 48}})
    assert cache.entry_for("stage1", other_t5) == cache.entry_for("stage1", config)
    assert cache.entry_for("stage2", other_t5) != cache.entry_for("stage2", config)
    other_qformer = config.from_dict({**config.to_dict(), "stage1": {"optim": {"steps": 7}}})
    assert cache.entry_for("stage1", other_qformer) != cache.entry_for("stage1", config)


def test_a_run_reads_both_stages_back_and_captions_through_captioner(setup):
    from qformer_lite.captioning import Captioner
    from qformer_lite.miniature.data import to_tensor
    from qformer_lite.miniature.evaluate import test_images
    from qformer_lite.miniature.train import run

    config, *_ = setup
    first = run(config, progress=False)  # trains what the cache lacks
    again = run(config, progress=False)  # reads it all back
    assert again.from_cache == {"standins": True, "stage1": True, "stage2": True}
    assert again.stage1_history == first.stage1_history and again.stage2_history == first.stage2_history
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    images, truths = test_images(3, config)
    assert len(images) == 3 and images[0].shape == (48, 48, 3) and images[0].dtype.name == "uint8"
    test = ShapesDataset("test", config.data)
    stride = len(test) // 3  # spread over the split
    assert truths == [test[i][1] for i in (0, stride, 2 * stride)]
    captioner = Captioner(again.model, again.tokenizer, to_tensor)
    via_captioner = captioner.caption(images, num_beams=2, max_new_tokens=12)
    direct = generate_captions(again.model, again.tokenizer, pixel_values=to_tensor(images), num_beams=2)
    assert via_captioner == direct
    with pytest.raises(ValueError, match="between 1 and the"):
        test_images(0, config)


def test_caption_tokenizer_speaks_the_hf_call(setup):
    _, standins, *_ = setup
    tok = standins.tokenizer
    enc = tok(["a red circle", ""], padding="longest", return_tensors="pt")
    ids, mask = tok.t5(["a red circle", ""])
    assert torch.equal(enc.input_ids, ids) and torch.equal(enc.attention_mask, mask)
    assert enc.input_ids[1, 0] == tok.eos_token_id and enc.attention_mask[1].tolist() == [1, 0, 0, 0]
    assert tok.batch_decode(ids, skip_special_tokens=True) == ["a red circle", ""]
    with pytest.raises(ValueError, match='padding="longest"'):
        tok(["a"], padding="max_length")


def test_a_cache_entry_that_does_not_fit_is_refused(tmp_path):
    from torch import nn

    def train_small():
        return nn.Linear(3, 2), [1.0]

    small, history, hit = cache.cached_training(tmp_path / "entry", nn.Linear(3, 2), train_small)
    assert not hit and history == [1.0]
    again, _, hit = cache.cached_training(tmp_path / "entry", nn.Linear(3, 2), train_small)
    assert hit and torch.equal(again.weight, small.weight)
    with pytest.raises(ValueError, match="does not fit this model"):
        cache.cached_training(tmp_path / "entry", nn.Sequential(nn.Linear(3, 2)), train_small, trainable_only=True)
    with pytest.raises(ValueError, match="does not fit this model"):
        cache.cached_training(tmp_path / "entry", nn.Linear(4, 2), train_small)


def test_a_run_without_the_cache_trains_everything_writes_nothing_and_evaluates(tmp_path, monkeypatch):
    from qformer_lite.miniature.train import run

    monkeypatch.setenv("QFORMER_LITE_CACHE", str(tmp_path / "cache"))
    config = MiniatureConfig.quick()
    cold = run(config, progress=False, use_cache=False, evaluate_after=True)
    assert cold.from_cache == {"standins": False, "stage1": False, "stage2": False}
    assert not (tmp_path / "cache").exists()
    assert set(cold.metrics) >= {"caption_exact_match", "image_text_recall_at_1", "image_text_recall_at_1_itm_rerank"}
    assert len(cold.test_captions) == len(cold.test_pool) == cold.metrics["test_images"]
    cached = run(config, progress=False, evaluate_after=True)  # trains again, and caches this time
    assert cached.from_cache == {"standins": False, "stage1": False, "stage2": False}
    losses = lambda run: {k: v for k, v in run.stage2_history.items() if k != "seconds"}  # noqa: E731
    assert losses(cached) == losses(cold) and cached.metrics["from_cache"] == cached.from_cache
    assert cached.stage2_history["seconds"][0] > 0  # the training's wall time, cached with it
    assert {k: v for k, v in cached.metrics.items() if k != "from_cache"} == {
        k: v for k, v in cold.metrics.items() if k != "from_cache"}


# Two processes need one entry: the first trains it (slowly), the second waits on its lock
TRAIN_ONE_ENTRY = """
import sys, time
from pathlib import Path
from torch import nn
from qformer_lite.miniature import cache

def train():
    with open(sys.argv[2], "a") as calls:
        calls.write("trained\\n")
    time.sleep(1.5)
    return nn.Linear(3, 2), {"loss": [1.0]}

_, _, hit = cache.cached_training(Path(sys.argv[1]), nn.Linear(3, 2), train)
print("read" if hit else "trained")
"""


def test_two_processes_that_need_one_entry_train_it_once(tmp_path):
    import subprocess
    import sys

    calls = tmp_path / "calls.txt"
    runs = [subprocess.Popen([sys.executable, "-c", TRAIN_ONE_ENTRY, str(tmp_path / "entry"), str(calls)],
                             stdout=subprocess.PIPE, text=True) for _ in range(2)]
    printed = sorted(run.communicate(timeout=120)[0].strip() for run in runs)
    assert [run.returncode for run in runs] == [0, 0]
    assert calls.read_text() == "trained\n"  # one training, not two
    assert printed == ["read", "trained"]
