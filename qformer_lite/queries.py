"""The learnable query tokens: a fixed set of vectors that read the image for the LLM, and
how many tokens a ViT would hand it instead."""

from __future__ import annotations

import torch
from torch import nn


class LearnableQueries(nn.Module):
    """``num_queries`` learned vectors of width ``hidden_size``, shared by every image.

    They are parameters, not tokens of a vocabulary, and carry no position embedding:
    nothing tells query 3 that it comes after query 2, so permuting them permutes the
    outputs (chapter 1 shows it). LAVIS draws them from N(0, 0.02); HF starts them at zeros
    (its checkpoints overwrite them).
    """

    def __init__(self, num_queries: int, hidden_size: int, init_std: float = 0.02):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, num_queries, hidden_size))  # (1, Q, D)
        nn.init.normal_(self.weight, mean=0.0, std=init_std)

    @property
    def num_queries(self) -> int:
        return self.weight.shape[1]

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.weight.expand(batch_size, -1, -1)  # (B, Q, D), a view: no copy per image


def vit_tokens(image_size: int, patch_size: int = 14, cls_token: bool = True) -> int:
    """How many tokens a ViT gives a square image: one per patch, plus the [CLS] token.

    BLIP-2's ViT-g/14 gives (224 // 14)² + 1 = 257 at 224 px and 677 at 364 px, where the
    Q-Former hands the LLM its 32 queries (chapter 1 counts the difference).
    """
    return (image_size // patch_size) ** 2 + int(cls_token)
