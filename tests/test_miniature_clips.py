"""Chapter 12's clips of moving shapes and its four video models (qformer_lite/miniature/clips.py)."""

from collections import Counter

import numpy as np
import pytest
import torch

from qformer_lite.miniature import clips
from qformer_lite.miniature.config import ClipConfig, MiniatureConfig
from qformer_lite.miniature.data import DataConfig


@pytest.fixture(scope="module")
def config():
    return MiniatureConfig.quick()


def frame_set(scenes):
    return Counter((o.colour, o.shape, o.row, o.col) for s in scenes for o in s.objects)


def test_every_caption_parses_and_reverses():
    captions = clips.clip_captions()
    assert len(captions) == len(set(captions)) == 20 * 4 + 20 * 4
    for c in captions:
        back = clips.reversed_caption(c)
        assert back in captions and back != c and clips.reversed_caption(back) == c
    assert clips.reversed_caption("a red circle turns blue") == "a blue circle turns red"
    assert clips.reversed_caption("a red circle moves up") == "a red circle moves down"


@pytest.mark.parametrize("bad", ["a red circle turns red", "a red circle moves sideways", "red circle moves left",
                                 "a red circle at the top left", ""])
def test_a_caption_of_another_world_is_refused(bad):
    with pytest.raises(ValueError, match="not a clip caption"):
        clips.parse_clip_caption(bad)


def test_the_split_holds_out_both_kinds_and_is_fixed():
    split = clips.split_clip_captions(ClipConfig())
    assert not set(split.train) & set(split.test)
    assert sorted(split.train + split.test) == sorted(clips.clip_captions())
    assert {c.split()[3] for c in split.test} == {"moves", "turns"}
    assert clips.split_clip_captions(ClipConfig()) == split
    assert clips.split_clip_captions(ClipConfig(split_seed=1)).test != split.test


@pytest.mark.parametrize("caption", ["a red circle moves right", "a blue cross moves up", "a green square turns yellow"])
def test_a_clip_played_backwards_is_the_reversed_captions_clip(caption):
    scenes = clips.clip_scenes(caption, np.random.default_rng(0), DataConfig())
    backwards = clips.clip_scenes(clips.reversed_caption(caption), np.random.default_rng(0), DataConfig())
    assert len(scenes) == 4
    # the same frames as a set: only their order tells the two captions apart
    assert frame_set(scenes) == frame_set(backwards)
    assert [frame_set([s]) for s in scenes] == [frame_set([s]) for s in backwards[::-1]]
    colour, shape, verb, what = clips.parse_clip_caption(caption)
    first, last = scenes[0].objects[0], scenes[-1].objects[0]
    if verb == "moves":
        axis = "col" if what in ("left", "right") else "row"
        path = [getattr(s.objects[0], axis) for s in scenes]
        assert path == ([0, 1, 1, 2] if what in ("right", "down") else [2, 1, 1, 0])
    else:
        assert (first.colour, last.colour) == (colour, what) and (first.row, first.col) == (last.row, last.col)


def test_pools_are_deterministic(config):
    a, b = clips.clip_pool("test", config), clips.clip_pool("test", config)
    assert torch.equal(a.frames, b.frames) and a.captions == b.captions
    assert a.frames.shape[1:] == (4, 48, 48, 3) and a.frames.dtype == torch.uint8
    assert a.pixels(slice(0, 2)).shape == (2, 4, 3, 48, 48)
    assert set(a.captions) == set(clips.split_clip_captions(config.clips).test)
    train = clips.clip_pool("train", config)
    assert len(train) == config.clips.train_clips and not set(train.captions) & set(a.captions)
    with pytest.raises(ValueError, match="split must be one of"):
        clips.clip_pool("val", config)


def test_scores_count_what_they_say():
    refs = ["a red circle moves left", "a red circle moves up", "a red circle turns blue", "a red circle turns blue"]
    outs = ["a red circle moves left", "a red circle moves down", "a blue circle turns red", "a red square turns blue"]
    s = clips.clip_scores(refs, outs)
    assert s["exact"] == 0.25 and s["direction"] == 0.5 and s["change"] == 0.5 and s["reversed"] == 0.5


@pytest.fixture(scope="module")
def parts(config):
    from qformer_lite.miniature.standins import load_standins
    from qformer_lite.qformer import QFormer

    standins = load_standins(config, progress=False, use_cache=False)
    t5, _, _ = clips.cached_clip_t5(config, progress=False, use_cache=False)
    torch.manual_seed(0)
    return standins, t5, QFormer(config.qformer)


def test_each_model_hands_on_its_number_of_tokens(config, parts):
    standins, t5, qformer = parts
    q, width = config.qformer.num_query_tokens, config.vision.embed_dim
    n = config.vision.num_patches + 1
    for kind, expected in [("video-qformer", lambda f: q), ("no-positions", lambda f: q),
                           ("concatenation", lambda f: f * q), ("average", lambda f: q)]:
        model = clips.build_video_model(kind, config, standins, t5, qformer)
        assert [clips.llm_tokens(model, f, n, width) for f in (1, 4, 8)] == [expected(f) for f in (1, 4, 8)]
    with pytest.raises(ValueError, match="kind must be one of"):
        clips.build_video_model("lstm", config, standins, t5, qformer)


def test_which_models_see_the_order_of_frames(config, parts):
    standins, t5, qformer = parts
    features = torch.randn(2, 4, config.vision.num_patches + 1, config.vision.embed_dim)
    perm = torch.tensor([2, 0, 3, 1])
    changed = {}
    for kind in clips.KINDS:
        model = clips.build_video_model(kind, config, standins, t5, qformer).eval()
        with torch.no_grad():
            a, _ = model.image_prefix(None, image_embeds=features)
            b, _ = model.image_prefix(None, image_embeds=features[:, perm])
        changed[kind] = (a - b).abs().max().item()
    assert changed["video-qformer"] > 1e-3 and changed["concatenation"] > 1e-3
    assert changed["no-positions"] < 1e-5 and changed["average"] < 1e-5


def test_what_each_model_trains(config, parts):
    standins, t5, qformer = parts
    for kind in clips.KINDS:
        model = clips.build_video_model(kind, config, standins, t5, qformer)
        trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
        if kind in ("video-qformer", "no-positions"):
            assert trained == {"video_qformer", "language_projection"}, (kind, trained)
        else:
            assert trained == {"qformer", "language_projection"}, (kind, trained)


def test_runs_are_cached_and_deterministic(config):
    first = clips.video_runs(config, kinds=("video-qformer", "average"), progress=False)
    again = clips.video_runs(config, kinds=("video-qformer", "average"), progress=False)
    assert [r["from_cache"] for r in first] == [False, False] and [r["from_cache"] for r in again] == [True, True]
    assert [r["captions"] for r in first] == [r["captions"] for r in again]
    assert first[0]["tokens"] == config.qformer.num_query_tokens
    fresh = clips.video_runs(config, kinds=("video-qformer",), progress=False, use_cache=False)
    assert fresh[0]["captions"] == first[0]["captions"]
    assert fresh[0]["history"]["loss"] == first[0]["history"]["loss"]


def test_clip_config_is_checked():
    with pytest.raises(ValueError, match="frames must be 4"):
        ClipConfig(frames=5)
    with pytest.raises(ValueError, match="train_clips must be a positive integer"):
        ClipConfig(train_clips=0)
    cfg = MiniatureConfig.quick()
    assert MiniatureConfig.from_dict(cfg.to_dict()).clips == cfg.clips
