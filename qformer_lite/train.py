"""Training BLIP-2 in miniature: stage 1 (Q-Former with ITC + ITM + ITG), stage 2 (Q-Former +
projection in front of a frozen T5), and the two measures of the held-out split.

- Caption exact match: the generated caption equals the true one, word for word.
- Image->text recall@1: for each held-out image, every distinct caption of the held-out split
  is a candidate, ranked by the stage-1 ITC similarity (the best query's cosine with the
  text's [CLS] feature). Recall@1 is the fraction of images whose first candidate is their
  own caption. LAVIS's evaluation then re-ranks the top ``rerank_k`` candidates by ITM match
  logit + ITC similarity (``compute_sim_matrix``); that figure is reported beside it.

Both stages read the frozen encoder's features, computed once per image: the encoder never
changes, so computing it again at every step would only cost time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import cache, losses
from .blip2_t5 import Blip2T5
from .data import ImagePool, ShapesDataset, related_captions
from .language import CaptionTokenizer
from .miniature import MiniatureConfig, StageConfig, StandIns, build_blip2, load_standins
from .miniature import test_pool as miniature_test_pool
from .pretraining import QFormerPretraining
from .seeding import seeded
from .vision import lr_at


@torch.no_grad()
def encode_images(encoder: torch.nn.Module, pool: ImagePool, batch_size: int = 1024) -> torch.Tensor:
    """The frozen encoder's features of every image of a pool: (N, 1 + patches, C)."""
    encoder.eval()
    chunks = [encoder(pool.pixels(slice(i, i + batch_size))) for i in range(0, len(pool), batch_size)]
    return torch.cat(chunks)


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


def _optimizer(params, stage: StageConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=stage.lr, weight_decay=stage.weight_decay)


def _set_lr(opt, step: int, stage: StageConfig) -> None:
    for group in opt.param_groups:
        group["lr"] = lr_at(step, stage.steps, stage.lr, stage.warmup_steps)


def train_stage1(
    config: MiniatureConfig, features: torch.Tensor, captions: list[str], tokenizer: CaptionTokenizer,
    progress: bool = True, callback=None, callback_every: int = 100,
) -> tuple[QFormerPretraining, dict[str, list[float]]]:
    """Stage 1: the Q-Former learns to pull out of the frozen image features what the text says.

    Returns the model and its loss history: ``{"loss", "itc", "itm", "itg"}``, one value per step.
    ``callback(step, model)``, if given, runs every ``callback_every`` steps (e.g. to measure recall).
    """
    stage = config.stage1
    with seeded(config.seed + 1):
        model = QFormerPretraining(config.qformer).train()
    opt = _optimizer(model.parameters(), stage)
    ids, mask = tokenizer.qformer(captions)  # (N, T) each, "[CLS] words [SEP]"
    batches = CaptionBatches(captions, stage.batch_size, config.seed, stage.related_fraction)
    gen = torch.Generator().manual_seed(config.seed)  # hard-negative draws
    history: dict[str, list[float]] = {"loss": [], "itc": [], "itm": [], "itg": []}
    bar = tqdm(range(stage.steps), desc="stage 1", disable=not progress)
    for step in bar:
        idx = batches.next()
        _set_lr(opt, step, stage)
        out = model(features[idx], ids[idx], mask[idx], dec_token_id=tokenizer.dec_token_id, generator=gen,
                    itc_both_sides=stage.itc_both_sides, negative_floor=stage.negative_floor)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        for key, value in (("loss", out.loss), ("itc", out.loss_itc), ("itm", out.loss_itm), ("itg", out.loss_itg)):
            history[key].append(value.item())
        if step % 20 == 0:
            bar.set_postfix(itc=f"{out.loss_itc.item():.2f}", itm=f"{out.loss_itm.item():.2f}", itg=f"{out.loss_itg.item():.2f}")
        if callback is not None and ((step + 1) % callback_every == 0 or step + 1 == stage.steps):
            callback(step + 1, model.eval())
            model.train()
    return model.eval(), history


def train_stage2(
    config: MiniatureConfig, model: Blip2T5, features: torch.Tensor, captions: list[str],
    tokenizer: CaptionTokenizer, progress: bool = True, desc: str = "stage 2",
) -> dict[str, list[float]]:
    """Stage 2: the Q-Former and the projection learn to write a soft prompt the frozen T5
    turns into the caption. Trains ``model`` in place; returns ``{"loss": [...]}``."""
    stage = config.stage2
    model.train()
    opt = _optimizer(model.parameters(), stage)  # the frozen encoder and T5 are left out
    labels, label_mask = tokenizer.t5(captions)  # (N, T) "words </s>"
    labels = labels.masked_fill(label_mask == 0, -100)  # padding is not a target
    batches = CaptionBatches(captions, stage.batch_size, config.seed + 5, stage.related_fraction)
    history: dict[str, list[float]] = {"loss": []}
    bar = tqdm(range(stage.steps), desc=desc, disable=not progress)
    for step in bar:
        idx = batches.next()
        _set_lr(opt, step, stage)
        loss = model(image_embeds=features[idx], labels=labels[idx]).loss  # empty prompt: [queries; </s>]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history["loss"].append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
    return history


