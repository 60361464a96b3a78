"""Training BLIP-2 in miniature: stage 1 (Q-Former with ITC + ITM + ITG), stage 2 (Q-Former +
projection in front of a frozen T5), and ``run``, the one pipeline from stand-ins to a
captioner that ``qformer-lite train`` and the chapters share.

Every part of a run is cached (``cache.entry_for``): chapter 7 reads what chapter 6 trained,
and a second ``qformer-lite train`` reads what the first one trained, unless ``--no-cache``.
Both stages read the frozen encoder's features, computed once per image
(``standins.encode_images``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..blip2_opt import Blip2OPT
from ..blip2_t5 import Blip2T5
from ..minigpt4 import MiniGPT4
from ..pretraining import QFormerPretraining
from . import cache
from .checkpoint import build_blip2
from .config import MiniatureConfig
from .data import ImagePool, related_captions
from .evaluate import evaluate
from .standins import CaptionTokenizer, StandIns, answer_labels, chat_text, encode_images, load_standins
from .trainer import fit, seeded


class CaptionBatches:
    """Batches of distinct captions, one random image of each.

    Two images with the same caption in one batch would be a positive counted as a negative
    by ITC and drawn as a "hard negative" by ITM; distinct captions rule that out. With
    ``related_fraction`` > 0, that part of the batch comes in pairs of related captions (one
    word, or the order of the objects, apart; ``data.related_captions``), so that every batch
    holds negatives that differ in one detail, the ones the model must learn to tell apart.
    """

    def __init__(self, captions: list[str], batch_size: int, seed: int, related_fraction: float = 0.0):
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(captions):
            groups.setdefault(c, []).append(i)
        names = sorted(groups)
        self.groups = [np.array(groups[c]) for c in names]
        if batch_size > len(self.groups):
            raise ValueError(f"batch_size ({batch_size}) exceeds the number of distinct captions ({len(self.groups)})")
        if not 0.0 <= related_fraction <= 1.0:
            raise ValueError(f"related_fraction must be in [0, 1], got {related_fraction}")
        index = {c: i for i, c in enumerate(names)}
        self.related = [[index[r] for r in related_captions(c, names)] for c in names] if related_fraction else None
        self.batch_size = batch_size
        self.num_related_pairs = int(related_fraction * batch_size) // 2
        self.rng = np.random.default_rng([seed, 3])

    def next(self) -> torch.Tensor:
        rng, chosen, seen = self.rng, [], set()
        for anchor in rng.permutation(len(self.groups)):
            if len(chosen) >= self.batch_size:
                break
            if anchor in seen:
                continue
            chosen.append(anchor)
            seen.add(anchor)
            if len(chosen) // 2 < self.num_related_pairs and len(chosen) < self.batch_size:
                options = [r for r in self.related[anchor] if r not in seen]
                if options:
                    partner = options[int(rng.integers(len(options)))]
                    chosen.append(partner)
                    seen.add(partner)
        return torch.tensor([int(rng.choice(self.groups[c])) for c in chosen])  # (B,) pool indices


def train_stage1(
    config: MiniatureConfig, features: torch.Tensor, captions: list[str], tokenizer: CaptionTokenizer,
    progress: bool = True, callback=None, callback_every: int = 100, stop_after: int | None = None,
) -> tuple[QFormerPretraining, dict[str, list[float]]]:
    """Stage 1: the Q-Former learns to pull out of the frozen image features what the text says.

    Returns the model and its loss history: ``{"loss", "itc", "itm", "itg"}``, one value per step.
    ``callback(step, model)``, if given, runs every ``callback_every`` steps (e.g. to measure recall).
    ``stop_after``: only the first steps of the run (``trainer.fit``).
    """
    stage = config.stage1
    with seeded(config.seed + 1):
        model = QFormerPretraining(config.qformer).train()
    ids, mask = tokenizer.qformer(captions)  # (N, T) each, "[CLS] words [SEP]"
    batches = CaptionBatches(captions, stage.optim.batch_size, config.seed, stage.related_fraction)
    gen = torch.Generator().manual_seed(config.seed)  # hard-negative draws

    def step(_: int) -> dict[str, torch.Tensor]:
        idx = batches.next()
        out = model(features[idx], ids[idx], mask[idx], dec_token_id=tokenizer.dec_token_id, generator=gen,
                    itc_both_sides=stage.itc_both_sides, negative_floor=stage.negative_floor)
        return {"loss": out.loss, "itc": out.loss_itc, "itm": out.loss_itm, "itg": out.loss_itg}

    def report(done: int) -> None:
        callback(done, model.eval())
        model.train()

    history = fit(model.parameters(), stage.optim, step, "stage 1", progress,
                  report if callback is not None else None, callback_every, stop_after)
    return model.eval(), history


def caption_targets(model, tokenizer: CaptionTokenizer, captions: list[str]) -> dict[str, torch.Tensor]:
    """What stage 2 gives the model besides the image, for every caption, (N, T) each. T5
    (an empty prompt: [queries; </s>] in its encoder): the caption as ``labels``, "words
    </s>". A decoder-only model (``Blip2OPT``): the caption as its input after the queries,
    "</s> words </s>", and as ``labels`` from the first word on. ``MiniGPT4``: the chat turn,
    "</s> ###Human: <Img> <ImageHere> </Img> ... ###Assistant: words ###", the placeholder
    giving way to the queries, and as ``labels`` the words and ``###`` only."""
    if isinstance(model, MiniGPT4):
        ids, mask = tokenizer.opt_prompt([chat_text("<ImageHere>", c) for c in captions])
        labels = answer_labels(ids, mask, tokenizer.vocab["###Assistant:"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if isinstance(model, Blip2OPT):
        ids, mask = tokenizer.opt(captions)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, 0] = -100  # the start token is read, not written
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    labels, mask = tokenizer.t5(captions)
    return {"labels": labels.masked_fill(mask == 0, -100)}  # padding is not a target


def train_stage2(
    config: MiniatureConfig, model: Blip2T5 | Blip2OPT, features: torch.Tensor, captions: list[str],
    tokenizer: CaptionTokenizer, progress: bool = True, desc: str = "stage 2",
) -> dict[str, list[float]]:
    """Stage 2: the Q-Former and the projection learn to write a soft prompt the frozen
    language model (T5, or a decoder-only one) turns into the caption. Trains ``model`` in
    place; returns ``{"loss": [...]}``."""
    stage = config.stage2
    model.train()
    targets = caption_targets(model, tokenizer, captions)
    batches = CaptionBatches(captions, stage.optim.batch_size, config.seed + 5, stage.related_fraction)

    def step(_: int) -> dict[str, torch.Tensor]:
        idx = batches.next()
        return {"loss": model(image_embeds=features[idx], **{k: v[idx] for k, v in targets.items()}).loss}

    # the frozen encoder and T5 require no grad: fit leaves them out
    return fit(model.parameters(), stage.optim, step, desc, progress)


def cached_stage1(
    config: MiniatureConfig, standins: StandIns, features: torch.Tensor, progress: bool = True, callback=None,
    callback_every: int = 100, use_cache: bool = True,
) -> tuple[QFormerPretraining, dict, bool]:
    """Stage 1 read from the cache, or trained (and cached). Returns (model, history,
    from_cache). ``callback`` only runs when training happens."""
    model, history, hit = cache.cached_training(
        cache.entry_for("stage1", config), QFormerPretraining(config.qformer),
        lambda: train_stage1(config, features, standins.train_pool.captions, standins.tokenizer, progress,
                             callback=callback, callback_every=callback_every),
        use_cache)
    return model.eval(), history, hit


def cached_stage2(
    config: MiniatureConfig, standins: StandIns, features: torch.Tensor, stage1: QFormerPretraining | None,
    progress: bool = True, use_cache: bool = True,
) -> tuple[Blip2T5, dict, bool]:
    """Stage 2 from the stage-1 Q-Former (or, with ``stage1=None``, from a fresh one), read from
    the cache or trained (and cached). Returns (model, history, from_cache); the history holds
    the losses and, under ``"seconds"``, the training's wall time."""
    model = build_blip2(config, standins, stage1.qformer if stage1 is not None else None)
    desc = "stage 2" if stage1 is not None else "stage 2, no stage 1"

    def train():
        t = time.perf_counter()
        history = train_stage2(config, model, features, standins.train_pool.captions, standins.tokenizer,
                               progress, desc)
        return model, history | {"seconds": [time.perf_counter() - t]}  # cached with the weights

    model, history, hit = cache.cached_training(
        cache.entry_for("stage2", config, from_stage1=stage1 is not None), model, train, use_cache,
        trainable_only=True)
    return model.eval(), history, hit


@dataclass
class Run:
    """A miniature BLIP-2 after both stages, and how it got there. ``evaluate.evaluate`` (or
    ``run(..., evaluate_after=True)``) adds the held-out measures."""

    config: MiniatureConfig
    standins: StandIns
    stage1: QFormerPretraining
    model: Blip2T5
    stage1_history: dict
    stage2_history: dict
    from_cache: dict  # per part: read from the cache (True) or trained (False)
    timings: dict = field(default_factory=dict)  # seconds per part
    metrics: dict = field(default_factory=dict)
    test_pool: ImagePool | None = None
    test_captions: list[str] = field(default_factory=list)  # generated, one per image of test_pool

    @property
    def tokenizer(self) -> CaptionTokenizer:
        return self.standins.tokenizer


def run(config: MiniatureConfig | None = None, progress: bool = True, use_cache: bool = True,
        evaluate_after: bool = False) -> Run:
    """Stand-ins, stage 1 and stage 2 with ``config`` (default: ``MiniatureConfig.default()``),
    each read from the cache or trained (and cached) where it is absent; with
    ``use_cache=False`` everything is trained and nothing is written. ``evaluate_after``:
    measure the held-out split too."""
    config = config or MiniatureConfig.default()
    start = time.perf_counter()
    timings, seconds = {}, {}
    t = time.perf_counter()
    standins = load_standins(config, progress=progress, use_cache=use_cache, seconds=seconds)
    timings["standins"] = time.perf_counter() - t
    timings.update({f"standins_{k}": v for k, v in seconds.items()})
    t = time.perf_counter()
    features = encode_images(standins.image_encoder, standins.train_pool)  # (N, L, C)
    timings["features"] = time.perf_counter() - t
    t = time.perf_counter()
    stage1, h1, hit1 = cached_stage1(config, standins, features, progress, use_cache=use_cache)
    timings["stage1"] = time.perf_counter() - t
    t = time.perf_counter()
    model, h2, hit2 = cached_stage2(config, standins, features, stage1, progress, use_cache=use_cache)
    timings["stage2"] = time.perf_counter() - t
    from_cache = {"standins": standins.from_cache, "stage1": hit1, "stage2": hit2}
    result = Run(config, standins, stage1, model, h1, h2, from_cache, timings)
    if evaluate_after:
        t = time.perf_counter()
        evaluate(result)
        timings["evaluation"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    return result
