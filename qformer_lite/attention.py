"""Multi-head attention, used both as self-attention and as cross-attention.

Masks are boolean, True = "may attend", broadcastable to (B, H, L_q, L_k).

Cross-attention has a second form with the same numbers, computed from the query side
(``query_side_attention``). Per head h, with W_k^h, W_v^h the head's (d, C) slices and X the
(N, C) image tokens of one image:

    scores_h = (q_h W_k^h) X^T                  # W_k folded into the queries
    out_h    = (P_h X) W_v^h^T + b_v^h           # W_v after the weighted sum

so the image tokens meet only the H*Q queries, never a projection of their own. The key bias
adds the same number to every score of a row, which softmax ignores; the value bias comes out
unchanged because each row of P sums to 1. ``arithmetic_ratio`` compares the multiply-adds of
the two forms; ``uses_query_side`` is the one place that picks a form: the query side on the
CPU where it saves at least a quarter of the arithmetic, the plain form everywhere else (on a
GPU the plain form, one large projection, measured faster; benchmarks/bench_qformer.py, its
results in benchmarks/results/). ``cross_attention_form`` forces one form, to compare them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

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
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """Returns (output (B, L_q, D), probabilities (B, H, L_q, L_k) or None, (k, v) or None).

        ``past_key_value`` holds keys and values computed earlier (the queries' K/V in
        LAVIS's ITG pass); they are put in front of this call's own. Cross-attention takes
        the form ``uses_query_side`` picks; from the query side it forms no keys and values,
        and returns None in their place.
        """
        if context is not None and past_key_value is None and uses_query_side(self, hidden_states.shape[1], context):
            return *query_side_attention(self, hidden_states, context, mask, output_attentions), None
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


# --- cross-attention from the query side -----------------------------------------------------

FORMS = ("auto", "plain", "query_side")
_form = "auto"  # what cross_attention_form last set


@contextmanager
def cross_attention_form(form: str) -> Iterator[None]:
    """Compute cross-attention in one form inside the ``with`` block: ``"plain"`` (the form
    the chapters teach), ``"query_side"`` or ``"auto"`` (the default: ``uses_query_side``'s
    rule). The outputs are the same either way, to float rounding."""
    global _form
    if form not in FORMS:
        raise ValueError(f"cross-attention form must be one of {', '.join(map(repr, FORMS))}, got {form!r}")
    previous, _form = _form, form
    try:
        yield
    finally:
        _form = previous


def arithmetic_ratio(num_heads: int, num_queries: int, head_dim: int, num_image_tokens: int) -> float:
    """Multiply-adds of the query-side form over those of the plain one (image side only):
    2 H Q C (N + d) against 2 N C D, per image and layer."""
    return num_heads * num_queries * (num_image_tokens + head_dim) / (num_image_tokens * num_heads * head_dim)


def uses_query_side(attn: MultiHeadAttention, num_queries: int, context: torch.Tensor) -> bool:
    """Whether cross-attention over ``context`` (B, N, C) is computed from the query side: the
    form ``cross_attention_form`` forces, else the query side on the CPU when it saves at least
    a quarter of the arithmetic."""
    if _form != "auto":
        return _form == "query_side"
    ratio = arithmetic_ratio(attn.num_heads, num_queries, attn.head_dim, context.shape[1])
    return context.device.type == "cpu" and ratio <= 0.75


def query_side_attention(
    attn: MultiHeadAttention,
    queries: torch.Tensor,  # (B, Q, D)
    context: torch.Tensor,  # (B, N, C)
    mask: torch.Tensor | None = None,  # bool, broadcastable to (B, H, Q, N)
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``attn``'s cross-attention from the query side: (output (B, Q, D), probabilities
    (B, H, Q, N) or None), the numbers of ``attn(queries, context, mask)``."""
    h, d = attn.num_heads, attn.head_dim
    b, q_len, _ = queries.shape
    c = context.shape[-1]
    if mask is not None:
        mask = mask[(None,) * (4 - mask.dim())]  # (B or 1, H or 1, Q or 1, N)
    q = (attn.query(queries) * (1.0 / math.sqrt(d))).view(b, q_len, h, d).transpose(1, 2)  # (B, H, Q, d)
    w_k = attn.key.weight.view(h, d, c)  # (H, d, C)
    w_v_t = attn.value.weight.view(h, d, c).transpose(1, 2)  # (H, C, d)
    outs, probs = [], []
    # one image at a time: every product reads and writes contiguous memory (batched over
    # images, the products would need layout copies that cost more than they save)
    for i in range(b):
        x = context[i]  # (N, C)
        q_img = torch.bmm(q[i], w_k).view(h * q_len, c)  # (H*Q, C): each query, seen from the image side
        scores = (q_img @ x.t()).view(h, q_len, -1)  # (H, Q, N)
        if mask is not None:
            scores = scores.masked_fill(~mask[i if mask.shape[0] > 1 else 0], float("-inf"))
        p = scores.softmax(dim=-1)
        if output_attentions:
            probs.append(p)
        p = F.dropout(p, attn.dropout) if attn.training and attn.dropout > 0 else p
        mixed = (p.view(h * q_len, -1) @ x).view(h, q_len, c)  # (H, Q, C)
        outs.append(torch.bmm(mixed, w_v_t))  # (H, Q, d)
    out = torch.stack(outs).transpose(1, 2).reshape(b, q_len, h * d) + attn.value.bias  # (B, Q, D)
    return out, (torch.stack(probs) if output_attentions else None)