@torch.no_grad()
def generate_captions(
    model: Blip2T5, tokenizer: CaptionTokenizer, features: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None, num_beams: int = 5, max_new_tokens: int = 12, batch_size: int = 256,
) -> list[str]:
    """Captions of images given as encoder features (N, L, C) or as pixels (N, 3, H, W)."""
    model.eval()
    source = features if features is not None else pixel_values
    if source is None:
        raise ValueError("generate_captions needs features or pixel_values")
    out = []
    for i in range(0, len(source), batch_size):
        chunk = source[i:i + batch_size]
        kwargs = {"image_embeds": chunk} if features is not None else {"pixel_values": chunk}
        ids = model.generate(**kwargs, num_beams=num_beams, max_new_tokens=max_new_tokens)
        out += tokenizer.batch_decode(ids)
    return out


def exact_match(predictions: list[str], references: list[str]) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    return float(np.mean([p == r for p, r in zip(predictions, references)]))


@torch.no_grad()
def retrieval(
    model: QFormerPretraining, features: torch.Tensor, captions: list[str], tokenizer: CaptionTokenizer,
    rerank_k: int = 8,
) -> dict:
    """Image->text retrieval among the distinct captions of a split (see the module docstring).

    Returns ``recall_at_1`` (the ITC ranking), ``recall_at_1_itm_rerank`` (its top
    ``rerank_k`` re-ranked by ITM, as LAVIS does), the candidates, the ITC similarity matrix
    (images x candidates), and the first candidate of each image under each ranking
    (``chosen``: ITC, ``chosen_itm_rerank``).
    """
    model.eval()
    candidates = sorted(set(captions))
    position = {c: i for i, c in enumerate(candidates)}
    truth = torch.tensor([position[c] for c in captions])  # (I,)
    ids, mask = tokenizer.qformer(candidates)  # (C, T)
    image_feats = model.image_features(features)  # (I, Q, E)
    text_feats = model.text_features(ids, mask)  # (C, E)
    sim = losses.itc_similarity_matrix(image_feats, text_feats)  # (I, C)
    k = min(rerank_k, len(candidates))
    top_sim, top = sim.topk(k, dim=1)  # (I, k)
    n = features.shape[0]
    itm = model.itm_logits(features.repeat_interleave(k, dim=0), ids[top.flatten()], mask[top.flatten()])  # (I*k, 2)
    score = itm[:, 1].view(n, k) + top_sim  # LAVIS: ITM match logit + ITC similarity
    reranked = top.gather(1, score.argmax(dim=1, keepdim=True)).squeeze(1)  # (I,)
    chosen = sim.argmax(dim=1)  # (I,)
    return {
        "recall_at_1": float((chosen == truth).float().mean()),
        "recall_at_1_itm_rerank": float((reranked == truth).float().mean()),
        "candidates": candidates,
        "similarity": sim,
        "chosen": chosen,
        "chosen_itm_rerank": reranked,
    }


