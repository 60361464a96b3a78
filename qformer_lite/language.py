"""The language side of the miniature: a word-level tokenizer and a tiny frozen T5.

The tokenizer is built locally with the ``tokenizers`` library from the caption language's
words; one vocabulary serves both models, with BERT-style framing for the Q-Former
(``[CLS] words [SEP]``, and ``[DEC]`` for generation) and T5-style for T5 (``words </s>``).

BLIP-2 borrows Flan-T5, which already knows language. Ours is pretrained for a few seconds
as a denoising autoencoder of captions: it reads a corrupted caption (some words dropped
or masked, or nothing at all) and writes the whole caption back. That matters for
stage 2: the Q-Former's soft prompt then only has to *resemble* a caption in T5's input
space for T5 to write it out cleanly. A T5 trained only to continue text (prefix LM) barely
listens to its encoder, and a soft prompt can hardly steer it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from tqdm.auto import tqdm
from transformers import T5Config, T5ForConditionalGeneration

from . import cache
from .seeding import seeded
from .data import vocabulary
from .vision import freeze, lr_at

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>", "[CLS]", "[SEP]", "[DEC]", "<mask>")


class CaptionTokenizer:
    """Word-level tokenizer over the captions' words. ``<pad>`` is 0 (T5's pad and decoder
    start, and the Q-Former's pad), ``</s>`` is T5's end, ``[CLS]``/``[SEP]`` frame the
    Q-Former's text, ``[DEC]`` replaces ``[CLS]`` for its ITG pass."""

    def __init__(self, words: list[str] | None = None):
        words = vocabulary() if words is None else list(words)
        clash = sorted(set(words) & set(SPECIAL_TOKENS))
        if clash:
            raise ValueError(f"words must not contain special tokens, got {clash}")
        self.vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
        self.words = words
        self._t5 = self._build("$A </s>", [("</s>", self.eos_token_id)])
        self._qformer = self._build("[CLS] $A [SEP]", [("[CLS]", self.cls_token_id), ("[SEP]", self.sep_token_id)])

    def _build(self, template: str, specials) -> Tokenizer:
        tok = Tokenizer(models.WordLevel(self.vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
        tok.enable_padding(pad_id=self.pad_token_id, pad_token="<pad>")
        return tok

    def __len__(self) -> int:
        return len(self.vocab)

    pad_token_id = property(lambda self: self.vocab["<pad>"])
    eos_token_id = property(lambda self: self.vocab["</s>"])
    unk_token_id = property(lambda self: self.vocab["<unk>"])
    cls_token_id = property(lambda self: self.vocab["[CLS]"])
    sep_token_id = property(lambda self: self.vocab["[SEP]"])
    dec_token_id = property(lambda self: self.vocab["[DEC]"])
    mask_token_id = property(lambda self: self.vocab["<mask>"])

    @staticmethod
    def _batch(tok: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise ValueError("expected a list of texts, got one string; wrap it in a list")
        enc = tok.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)  # (B, T)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)  # (B, T)
        return ids, mask

    def t5(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``words </s>``, right-padded: ids and mask, (B, T) each."""
        return self._batch(self._t5, texts)

    def qformer(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] words [SEP]``, right-padded: ids and mask, (B, T) each."""
        return self._batch(self._qformer, texts)

    def __call__(self, texts: list[str], padding: str | bool = "longest", return_tensors: str = "pt"):
        """The HuggingFace tokenizer call that ``Captioner`` makes: T5 framing (``words </s>``),
        right-padded to the longest. Returns an object with ``.input_ids`` and ``.attention_mask``."""
        if padding not in ("longest", True) or return_tensors != "pt":
            raise ValueError(
                f"CaptionTokenizer pads to the longest text and returns torch tensors: expected "
                f'padding="longest" and return_tensors="pt", got padding={padding!r}, '
                f"return_tensors={return_tensors!r}"
            )
        ids, mask = self.t5(texts)
        return SimpleNamespace(input_ids=ids, attention_mask=mask)

    def decode(self, ids) -> str:
        """Words of one sequence, stopping at ``</s>`` and skipping the other special tokens."""
        inv = {i: t for t, i in self.vocab.items()}
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == self.eos_token_id:
                break
            tok = inv.get(int(i), "<unk>")
            if tok not in SPECIAL_TOKENS:
                out.append(tok)
        return " ".join(out)

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        """Words of each row; special tokens are always skipped (as HF's ``skip_special_tokens``)."""
        return [self.decode(row) for row in ids]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "CaptionTokenizer":
        return cls(json.loads(Path(path).read_text())["words"])


@dataclass
class LanguageConfig:
    d_model: int = 64
    d_kv: int = 16
    d_ff: int = 128
    num_layers: int = 2
    num_decoder_layers: int = 2
    num_heads: int = 4
    # T5's default: 32 buckets, exact up to 8 positions each way. Coarser buckets blur word
    # order, and T5 then swaps the colours of two objects even when copying a caption.
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    # pretraining: rebuild the caption from a corrupted copy
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    drop_prob: float = 0.25
    mask_prob: float = 0.3
    empty_prob: float = 0.1  # rebuild from nothing: the decoder's own prior over captions
    # "none" (copy the caption as it is) teaches T5 to follow its input word for word, even a
    # caption it never saw; "swap" (two neighbours exchanged) is left out by default: it teaches
    # T5 to put words back in the order it expects, which undoes the order a soft prompt gives
    corruptions: tuple[str, ...] = ("none", "drop", "mask")
    corpus: str = "train"  # "train": the training split's captions; "all": every sentence of the language

    def __post_init__(self) -> None:
        self.corruptions = tuple(self.corruptions)
        unknown = set(self.corruptions) - {"none", "drop", "mask", "swap"}
        if not self.corruptions or unknown:
            raise ValueError(
                f"LanguageConfig.corruptions must be drawn from none, drop, mask, swap; got {self.corruptions!r}"
            )
        if self.corpus not in ("train", "all"):
            raise ValueError(f"LanguageConfig.corpus must be 'train' or 'all', got {self.corpus!r}")


def build_t5(config: LanguageConfig, tokenizer: CaptionTokenizer) -> T5ForConditionalGeneration:
    t5_config = T5Config(
        vocab_size=len(tokenizer), d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
        num_layers=config.num_layers, num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,  # Flan-T5's (T5 v1.1) layout
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(t5_config)


def corrupt(caption: str, rng: np.random.Generator, config: LanguageConfig) -> str:
    """One corrupted copy of a caption: unchanged, some words dropped, some masked, or two
    neighbours swapped (one of ``config.corruptions`` at random); or, with ``empty_prob``,
    nothing at all."""
    words = caption.split()
    if rng.random() < config.empty_prob:
        return ""
    kind = config.corruptions[int(rng.integers(len(config.corruptions)))]
    if kind == "none":
        pass
    elif kind == "drop":
        keep = rng.random(len(words)) >= config.drop_prob
        keep[rng.integers(len(words))] = True
        words = [w for w, k in zip(words, keep) if k]
    elif kind == "mask":
        words = ["<mask>" if rng.random() < config.mask_prob else w for w in words]
    else:  # "swap"
        i = int(rng.integers(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def pretrain_t5(
    config: LanguageConfig, tokenizer: CaptionTokenizer, captions: list[str], seed: int = 0, progress: bool = True
) -> tuple[T5ForConditionalGeneration, list[float]]:
    """Train a fresh tiny T5 to rebuild captions from corrupted ones; returns it frozen."""
    with seeded(seed):  # the only draws from the global generator; the caller's state is kept
        model = build_t5(config, tokenizer)
    rng = np.random.default_rng([seed, 11])
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history = []
    bar = tqdm(range(config.steps), desc="language model", disable=not progress, leave=False)
    for step in bar:
        targets = [captions[i] for i in rng.integers(len(captions), size=config.batch_size)]
        inputs = [corrupt(c, rng, config) for c in targets]
        ids, mask = tokenizer.t5(inputs)  # (B, T_in)
        labels, label_mask = tokenizer.t5(targets)  # (B, T_out)
        labels = labels.masked_fill(label_mask == 0, -100)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup_steps)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{history[-1]:.3f}")
    return freeze(model), history


def cache_key(config: LanguageConfig, tokenizer: CaptionTokenizer, captions: list[str], seed: int) -> str:
    return cache.key_of(
        "language-model", {"language": asdict(config), "words": tokenizer.words, "captions": captions, "seed": seed}
    )
