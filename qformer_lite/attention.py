"""Multi-head attention, used both as self-attention and as cross-attention.

Masks are boolean, True = "may attend", broadcastable to (B, H, L_q, L_k).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def attention_from_scratch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    mask: torch.Tensor | None = None, dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v, written out; returns the output and the probabilities.

    q: (B, H, L_q, d), k and v: (B, H, L_k, d). Equal to
    ``F.scaled_dot_product_attention`` (the test suite checks it).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, L_q, L_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)  # each row sums to 1 over the keys it may see
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v, probs  # (B, H, L_q, d), (B, H, L_q, L_k)


class MultiHeadAttention(nn.Module):
    """Queries from ``hidden_states``; keys and values from ``context`` (cross-attention) or
    from ``hidden_states`` itself (self-attention).

    ``context_size`` is the width of the keys' source: 1408 for EVA ViT-g features, so the
    key and value projections map 1408 -> 768 while the query projection maps 768 -> 768.
    """

    def __init__(self, hidden_size: int, num_heads: int, context_size: int | None = None, dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        context_size = context_size or hidden_size
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(context_size, hidden_size)
        self.value = nn.Linear(context_size, hidden_size)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b l (h d) -> b h l d", h=self.num_heads)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, L_q, D)
        context: torch.Tensor | None = None,  # (B, L_k, C); None = self-attention
        mask: torch.Tensor | None = None,  # bool, broadcastable to (B, H, L_q, L_k)
        output_attentions: bool = False,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        from_scratch: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        """Returns (output (B, L_q, D), probabilities (B, H, L_q, L_k) or None, (k, v)).

        ``past_key_value`` holds keys and values computed earlier (the queries' K/V in
        LAVIS's ITG pass); they are put in front of this call's own.
        """
        source = hidden_states if context is None else context
        q = self.split_heads(self.query(hidden_states))  # (B, H, L_q, d)
        k = self.split_heads(self.key(source))  # (B, H, L_k, d)
        v = self.split_heads(self.value(source))  # (B, H, L_k, d)
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=2)
            v = torch.cat([past_key_value[1], v], dim=2)
        dropout_p = self.dropout if self.training else 0.0
        if output_attentions or from_scratch:
            out, probs = attention_from_scratch(q, k, v, mask, dropout_p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            probs = None
        return rearrange(out, "b h l d -> b l (h d)"), probs, (k, v)
