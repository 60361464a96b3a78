"""Small random HuggingFace BLIP-2 models built from configs (no download)."""

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
