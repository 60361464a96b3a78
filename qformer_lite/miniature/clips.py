"""Chapter 12's world and experiment: clips of moving shapes, and what each video model keeps of
their order.

A clip is four frames of chapter 6's world with one object in them, and one caption:

    motion   "a red circle moves left"    the object crosses its row (or its column) a cell a
                                           frame, pausing in the middle: columns 2, 1, 1, 0
    colour   "a red circle turns blue"    the object stays in its cell: red, red, blue, blue

Played backwards, every clip is a clip of another caption ("moves right", "a blue circle turns
red") made of the same four frames. A model that keeps the frames but not their order cannot
tell the two apart: it gives both the same caption, and where training showed it the clips of
one of the two (the reverse of a held-out caption is most often a training caption), that one.

The split is made on captions, as chapter 6's: a random part of the captions of each kind is
held out, and the test clips show only those. Four models caption the clips, all from chapter
6's frozen image encoder and stage-1 Q-Former, run on every frame, and a frozen T5 pretrained to
rebuild the training clips' captions from damaged copies (as chapter 6's T5 stand-in):

- ``"video-qformer"``: Video-LLaMA's video Q-Former with frame positions (``VideoLlamaT5``);
- ``"no-positions"``: the same video Q-Former without them;
- ``"concatenation"``: every frame's projected queries, frame after frame, InstructBLIP-Video's
  way (``ConcatenatedFramesT5``): F x Q tokens for T5;
- ``"average"``: the frames' projected queries averaged over time (``AveragedFramesT5``).

The first two train the video Q-Former and the projection, the image Q-Former frozen, as
Video-LLaMA does; the last two train the image Q-Former and the projection, as stage 2 does.
``video_runs`` trains (or reads) each and measures it on the held-out clips.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..blip2_t5 import Blip2T5
from ..config import QFormerConfig
from ..video import AveragedFramesT5, ConcatenatedFramesT5, VideoLlamaT5, VideoQFormer, video_qformer_config
from . import cache
from .checkpoint import query_only
from .config import ClipConfig, MiniatureConfig
from .data import (COLOURS, GRID, SHAPES, CaptionSplit, DataConfig, ImagePool, Scene, ShapeObject, hold_out, render,
                   to_tensor)
from .evaluate import generate_captions
from .standins import CaptionTokenizer, StandIns, build_t5, encode_images, pretrain_t5
from .trainer import fit, seeded

DIRECTIONS = ("left", "right", "up", "down")
PATH = (0, 1, 1, 2)  # the cells a move visits, frame by frame, going right or down
KINDS = ("video-qformer", "no-positions", "concatenation", "average")


# --- the world -------------------------------------------------------------------------------

def clip_captions() -> list[str]:
    """Every caption a clip can have, in a fixed order: the moves, then the colour changes."""
    objects = [(c, s) for c in COLOURS for s in SHAPES]
    moves = [f"a {c} {s} moves {d}" for c, s in objects for d in DIRECTIONS]
    turns = [f"a {c} {s} turns {c2}" for c, s in objects for c2 in COLOURS if c2 != c]
    return moves + turns


def parse_clip_caption(caption: str) -> tuple[str, str, str, str]:
    """``(colour, shape, verb, what)``: ``("red", "circle", "moves", "left")`` or
    ``("red", "circle", "turns", "blue")``."""
    words = caption.split()
    ok = len(words) == 5 and words[0] == "a" and words[1] in COLOURS and words[2] in SHAPES and (
        (words[3] == "moves" and words[4] in DIRECTIONS)
        or (words[3] == "turns" and words[4] in COLOURS and words[4] != words[1]))
    if not ok:
        raise ValueError(f"not a clip caption: {caption!r}; clips say 'a <colour> <shape> moves "
                         f"<{'|'.join(DIRECTIONS)}>' or 'a <colour> <shape> turns <another colour>'")
    return words[1], words[2], words[3], words[4]


def reversed_caption(caption: str) -> str:
    """The caption of the same clip played backwards."""
    colour, shape, verb, what = parse_clip_caption(caption)
    if verb == "moves":
        opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[what]
        return f"a {colour} {shape} moves {opposite}"
    return f"a {what} {shape} turns {colour}"


def split_clip_captions(config: ClipConfig) -> CaptionSplit:
    """Hold out a random ``held_out_fraction`` of the moves and of the colour changes."""
    captions = clip_captions()
    groups = [[c for c in captions if c.split()[3] == verb] for verb in ("moves", "turns")]
    return hold_out(groups, config.held_out_fraction, np.random.default_rng([config.split_seed, 29]))


def clip_scenes(caption: str, rng: np.random.Generator, config: DataConfig, frames: int = 4) -> list[Scene]:
    """The four scenes of one clip of ``caption``: the same object, of the same size and offset
    in its cell, moving along ``PATH`` (or back) or changing colour halfway."""
    colour, shape, verb, what = parse_clip_caption(caption)
    lo, hi = config.scale_range
    scale = float(rng.uniform(lo, hi))
    slack = int(config.cell_size * (1 - scale)) // 2
    dx, dy = (int(v) for v in rng.integers(-slack, slack + 1, size=2))
    line = int(rng.integers(GRID))
    if verb == "moves":
        path = PATH if what in ("right", "down") else PATH[::-1]
        cells = [(line, p) if what in ("left", "right") else (p, line) for p in path]
        colours = [colour] * frames
    else:
        cell = (line, int(rng.integers(GRID)))
        cells = [cell] * frames
        colours = [colour] * (frames // 2) + [what] * (frames - frames // 2)
    return [Scene((ShapeObject(c, shape, r, k, scale, dx, dy),)) for c, (r, k) in zip(colours, cells)]


@dataclass
class ClipPool:
    """Rendered clips kept as uint8, with their captions and scenes."""

    frames: torch.Tensor  # (N, F, H, W, 3) uint8
    captions: list[str]
    scenes: list[list[Scene]] = field(repr=False, default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)

    def pixels(self, index=None) -> torch.Tensor:
        frames = self.frames if index is None else self.frames[index]
        return to_tensor(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])  # (N, F, 3, H, W)


SPLITS = ("train", "test")


def clip_pool(split: str, config: MiniatureConfig) -> ClipPool:
    """``"train"``: ``clips.train_clips`` clips of training captions, drawn at random;
    ``"test"``: ``clips.test_clips_per_caption`` clips of every held-out caption. Clip ``i`` of a
    split is drawn from its own random stream (jitter and noise differ from frame to frame)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    clips = config.clips
    captions = getattr(split_clip_captions(clips), split)
    if split == "train":
        chosen = np.random.default_rng([config.seed, 31]).integers(len(captions), size=clips.train_clips)
        wanted = [captions[i] for i in chosen]
    else:
        wanted = [c for c in captions for _ in range(clips.test_clips_per_caption)]
    frames, scenes = [], []
    for i, caption in enumerate(wanted):
        rng = np.random.default_rng([config.seed, 37, SPLITS.index(split), i])
        clip = clip_scenes(caption, rng, config.data, clips.frames)
        frames.append(np.stack([render(s, config.data, rng) for s in clip]))
        scenes.append(clip)
    return ClipPool(torch.from_numpy(np.stack(frames)), wanted, scenes)