@dataclass
class RunResult:
    """Everything one run produced: models, histories, held-out metrics, timings (seconds)."""

    config: MiniatureConfig
    standins: StandIns
    stage1: QFormerPretraining
    blip2: Blip2T5
    stage1_history: dict
    stage2_history: dict
    metrics: dict
    test_pool: ImagePool
    test_captions_before: list[str] = field(default_factory=list)  # stage 2 before training
    test_captions_after: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def run(config: MiniatureConfig | None = None, progress: bool = True, use_cache: bool = True) -> RunResult:
    """Every stage, from stand-ins to held-out metrics."""
    config = config or MiniatureConfig.default()
    start = time.perf_counter()
    timings = {}

    t = time.perf_counter()
    standins = load_standins(config, progress=progress, use_cache=use_cache)
    timings["standins"] = time.perf_counter() - t
    timings.update({f"standins_{k}": v for k, v in standins.seconds.items()})

    t = time.perf_counter()
    test_pool = miniature_test_pool(config)
    features = encode_images(standins.image_encoder, standins.train_pool)  # (N, L, C)
    test_features = encode_images(standins.image_encoder, test_pool)
    timings["features"] = time.perf_counter() - t

    t = time.perf_counter()
    stage1, h1 = train_stage1(config, features, standins.train_pool.captions, standins.tokenizer, progress)
    timings["stage1"] = time.perf_counter() - t

    t = time.perf_counter()
    blip2 = build_blip2(config, standins, stage1.qformer)
    before = generate_captions(blip2, standins.tokenizer, test_features[:8], num_beams=1,
                               max_new_tokens=config.max_new_tokens)
    h2 = train_stage2(config, blip2, features, standins.train_pool.captions, standins.tokenizer, progress)
    timings["stage2"] = time.perf_counter() - t

    t = time.perf_counter()
    after = generate_captions(blip2, standins.tokenizer, test_features, num_beams=config.num_beams,
                              max_new_tokens=config.max_new_tokens)
    ret = retrieval(stage1, test_features, test_pool.captions, standins.tokenizer, config.rerank_k)
    timings["evaluation"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start

    metrics = {
        "caption_exact_match": exact_match(after, test_pool.captions),
        "image_text_recall_at_1": ret["recall_at_1"],
        "image_text_recall_at_1_itm_rerank": ret["recall_at_1_itm_rerank"],
        "test_images": len(test_pool),
        "test_captions": len(ret["candidates"]),
        "standins_from_cache": standins.from_cache,
    }
    return RunResult(config, standins, stage1, blip2, h1, h2, metrics, test_pool, before, after, timings)


# ---------------------------------------------------------------------------------------------
# Cached runs, so that chapter 7 does not train again what chapter 6 trained.


def _key(kind: str, config: MiniatureConfig, **extra) -> str:
    return cache.key_of(kind, {"config": config.to_dict(), **extra})


def cached_stage1(
    config: MiniatureConfig, standins: StandIns, features: torch.Tensor, progress: bool = True, callback=None,
    callback_every: int = 100,
) -> tuple[QFormerPretraining, dict, bool]:
    """Stage 1 read from the cache (keyed by the whole config, seed included), or trained and cached.

    Returns (model, history, from_cache). ``callback`` only runs when training happens.
    """
    spec = {k: v for k, v in config.to_dict().items() if k not in ("stage2", "num_beams", "max_new_tokens", "rerank_k")}
    folder = cache.entry_path(cache.key_of("stage1", spec))
    model, history, hit = cache.cached_training(
        folder, QFormerPretraining(config.qformer),
        lambda: train_stage1(config, features, standins.train_pool.captions, standins.tokenizer, progress,
                             callback=callback, callback_every=callback_every))
    return model.eval(), history, hit


def cached_stage2(
    config: MiniatureConfig, standins: StandIns, features: torch.Tensor, stage1: QFormerPretraining | None,
    progress: bool = True,
) -> tuple[Blip2T5, dict, bool]:
    """Stage 2 from the stage-1 Q-Former (or, with ``stage1=None``, from a fresh one), read from
    the cache or trained and cached. Returns (model, history, from_cache)."""
    folder = cache.entry_path(_key("stage2", config, from_stage1=stage1 is not None))
    model = build_blip2(config, standins, stage1.qformer if stage1 is not None else None)
    desc = "stage 2" if stage1 is not None else "stage 2, no stage 1"

    def train():
        return model, train_stage2(config, model, features, standins.train_pool.captions, standins.tokenizer,
                                   progress, desc)

    model, history, hit = cache.cached_training(folder, model, train, trainable_only=True)
    return model.eval(), history, hit


@dataclass
class Trained:
    """The miniature BLIP-2 after both stages, as chapters 6 and 7 left it in the cache."""

    model: Blip2T5
    tokenizer: CaptionTokenizer
    config: MiniatureConfig
    stage1: QFormerPretraining


def trained(config: MiniatureConfig | None = None, progress: bool = True) -> Trained:
    """Stand-ins, stage 1 and stage 2 with ``config`` (default: ``MiniatureConfig.default()``),
    each read from the cache, or trained and cached where it is absent."""
    config = config or MiniatureConfig.default()
    standins = load_standins(config, progress=progress)
    features = encode_images(standins.image_encoder, standins.train_pool)  # (N, L, C)
    stage1, _, _ = cached_stage1(config, standins, features, progress=progress)
    model, _, _ = cached_stage2(config, standins, features, stage1, progress=progress)
    return Trained(model.eval(), standins.tokenizer, config, stage1.eval())


def test_images(n: int, config: MiniatureConfig | None = None, stride: int | None = None):
    """``n`` held-out images (uint8 (H, W, 3) each) and their true captions, spread over the split."""
    config = config or MiniatureConfig.default()
    test = ShapesDataset("test", config.data, seed=config.seed)
    if not 1 <= n <= len(test):
        raise ValueError(f"n must be between 1 and the {len(test)} test images, got {n}")
    stride = stride or len(test) // n
    pool = test.pool([i * stride for i in range(n)])
    return [image.numpy() for image in pool.images], list(pool.captions)
