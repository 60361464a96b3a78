"""Chapter 10's two runs on the decoder-only stand-in (a tiny OPT, ``standins.cached_decoder``):

- **BLIP-2 OPT**: stage 2 from chapter 6's stage-1 Q-Former, the Q-Former and the projection
  trained, the queries in front of ``</s>`` and the caption (``Blip2OPT``);
- **MiniGPT-4**: chapter 7's Q-Former, as stage 2 with T5 left it, frozen, and one linear
  layer trained, the queries inside the chat template in place of ``<ImageHere>``
  (``MiniGPT4``), as MiniGPT-4 takes BLIP-2's Q-Former after its stage 2 with Flan-T5.

Both train with chapter 7's stage-2 settings (``config.stage2``: steps, batches, learning
rate, seed) and are cached like it; ``decoder_runs`` measures them on the held-out split
beside chapter 7's T5 run: exact match, trainable parameters, training seconds.
"""

from __future__ import annotations

import copy
import time

import torch

from ..blip2_opt import Blip2OPT
from ..blip2_t5 import Blip2T5
from ..minigpt4 import MiniGPT4
from ..qformer import QFormer
from . import cache
from .checkpoint import query_only
from .config import MiniatureConfig
from .evaluate import exact_match, generate_captions
from .standins import (
    CHAT_END, CaptionTokenizer, StandIns, cached_decoder, chat_text, chat_tokenizer, encode_images, test_pool,
)
from .train import run, train_stage2
from .trainer import seeded

KINDS = ("blip2-opt", "minigpt4")


def build_decoder_model(kind: str, config: MiniatureConfig, standins: StandIns, language_model,
                        qformer: QFormer) -> Blip2OPT:
    """``"blip2-opt"``: a ``Blip2OPT`` around the query path of ``qformer``, stage 1's, which
    stage 2 trains; ``"minigpt4"``: a ``MiniGPT4`` around ``qformer``, stage 2's with T5,
    frozen. Each gets a copy, so the caller's Q-Former is left as it was. The projection is
    initialised from ``config.seed`` alone."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    with seeded(config.seed + 2):
        if kind == "blip2-opt":
            return Blip2OPT(standins.image_encoder, query_only(qformer), language_model)
        placeholder = chat_tokenizer().vocab["<ImageHere>"]
        return MiniGPT4(standins.image_encoder, copy.deepcopy(qformer), language_model, image_token_id=placeholder)


def cached_decoder_run(kind: str, config: MiniatureConfig, standins: StandIns, features: torch.Tensor,
                       qformer: QFormer, progress: bool = True, use_cache: bool = True) -> tuple[Blip2OPT, dict, bool]:
    """One of the two runs from ``qformer`` (see ``build_decoder_model``), read from the cache
    or trained (and cached): (model, history, from_cache). The history holds the losses and,
    under ``"seconds"``, the training's wall time."""
    language_model, _, _ = cached_decoder(config, progress=progress, use_cache=use_cache)
    model = build_decoder_model(kind, config, standins, language_model, qformer)

    def train():
        t = time.perf_counter()
        history = train_stage2(config, model, features, standins.train_pool.captions, chat_tokenizer(), progress,
                               desc=kind)
        return model, history | {"seconds": [time.perf_counter() - t]}

    entry = cache.entry_for("decoder-run", config, run=kind)
    model, history, hit = cache.cached_training(entry, model, train, use_cache, trainable_only=True)
    return model.eval(), history, hit


@torch.no_grad()
def decoder_captions(model: Blip2OPT, tokenizer: CaptionTokenizer, features: torch.Tensor, num_beams: int = 5,
                     max_new_tokens: int = 12, batch_size: int = 256) -> list[str]:
    """Captions from a decoder-only model. ``Blip2OPT``: after the queries and ``</s>``, up to
    ``</s>``. ``MiniGPT4``: the answer to the chat prompt, up to ``###``, cut there as
    MiniGPT-4's chat cuts its answers."""
    model.eval()
    if not isinstance(model, MiniGPT4):
        return generate_captions(model, tokenizer, features, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size)
    end = tokenizer.vocab[CHAT_END]
    out = []
    for i in range(0, len(features), batch_size):
        chunk = features[i:i + batch_size]
        ids, mask = tokenizer.opt_prompt([chat_text("<ImageHere>")] * len(chunk))
        written = model.generate(image_embeds=chunk, input_ids=ids, attention_mask=mask, num_beams=num_beams,
                                 max_new_tokens=max_new_tokens, eos_token_id=end, pad_token_id=tokenizer.pad_token_id)
        out += [text.split(CHAT_END)[0].strip() for text in tokenizer.batch_decode(written)]
    return out


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def decoder_runs(config: MiniatureConfig | None = None, progress: bool = True, use_cache: bool = True) -> list[dict]:
    """Chapter 7's T5 run and the two decoder-only runs, each measured on the held-out split:
    one dict per run, with ``"model"`` (the model itself), ``"exact_match"``,
    ``"trainable_params"``, ``"train_seconds"`` (None for a T5 run read from a cache older
    than its record of them) and ``"from_cache"``."""
    config = config or MiniatureConfig.default()
    t5_run = run(config, progress=progress, use_cache=use_cache)
    standins = t5_run.standins
    features = encode_images(standins.image_encoder, standins.train_pool)
    pool = test_pool(config)
    test_features = encode_images(standins.image_encoder, pool)
    tokenizer = chat_tokenizer()  # the caption words keep their ids in it, so it decodes T5's captions too
    rows = []
    t5: Blip2T5 = t5_run.model
    captions = generate_captions(t5, tokenizer, test_features, num_beams=config.num_beams,
                                 max_new_tokens=config.max_new_tokens)
    rows.append({"run": "BLIP-2 T5 (chapter 7)", "kind": "blip2-t5", "model": t5, "captions": captions,
                 "exact_match": exact_match(captions, pool.captions), "trainable_params": trainable_parameters(t5),
                 "train_seconds": t5_run.stage2_history.get("seconds", [None])[0],
                 "from_cache": t5_run.from_cache["stage2"]})
    start = {"blip2-opt": t5_run.stage1.qformer, "minigpt4": t5.qformer}
    for kind, name in zip(KINDS, ("BLIP-2 OPT", "MiniGPT-4")):
        model, history, hit = cached_decoder_run(kind, config, standins, features, start[kind], progress, use_cache)
        captions = decoder_captions(model, tokenizer, test_features, config.num_beams, config.max_new_tokens)
        rows.append({"run": name, "kind": kind, "model": model, "captions": captions,
                     "exact_match": exact_match(captions, pool.captions),
                     "trainable_params": trainable_parameters(model), "train_seconds": history["seconds"][0],
                     "from_cache": hit})
    return rows
