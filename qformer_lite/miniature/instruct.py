"""Chapter 11's experiment: does reading the instruction help the queries?

The shapes world asks questions about its images, with short answers:

    colour    "what colour is the circle ?"        -> "red"          (the shape is unique)
    shape     "what shape is the red one ?"        -> "circle"       (the colour is unique)
    where     "where is the red circle ?"          -> "top left"
    relation  "what is left of the blue square ?"  -> "red circle"   (two-object scenes)

The held-out images are chapter 6's: every question about them concerns a combination no
training image shows. Two stage-2 runs answer them with the same frozen ViT, the same frozen
T5 (pretrained here to answer a question about a caption's words, as Flan-T5 knows how to
follow instructions before BLIP-2 meets it) and chapter 6's stage-1 Q-Former:

- **BLIP-2**: the instruction in T5 only, after instruction-blind queries (``Blip2T5``);
- **InstructBLIP**: the instruction in the Q-Former too (``InstructBlipT5``), in the
  Q-Former's framing (``[CLS] words [SEP]``); the question words the stage-1 Q-Former never
  saw get new embeddings.

Each runs with many queries (stage 1's 8) and with few (its first 1 or 2), because a query
that cannot hold everything has to choose, and only InstructBLIP's can choose for the
question. ``instruct_runs`` measures the held-out answer accuracy per question type.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..blip2_t5 import Blip2T5
from ..instructblip import InstructBlipT5
from ..qformer import QFormer
from . import cache
from .checkpoint import query_only
from .config import LanguageConfig, MiniatureConfig
from .data import PLACES, RELATIONS, Scene, vocabulary
from .standins import CaptionTokenizer, StandIns, build_t5, corrupt, encode_images, test_pool
from .trainer import fit, freeze, seeded

QUESTION_TYPES = ("colour", "shape", "where", "relation")
QA_WORDS = ("what", "colour", "shape", "one", "where", "is", "?")
KINDS = ("blip2", "instructblip")


@dataclass(frozen=True)
class Question:
    image: int  # index into the pool the question is about
    kind: str  # one of QUESTION_TYPES
    text: str
    answer: str


def place_words(row: int, col: int) -> str:
    """"top left", "middle", ...: a place without its preposition and article."""
    return " ".join(PLACES[(row, col)].split()[2:])


def questions_for(scene: Scene) -> list[tuple[str, str, str]]:
    """Every question with a single answer about ``scene``: (kind, question, answer)."""
    objs = scene.objects
    shapes = [o.shape for o in objs]
    colours = [o.colour for o in objs]
    out = []
    for o in objs:
        if shapes.count(o.shape) == 1:
            out.append(("colour", f"what colour is the {o.shape} ?", o.colour))
        if colours.count(o.colour) == 1:
            out.append(("shape", f"what shape is the {o.colour} one ?", o.shape))
        out.append(("where", f"where is the {o.name} ?", place_words(o.row, o.col)))
    if len(objs) == 2:
        caption = scene.caption  # "a X rel a Y": X is rel Y
        rel = next(r for r in RELATIONS if f" {r} " in caption)
        first, second = caption.removeprefix("a ").split(f" {rel} a ")
        out.append(("relation", f"what is {rel} the {second} ?", first))
    return out


def questions(pool) -> list[Question]:
    """Every question about every image of ``pool``, in pool order."""
    return [Question(i, *q) for i, scene in enumerate(pool.scenes) for q in questions_for(scene)]


def qa_tokenizer() -> CaptionTokenizer:
    """The caption words with their usual ids, then the question words: one vocabulary for
    the Q-Former's instruction and for T5."""
    words = vocabulary()
    return CaptionTokenizer([*words, *(w for w in QA_WORDS if w not in words)])


# --- the language model: a T5 that answers a question about a caption --------------------------

