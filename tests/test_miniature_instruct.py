"""Chapter 11's miniature: questions about the shapes world, a T5 that answers them, and the
BLIP-2 and InstructBLIP runs on them."""

from dataclasses import replace

import pytest
import torch

from qformer_lite.instructblip import InstructBlipT5
from qformer_lite.blip2_t5 import Blip2T5
from qformer_lite.miniature import cache
from qformer_lite.miniature.config import MiniatureConfig
from qformer_lite.miniature.data import Scene, ShapeObject
from qformer_lite.miniature.instruct import (
    accuracy_by_type, build_instruct_model, batch_inputs, instruct_runs, qa_tokenizer, questions_for,
    with_queries, with_vocabulary, Question,
)
from qformer_lite.miniature.standins import CaptionTokenizer, load_standins
from qformer_lite.qformer import QFormer


def test_every_question_has_one_answer_in_its_scene():
    one = Scene((ShapeObject("red", "circle", 0, 0),))
    assert questions_for(one) == [
        ("colour", "what colour is the circle ?", "red"),
        ("shape", "what shape is the red one ?", "circle"),
        ("where", "where is the red circle ?", "top left"),
    ]
    # two circles: no "what colour is the circle ?"; two reds: no "what shape is the red one ?"
    two = Scene((ShapeObject("red", "circle", 1, 2), ShapeObject("red", "square", 1, 0)))
    asked = {(k, t): a for k, t, a in questions_for(two)}
    assert ("shape", "what shape is the red one ?") not in asked
    assert asked[("colour", "what colour is the circle ?")] == "red"
    assert asked[("where", "where is the red circle ?")] == "right"
    assert asked[("relation", "what is left of the red circle ?")] == "red square"
    circles = Scene((ShapeObject("red", "circle", 0, 1), ShapeObject("blue", "circle", 2, 1)))
    assert not [q for q in questions_for(circles) if q[0] == "colour"]
    assert ("relation", "what is above the blue circle ?", "red circle") in questions_for(circles)


def test_the_question_words_follow_the_caption_words_which_keep_their_ids():
    plain, qa = CaptionTokenizer(), qa_tokenizer()
    assert all(qa.vocab[w] == i for w, i in plain.vocab.items())
    ids, _ = qa.t5(["what colour is the circle ?", "where is the red circle ?"])
    assert qa.unk_token_id not in ids.tolist()


def test_a_grown_vocabulary_keeps_the_trained_words_and_fewer_queries_keep_the_first():
    config = MiniatureConfig.quick()
    qformer = QFormer(config.qformer)
    grown = with_vocabulary(qformer, config.qformer.vocab_size + 5, seed=0)
    old = qformer.embeddings.word_embeddings.weight
    assert torch.equal(grown.embeddings.word_embeddings.weight[: old.shape[0]], old)
    assert grown.config.vocab_size == old.shape[0] + 5
    fewer = with_queries(qformer, 1)
    assert torch.equal(fewer.query_tokens.weight, qformer.query_tokens.weight[:, :1])
    with pytest.raises(ValueError, match="num_queries must be between 1 and"):
        with_queries(qformer, 0)


def test_the_two_models_read_the_question_where_each_should():
    config = MiniatureConfig.quick()
    standins = load_standins(config, progress=False)
    qformer = QFormer(config.qformer)
    blip2 = build_instruct_model("blip2", 2, config, standins, standins.language_model, qformer)
    instruct = build_instruct_model("instructblip", 2, config, standins, standins.language_model, qformer)
    assert type(blip2) is Blip2T5 and isinstance(instruct, InstructBlipT5)
    assert blip2.num_query_tokens == instruct.num_query_tokens == 2
    assert blip2.qformer.embeddings is None and instruct.qformer.config.vocab_size == len(qa_tokenizer())
    items = [Question(0, "colour", "what colour is the circle ?", "red")]
    assert set(batch_inputs(blip2, qa_tokenizer(), items)) == {"input_ids", "attention_mask"}
    assert set(batch_inputs(instruct, qa_tokenizer(), items)) == {
        "input_ids", "attention_mask", "qformer_input_ids", "qformer_attention_mask"}
    assert torch.equal(blip2.language_projection.weight, instruct.language_projection.weight)  # one seed
    with pytest.raises(ValueError, match="kind must be one of"):
        build_instruct_model("llava", 2, config, standins, standins.language_model, qformer)


def test_accuracy_is_counted_per_question_type():
    items = [Question(0, "colour", "q", "red"), Question(0, "where", "q", "top"), Question(1, "where", "q", "left")]
    scores = accuracy_by_type(items, ["red", "top", "top"])
    assert scores == {"colour": 1.0, "where": 0.5, "all": pytest.approx(2 / 3)}


def test_the_runs_are_measured_cached_and_deterministic():
    config = MiniatureConfig.quick()
    rows = instruct_runs(config, query_counts=(2, 1), progress=False)
    assert [(r["kind"], r["queries"]) for r in rows] == [
        ("blip2", 2), ("instructblip", 2), ("blip2", 1), ("instructblip", 1)]
    assert all(not r["from_cache"] and r["train_seconds"] > 0 for r in rows)
    assert all(set(r["accuracy"]) <= {"colour", "shape", "where", "relation", "all"} for r in rows)
    again = instruct_runs(config, query_counts=(2, 1), progress=False)
    assert all(r["from_cache"] for r in again)
    assert [r["answers"] for r in again] == [r["answers"] for r in rows]
    fresh = instruct_runs(config, query_counts=(2, 1), progress=False, use_cache=False)
    assert [r["answers"] for r in fresh] == [r["answers"] for r in rows]


def test_the_cache_entries_follow_their_settings():
    config = MiniatureConfig.quick()
    qa = cache.entry_for("qa-language-model", config)
    assert cache.entry_for("qa-language-model", replace(config, stage2=replace(
        config.stage2, optim=replace(config.stage2.optim, steps=99)))) == qa
    assert cache.entry_for("qa-language-model", replace(config, language=replace(
        config.language, drop_prob=0.5))) != qa
    run = cache.entry_for("instruct-run", config, run="blip2", queries=2)
    assert cache.entry_for("instruct-run", config, run="blip2", queries=1) != run
    assert cache.entry_for("instruct-run", config, run="instructblip", queries=2) != run
    longer = replace(config, instruct=replace(config.instruct, optim=replace(config.instruct.optim, steps=99)))
    assert cache.entry_for("instruct-run", longer, run="blip2", queries=2) != run
    assert cache.entry_for("qa-language-model", longer) == qa
    # chapter 7's stage 2 is not this one: a change there retrains neither
    other = replace(config, stage2=replace(config.stage2, optim=replace(config.stage2.optim, steps=99)))
    assert cache.entry_for("instruct-run", other, run="blip2", queries=2) == run
