"""MiniGPT-4 (a frozen Q-Former, one linear layer, the image inside a chat prompt) and chapter
10's two runs on the miniature's decoder-only stand-in."""

from dataclasses import replace

import pytest
import torch

from qformer_lite.minigpt4 import MiniGPT4
from qformer_lite.miniature import cache
from qformer_lite.miniature.checkpoint import build_blip2
from qformer_lite.miniature.config import DecoderConfig, MiniatureConfig
from qformer_lite.miniature.decoder import build_decoder_model, decoder_captions, decoder_runs
from qformer_lite.miniature.standins import (
    CHAT_WORDS, CaptionTokenizer, answer_labels, cached_decoder, chat_text, chat_tokenizer, load_standins,
    pretrain_opt,
)
from qformer_lite.miniature.train import caption_targets


@pytest.fixture(scope="module")
def parts():
    config = MiniatureConfig.quick()
    standins = load_standins(config, progress=False)
    opt, _, _ = cached_decoder(config, progress=False)
    qformer = build_blip2(config, standins).qformer
    return config, standins, opt, qformer


def test_the_chat_words_come_after_the_caption_words_which_keep_their_ids():
    plain, chat = CaptionTokenizer(), chat_tokenizer()
    assert all(chat.vocab[w] == i for w, i in plain.vocab.items())
    assert [chat.vocab[w] for w in CHAT_WORDS] == list(range(len(plain), len(plain) + len(CHAT_WORDS)))
    ids, _ = chat.opt_prompt([chat_text("<ImageHere>")])
    assert ids[0, 0] == chat.eos_token_id and chat.unk_token_id not in ids[0].tolist()


def test_only_the_answer_and_its_end_symbol_are_chat_targets():
    tok = chat_tokenizer()
    ids, mask = tok.opt_prompt([chat_text("a red <mask>", "a red circle at the top"), chat_text("", "a red cross")])
    labels = answer_labels(ids, mask, tok.vocab["###Assistant:"])
    assert tok.decode(labels[0][labels[0] != -100]) == "a red circle at the top ###"
    assert tok.decode(labels[1][labels[1] != -100]) == "a red cross ###"


def test_the_stand_in_needs_the_chat_words_to_learn_the_chat():
    config = MiniatureConfig.quick()
    with pytest.raises(ValueError, match="chat_tokenizer"):
        pretrain_opt(config.decoder, config.language, CaptionTokenizer(), ["a red circle at the top"], progress=False)
    with pytest.raises(ValueError, match="chat_fraction must be in"):
        DecoderConfig(chat_fraction=1.5)


def test_minigpt4_freezes_the_qformer_and_trains_only_the_projection(parts):
    config, standins, opt, qformer = parts
    model = build_decoder_model("minigpt4", config, standins, opt, qformer)
    assert isinstance(model, MiniGPT4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"language_projection.weight", "language_projection.bias"}
    model.train()
    assert not model.qformer.training and not model.language_model.training and model.language_projection.training
    assert all(p.requires_grad for p in qformer.parameters())  # the caller's Q-Former is a copy, untouched
    with pytest.raises(ValueError, match="image_token_id"):
        MiniGPT4(standins.image_encoder, qformer, opt, image_token_id=None)
    with pytest.raises(ValueError, match="kind must be one of"):
        build_decoder_model("llava", config, standins, opt, qformer)


def test_minigpt4_reads_the_queries_where_the_chat_prompt_holds_its_placeholder(parts):
    config, standins, opt, qformer = parts
    model = build_decoder_model("minigpt4", config, standins, opt, qformer).eval()
    tok = chat_tokenizer()
    targets = caption_targets(model, tok, ["a red circle at the top", "a blue cross left of a red circle"])
    ids, labels = targets["input_ids"], targets["labels"]
    assert ((ids == model.image_token_id).sum(1) == 1).all()
    assert tok.decode(labels[1][labels[1] != -100]) == "a blue cross left of a red circle ###"
    x = standins.train_pool.pixels(slice(0, 2))
    with torch.no_grad():
        got = model(pixel_values=x[:1], input_ids=ids[:1], attention_mask=targets["attention_mask"][:1]).logits
        prefix, _ = model.image_prefix(x[:1])
        embed = opt.get_input_embeddings()
        row = ids[0][targets["attention_mask"][0] == 1]
        at = int((row == model.image_token_id).nonzero())
        want = opt(inputs_embeds=torch.cat([embed(row[:at]), prefix[0], embed(row[at + 1:])])[None]).logits
    real = want.shape[1]  # the padding went to the front
    assert torch.equal(targets["attention_mask"][0].sum(), torch.tensor(real - prefix.shape[1] + 1))
    torch.testing.assert_close(got[:, -real:], want, atol=1e-5, rtol=1e-5)


def test_minigpt4_captions_stop_at_the_end_symbol(parts):
    config, standins, opt, qformer = parts
    model = build_decoder_model("minigpt4", config, standins, opt, qformer)
    features = standins.image_encoder(standins.train_pool.pixels(slice(0, 3)))
    captions = decoder_captions(model, chat_tokenizer(), features, num_beams=2, max_new_tokens=6)
    assert len(captions) == 3 and not any("###" in c for c in captions)


def test_the_two_runs_and_t5s_are_measured_cached_and_deterministic():
    config = MiniatureConfig.quick()
    rows = decoder_runs(config, progress=False)
    assert [r["kind"] for r in rows] == ["blip2-t5", "blip2-opt", "minigpt4"]
    t5, opt, mini = rows
    projection = config.qformer.hidden_size * config.decoder.hidden_size + config.decoder.hidden_size
    assert mini["trainable_params"] == projection
    assert opt["trainable_params"] > projection and t5["train_seconds"] > 0
    assert not opt["from_cache"] and not mini["from_cache"]
    assert all(p.requires_grad for p in t5["model"].qformer.parameters())  # MiniGPT-4 froze a copy
    again = decoder_runs(config, progress=False)
    assert all(r["from_cache"] for r in again)
    for a, b in zip(rows, again):
        assert a["captions"] == b["captions"] and a["train_seconds"] == b["train_seconds"]
    fresh = decoder_runs(config, progress=False, use_cache=False)
    assert [r["captions"] for r in fresh] == [r["captions"] for r in rows]  # the same seed, the same runs


def test_the_runs_cache_entries_follow_their_settings():
    config = MiniatureConfig.quick()
    base = cache.entry_for("decoder-run", config, run="minigpt4")
    assert cache.entry_for("decoder-run", config, run="blip2-opt") != base
    for other in (replace(config, decoder=replace(config.decoder, chat_fraction=0.25)),
                  replace(config, stage1=replace(config.stage1, related_fraction=0.25)),
                  replace(config, seed=1)):
        assert cache.entry_for("decoder-run", other, run="minigpt4") != base