def pretrain_qa_t5(config: LanguageConfig, tokenizer: CaptionTokenizer, pool, seed: int = 0,
                   progress: bool = True):
    """A fresh tiny T5 trained to answer a question about a damaged copy of the image's
    caption: it reads "<caption, damaged as in the T5 stand-in's pretraining> <question>" and
    writes the answer; returns it frozen. Stage 2 puts the soft prompt where the caption's
    words were."""
    with seeded(seed):
        model = build_t5(config, tokenizer)
    items = questions(pool)
    rng = np.random.default_rng([seed, 17])

    def step(_: int) -> dict[str, torch.Tensor]:
        chosen = [items[i] for i in rng.integers(len(items), size=config.optim.batch_size)]
        inputs = [f"{corrupt(pool.captions[q.image], rng, config)} {q.text}" for q in chosen]
        ids, mask = tokenizer.t5(inputs)
        labels, label_mask = tokenizer.t5([q.answer for q in chosen])
        return {"loss": model(input_ids=ids, attention_mask=mask, labels=labels.masked_fill(label_mask == 0, -100)).loss}

    history = fit(model.parameters(), config.optim, step, "question-answering language model", progress)
    return freeze(model), history


def cached_qa_t5(config: MiniatureConfig, pool, progress: bool = True, use_cache: bool = True):
    """The question-answering T5 read from the cache, or pretrained (and cached)."""
    tokenizer = qa_tokenizer()
    return cache.cached_training(
        cache.entry_for("qa-language-model", config), build_t5(config.language, tokenizer),
        lambda: pretrain_qa_t5(config.language, tokenizer, pool, seed=config.seed, progress=progress), use_cache)


# --- the two models -------------------------------------------------------------------------

def with_vocabulary(qformer: QFormer, vocab_size: int, seed: int) -> QFormer:
    """A copy of ``qformer`` whose word embeddings cover ``vocab_size`` words: the first rows are
    the trained ones, the new words' rows are drawn as BERT draws them."""
    config = replace(qformer.config, vocab_size=vocab_size)
    with seeded(seed):
        grown = QFormer(config)
    state = qformer.state_dict()
    old = state["embeddings.word_embeddings.weight"]
    new = grown.embeddings.word_embeddings.weight.detach().clone()
    new[: old.shape[0]] = old
    state["embeddings.word_embeddings.weight"] = new
    grown.load_state_dict(state)
    return grown


def with_queries(qformer: QFormer, num_queries: int) -> QFormer:
    """A copy of ``qformer`` that keeps only its first ``num_queries`` learned queries."""
    if not 1 <= num_queries <= qformer.config.num_query_tokens:
        raise ValueError(f"num_queries must be between 1 and {qformer.config.num_query_tokens}, got {num_queries}")
    fewer = QFormer(replace(qformer.config, num_query_tokens=num_queries))
    state = qformer.state_dict()
    state["query_tokens.weight"] = state["query_tokens.weight"][:, :num_queries]
    fewer.load_state_dict(state)
    return fewer


def build_instruct_model(kind: str, num_queries: int, config: MiniatureConfig, standins: StandIns, t5,
                         stage1_qformer: QFormer) -> Blip2T5:
    """``"blip2"``: the query path of the stage-1 Q-Former in front of ``t5``; ``"instructblip"``:
    the whole Q-Former, its vocabulary grown to the question words, reading the instruction.
    Both keep the first ``num_queries`` queries; the projection starts from ``config.seed``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    qformer = with_queries(copy.deepcopy(stage1_qformer), num_queries)
    if kind == "blip2":
        qformer = query_only(qformer)
    else:
        qformer = with_vocabulary(qformer, len(qa_tokenizer()), config.seed + 3)
    with seeded(config.seed + 2):  # the same projection for both
        return (Blip2T5 if kind == "blip2" else InstructBlipT5)(standins.image_encoder, qformer, t5)


def batch_inputs(model, tokenizer: CaptionTokenizer, items: list[Question]) -> dict[str, torch.Tensor]:
    """What a model reads besides the image for ``items``: the question in T5's framing, and for
    InstructBLIP also in the Q-Former's."""
    ids, mask = tokenizer.t5([q.text for q in items])
    out = {"input_ids": ids, "attention_mask": mask}
    if isinstance(model, InstructBlipT5):
        q_ids, q_mask = tokenizer.qformer([q.text for q in items])
        out |= {"qformer_input_ids": q_ids, "qformer_attention_mask": q_mask}
    return out


def train_instruct(config: MiniatureConfig, model, features: torch.Tensor, items: list[Question],
                   tokenizer: CaptionTokenizer, progress: bool = True, desc: str = "instruction tuning"):
    """Stage 2 on questions: the Q-Former and the projection learn to write a soft prompt from
    which the frozen T5 answers the question it reads after it."""
    stage = config.instruct
    model.train()
    rng = np.random.default_rng([config.seed, 19])

    def step(_: int) -> dict[str, torch.Tensor]:
        chosen = [items[i] for i in rng.integers(len(items), size=stage.optim.batch_size)]
        labels, label_mask = tokenizer.t5([q.answer for q in chosen])
        idx = torch.tensor([q.image for q in chosen])
        return {"loss": model(image_embeds=features[idx], labels=labels.masked_fill(label_mask == 0, -100),
                              **batch_inputs(model, tokenizer, chosen)).loss}

    return fit(model.parameters(), stage.optim, step, desc, progress)