def clip_tokenizer() -> CaptionTokenizer:
    """Word-level, over the clip captions' words."""
    return CaptionTokenizer(sorted({w for c in clip_captions() for w in c.split()}))


@torch.no_grad()
def encode_clips(encoder, pool: ClipPool) -> torch.Tensor:
    """The frozen image encoder's features of every frame: (N, F, 1 + patches, C)."""
    n, f = pool.frames.shape[:2]
    frames = ImagePool(pool.frames.flatten(0, 1), [c for c in pool.captions for _ in range(f)])  # (N * F, H, W, 3)
    return encode_images(encoder, frames).unflatten(0, (n, f))  # (N, F, 1 + patches, C)


# --- the language model ----------------------------------------------------------------------

def cached_clip_t5(config: MiniatureConfig, progress: bool = True, use_cache: bool = True):
    """A fresh tiny T5 (chapter 6's sizes) pretrained to rebuild the training clips' captions from
    damaged copies, as chapter 6's stand-in was on image captions; read from the cache, or trained
    (and cached). Returns (model, history, from_cache)."""
    tokenizer = clip_tokenizer()
    captions = split_clip_captions(config.clips).train
    return cache.cached_training(
        cache.entry_for("clip-language-model", config), build_t5(config.language, tokenizer),
        lambda: pretrain_t5(config.language, tokenizer, captions, seed=config.seed, progress=progress), use_cache)


# --- the four models -------------------------------------------------------------------------

def miniature_video_qformer(config: MiniatureConfig) -> QFormerConfig:
    """Video-LLaMA's video Q-Former at the miniature's sizes: 2 layers, cross-attention in each,
    as many queries as the image Q-Former, reading its outputs."""
    q = config.qformer
    return video_qformer_config(
        encoder_hidden_size=q.hidden_size, hidden_size=q.hidden_size, num_attention_heads=q.num_attention_heads,
        intermediate_size=q.intermediate_size, num_query_tokens=q.num_query_tokens,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=q.initializer_range,
        max_position_embeddings=q.max_position_embeddings, vocab_size=q.vocab_size)


