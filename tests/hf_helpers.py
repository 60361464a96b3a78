"""Small random HuggingFace BLIP-2 models built from configs (no download), and inputs for them."""

from __future__ import annotations

import torch
from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Blip2Model

from qformer_lite.testing import randomize_weights_, tiny_hf_blip2_config# noqa: F401

HF_CLASSES = {
    "Blip2Model": Blip2Model,
    "Blip2ForConditionalGeneration": Blip2ForConditionalGeneration,
    "Blip2ForImageTextRetrieval": Blip2ForImageTextRetrieval,
}


def build(cls, config, seed=0, randomize=True):
    torch.manual_seed(seed)
    model = cls(config)
    if randomize:
        randomize_weights_(model, seed)
    return model.eval()


def padded_text(batch: int, length: int, vocab: int, seed: int = 0):
    """Random ids with right padding of varied lengths (row i keeps length - i tokens, at least 2)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):
        keep = max(2, length - i)
        mask[i, keep:] = 0
        ids[i, keep:] = 0
    return ids, mask


def instructions(lengths=(5, 2, 3), vocab=90, seed=0):
    """Instructions in the Q-Former's tokens, padded on the right with 0: (ids, mask)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids, mask = torch.zeros(len(lengths), width, dtype=torch.long), torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=gen)
        mask[i, :n] = 1
    return ids, mask


def prompts(kind, lengths=(3, 1, 2), vocab=118, seed=1):
    """The language model's prompt for each image, padded as its tokenizer pads: T5's "words
    </s>" on the right; OPT's "</s> words" and Llama's "<s> words" on the left."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) + 1
    pad, bos, eos = {"t5": (0, None, 1), "opt": (1, 2, None), "llama": (0, 1, None)}[kind]
    ids, mask = torch.full((len(lengths), width), pad), torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        words = torch.randint(3, vocab, (n,), generator=gen)
        row = torch.cat([words, torch.tensor([eos])]) if bos is None else torch.cat([torch.tensor([bos]), words])
        where = slice(0, n + 1) if kind == "t5" else slice(width - n - 1, width)
        ids[i, where], mask[i, where] = row, 1
    return ids, mask