@torch.no_grad()
def answer(model, tokenizer: CaptionTokenizer, features: torch.Tensor, items: list[Question], num_beams: int = 1,
           max_new_tokens: int = 4, batch_size: int = 256) -> list[str]:
    """The model's answer to each question, from the features of the pool it is about."""
    model.eval()
    out = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        idx = torch.tensor([q.image for q in chunk])
        ids = model.generate(image_embeds=features[idx], num_beams=num_beams, max_new_tokens=max_new_tokens,
                             **batch_inputs(model, tokenizer, chunk))
        out += tokenizer.batch_decode(ids)
    return out


def accuracy_by_type(items: list[Question], answers: list[str]) -> dict[str, float]:
    """The share of right answers per question type, and over all (``"all"``)."""
    right = {k: [] for k in QUESTION_TYPES}
    for q, a in zip(items, answers):
        right[q.kind].append(a == q.answer)
    scores = {k: float(np.mean(v)) for k, v in right.items() if v}
    scores["all"] = float(np.mean([a == q.answer for q, a in zip(items, answers)]))
    return scores


def cached_instruct_run(kind: str, num_queries: int, config: MiniatureConfig, standins: StandIns, t5,
                        stage1_qformer: QFormer, features: torch.Tensor, items: list[Question],
                        progress: bool = True, use_cache: bool = True):
    """One run, read from the cache or trained (and cached): (model, history, from_cache); the
    history holds the losses and, under ``"seconds"``, the training's wall time."""
    model = build_instruct_model(kind, num_queries, config, standins, t5, stage1_qformer)
    tokenizer = qa_tokenizer()

    def train():
        t = time.perf_counter()
        history = train_instruct(config, model, features, items, tokenizer, progress, desc=f"{kind} Q={num_queries}")
        return model, history | {"seconds": [time.perf_counter() - t]}

    entry = cache.entry_for("instruct-run", config, run=kind, queries=num_queries)
    model, history, hit = cache.cached_training(entry, model, train, use_cache, trainable_only=True)
    return model.eval(), history, hit


def instruct_runs(config: MiniatureConfig | None = None, query_counts=(8, 1), progress: bool = True,
                  use_cache: bool = True) -> list[dict]:
    """Both kinds at each number of queries, trained (or read) and measured on the held-out
    images: one dict per run with ``"kind"``, ``"queries"``, ``"model"``, ``"accuracy"`` (per
    question type and ``"all"``), ``"answers"``, ``"trainable_params"``, ``"train_seconds"``
    and ``"from_cache"``."""
    from .train import cached_stage1
    from .standins import load_standins

    config = config or MiniatureConfig.default()
    standins = load_standins(config, progress=progress, use_cache=use_cache)
    features = encode_images(standins.image_encoder, standins.train_pool)
    stage1, _, _ = cached_stage1(config, standins, features, progress, use_cache=use_cache)
    t5, _, _ = cached_qa_t5(config, standins.train_pool, progress, use_cache)
    items = questions(standins.train_pool)
    pool = test_pool(config)
    test_features = encode_images(standins.image_encoder, pool)
    test_items = questions(pool)
    tokenizer = qa_tokenizer()
    rows = []
    for num_queries in query_counts:
        for kind in KINDS:
            model, history, hit = cached_instruct_run(kind, num_queries, config, standins, t5, stage1.qformer,
                                                      features, items, progress, use_cache)
            answers = answer(model, tokenizer, test_features, test_items)
            rows.append({"kind": kind, "queries": num_queries, "model": model, "answers": answers,
                         "accuracy": accuracy_by_type(test_items, answers),
                         "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                         "train_seconds": history["seconds"][0], "from_cache": hit})
    return rows


def held_out_questions(config: MiniatureConfig | None = None) -> tuple[object, list[Question]]:
    """The held-out pool and every question about it."""
    pool = test_pool(config or MiniatureConfig.default())
    return pool, questions(pool)

