"""The learnable query tokens: a fixed set of vectors that read the image for the LLM."""

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
