"""The decoder-only stand-in (a tiny OPT, chapter 10's language model): its framing, its
pretraining task, its cache entry, and Blip2OPT on top of it."""

from dataclasses import replace

import torch

from qformer_lite.blip2_opt import Blip2OPT
from qformer_lite.miniature import cache
from qformer_lite.miniature.checkpoint import build_blip2
from qformer_lite.miniature.config import MiniatureConfig
from qformer_lite.miniature.standins import (
    CaptionTokenizer, cached_decoder, chat_tokenizer, load_standins, rebuild_labels,
)


def test_opt_framing_starts_and_ends_with_its_one_special_token():
    tok = CaptionTokenizer()
    ids, mask = tok.opt(["a red circle in the middle", "a blue square on the left"])
    words = [tok.vocab[w] for w in "a red circle in the middle".split()]
    assert ids[0].tolist() == [tok.eos_token_id, *words, tok.eos_token_id]
    assert mask.shape == ids.shape and mask[0].all()


def test_only_the_rebuilt_caption_and_its_end_are_targets():
    tok = CaptionTokenizer()
    ids, mask = tok.opt(["red <mask> </s> a red circle at the top", " </s> a red circle at the top", "x"])
    labels = rebuild_labels(ids, mask, tok.eos_token_id)
    caption = [tok.vocab[w] for w in "a red circle at the top".split()] + [tok.eos_token_id]
    for row in (0, 1):
        assert labels[row][labels[row] != -100].tolist() == caption
    assert (labels[2] == -100).all()  # no middle </s>: nothing to rebuild


def test_the_stand_in_is_cached_deterministic_and_reads_only_its_own_settings(module_cache):
    config = MiniatureConfig.quick()
    model, history, hit = cached_decoder(config, progress=False)
    assert not hit and len(history["loss"]) == config.decoder.optim.steps
    again, history_again, hit_again = cached_decoder(config, progress=False)
    assert hit_again and history_again == history
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b) and not b.requires_grad
    fresh, history_fresh, _ = cached_decoder(config, progress=False, use_cache=False)
    assert history_fresh == history  # the same seed, the same run
    stage2 = replace(config.stage2, optim=replace(config.stage2.optim, steps=99))
    other = replace(config, stage2=stage2, vision=replace(config.vision, depth=2))
    assert cache.entry_for("decoder-model", other) == cache.entry_for("decoder-model", config)
    wider = replace(config, decoder=replace(config.decoder, hidden_size=48))
    assert cache.entry_for("decoder-model", wider) != cache.entry_for("decoder-model", config)


def test_blip2_opt_runs_on_the_miniature_stand_ins(module_cache):
    config = MiniatureConfig.quick()
    standins = load_standins(config, progress=False)
    opt, _, _ = cached_decoder(config, progress=False)
    qformer = build_blip2(config, standins).qformer
    model = Blip2OPT(standins.image_encoder, qformer, opt)
    ids, mask = standins.tokenizer.opt(standins.train_pool.captions[:3])
    images = standins.train_pool.pixels(slice(0, 3))
    out = model(pixel_values=images, input_ids=ids, attention_mask=mask, labels=ids)
    q = config.qformer.num_query_tokens
    vocab = len(chat_tokenizer())  # the caption words, then the chat words
    assert out.logits.shape == (3, q + ids.shape[1], vocab) and torch.isfinite(out.loss)
    written = model.generate(pixel_values=images, num_beams=2, max_new_tokens=4)
    assert written.shape[0] == 3 and written.shape[1] <= 4


def test_stage_2_trains_blip2_opt_on_the_captions_after_their_start_token(module_cache):
    from qformer_lite.miniature.standins import encode_images
    from qformer_lite.miniature.train import caption_targets, train_stage2

    config = MiniatureConfig.quick()
    standins = load_standins(config, progress=False)
    opt, _, _ = cached_decoder(config, progress=False)
    model = Blip2OPT(standins.image_encoder, build_blip2(config, standins).qformer, opt)
    captions = standins.train_pool.captions
    targets = caption_targets(model, standins.tokenizer, captions[:2])
    assert targets["labels"][0, 0] == -100 and targets["labels"][0, 1] == targets["input_ids"][0, 1]
    before = [p.clone() for p in model.language_model.parameters()]
    history = train_stage2(config, model, encode_images(standins.image_encoder, standins.train_pool), captions,
                           standins.tokenizer, progress=False)
    assert len(history["loss"]) == config.stage2.optim.steps
    assert all(torch.equal(a, b) for a, b in zip(before, model.language_model.parameters()))  # frozen