def build_video_model(kind: str, config: MiniatureConfig, standins: StandIns, t5, stage1_qformer) -> Blip2T5:
    """One of ``KINDS``, from a copy of the stage-1 Q-Former (its query path) and ``t5``; the new
    parts (the video Q-Former, the projection) start from ``config.seed``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    qformer = query_only(copy.deepcopy(stage1_qformer))
    with seeded(config.seed + 4):
        if kind in ("video-qformer", "no-positions"):
            video = VideoQFormer(miniature_video_qformer(config), use_frame_positions=kind == "video-qformer")
            return VideoLlamaT5(standins.image_encoder, qformer, video, t5)
        cls = ConcatenatedFramesT5 if kind == "concatenation" else AveragedFramesT5
        return cls(standins.image_encoder, qformer, t5)


def llm_tokens(model: Blip2T5, frames: int, image_tokens: int, width: int) -> int:
    """How many vectors ``model`` hands its language model for a clip of ``frames`` frames,
    measured on a zero clip of features (1, frames, image_tokens, width)."""
    with torch.no_grad():
        prefix, _ = model.image_prefix(None, image_embeds=torch.zeros(1, frames, image_tokens, width))
    return prefix.shape[1]


def train_video(config: MiniatureConfig, model: Blip2T5, features: torch.Tensor, captions: list[str],
                tokenizer: CaptionTokenizer, progress: bool = True, desc: str = "video"):
    """Stage 2 on clips: the trainable parts learn to write a soft prompt from which the frozen T5
    writes the clip's caption."""
    optim = config.video.optim
    model.train()
    labels, mask = tokenizer.t5(captions)
    labels = labels.masked_fill(mask == 0, -100)  # padding is not a target
    rng = np.random.default_rng([config.seed, 41])

    def step(_: int) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(rng.integers(len(captions), size=optim.batch_size))
        return {"loss": model(image_embeds=features[idx], labels=labels[idx]).loss}

    return fit(model.parameters(), optim, step, desc, progress)


def clip_scores(references: list[str], captions: list[str]) -> dict[str, float]:
    """``exact``: captions equal to the truth; ``direction``: moves whose direction is right;
    ``change``: colour changes whose two colours are right, in the right order; ``reversed``:
    clips captioned as the clip played backwards."""
    def slots(c):
        try:
            return parse_clip_caption(c)
        except ValueError:
            return None

    moves = [(r, c) for r, c in zip(references, captions) if r.split()[3] == "moves"]
    turns = [(r, c) for r, c in zip(references, captions) if r.split()[3] == "turns"]
    direction = [(s := slots(c)) is not None and s[2] == "moves" and s[3] == r.split()[4] for r, c in moves]
    change = [(s := slots(c)) is not None and s[2] == "turns" and (s[0], s[3]) == (r.split()[1], r.split()[4])
              for r, c in turns]
    return {
        "exact": float(np.mean([r == c for r, c in zip(references, captions)])),
        "direction": float(np.mean(direction)) if direction else float("nan"),
        "change": float(np.mean(change)) if change else float("nan"),
        "reversed": float(np.mean([c == reversed_caption(r) for r, c in zip(references, captions)])),
    }


def cached_video_run(kind: str, config: MiniatureConfig, standins: StandIns, t5, stage1_qformer,
                     features: torch.Tensor, captions: list[str], progress: bool = True, use_cache: bool = True):
    """One model, read from the cache or trained (and cached): (model, history, from_cache); the
    history holds the losses and, under ``"seconds"``, the training's wall time."""
    model = build_video_model(kind, config, standins, t5, stage1_qformer)

    def train():
        t = time.perf_counter()
        history = train_video(config, model, features, captions, clip_tokenizer(), progress, desc=kind)
        return model, history | {"seconds": [time.perf_counter() - t]}

    entry = cache.entry_for("video-run", config, run=kind)
    model, history, hit = cache.cached_training(entry, model, train, use_cache, trainable_only=True)
    return model.eval(), history, hit


def video_runs(config: MiniatureConfig | None = None, kinds=KINDS, progress: bool = True,
               use_cache: bool = True) -> list[dict]:
    """Every model of ``kinds`` trained (or read) and measured on the held-out clips: one dict per
    model with ``"kind"``, ``"model"``, ``"captions"``, ``"scores"`` (``clip_scores``),
    ``"tokens"`` (the language model's input vectors for a clip), ``"trainable_params"``,
    ``"train_seconds"``, ``"history"`` and ``"from_cache"``."""
    from .standins import load_standins
    from .train import cached_stage1

    config = config or MiniatureConfig.default()
    standins = load_standins(config, progress=progress, use_cache=use_cache)
    stage1, _, _ = cached_stage1(config, standins, encode_images(standins.image_encoder, standins.train_pool),
                                 progress, use_cache=use_cache)
    t5, _, _ = cached_clip_t5(config, progress, use_cache)
    train, test = clip_pool("train", config), clip_pool("test", config)
    features, test_features = encode_clips(standins.image_encoder, train), encode_clips(standins.image_encoder, test)
    tokenizer = clip_tokenizer()
    rows = []
    for kind in kinds:
        model, history, hit = cached_video_run(kind, config, standins, t5, stage1.qformer, features, train.captions,
                                               progress, use_cache)
        captions = generate_captions(model, tokenizer, test_features, num_beams=config.num_beams, max_new_tokens=8)
        rows.append({"kind": kind, "model": model, "captions": captions,
                     "scores": clip_scores(test.captions, captions),
                     "tokens": llm_tokens(model, config.clips.frames, *features.shape[2:]),
                     "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                     "train_seconds": history["seconds"][0], "history": history, "from_cache": hit})
    return rows
