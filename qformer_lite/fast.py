"""Cross-attention computed from the query side: the same numbers as ``MultiHeadAttention``,
with less arithmetic when there are few queries and many wide image tokens.

The plain form projects all N image tokens to keys and values (N x C x D multiply-adds
each), then attends. Per head h, with W_k^h, W_v^h the head's (d, C) slices:

    scores_h = (q_h W_k^h) X^T                  # fold W_k into the queries instead
    out_h    = softmax(scores_h) (X W_v^h)^T = (P_h X) W_v^h^T   # and W_v after the sum

so the image tokens X (B, N, C) are touched only by (B, H*Q, C) x (C, N) products: H*Q/D
of the plain projection cost (384/768 for BLIP-2). At BLIP-2 size that is about 606M ->
385M multiply-adds per image and cross-attention layer, a third fewer. The key bias adds
the same number q_h . b_k^h to every score of a row, which softmax ignores; the value bias
comes out unchanged because each row of P sums to 1. The chapters teach the plain form;
tests hold the two equal.

Fewer multiply-adds did not make it faster where it was measured
(benchmarks/bench_qformer.py): on a 2-core CPU the two forms take the same time, and on an
H200 in bf16 the plain form is a little faster, because the (B, H*Q, C) x (C, N) products,
the per-head (d x C) products and the layout copies between them run at a lower rate than
one large (B*N, C) x (C, D) projection. So ``QFormer`` uses the plain form unless asked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from .attention import MultiHeadAttention


def query_side_cross_attention(
    block,  # layer.AttentionBlock with a cross-attention MultiHeadAttention
    queries: torch.Tensor,  # (B, Q, D)
    image_embeds: torch.Tensor,  # (B, N, C)
    image_mask: torch.Tensor | None = None,  # bool, broadcastable to (B, 1, 1, N)
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    attn: MultiHeadAttention = block.attention
    h, d = attn.num_heads, attn.head_dim
    c = image_embeds.shape[-1]
    q = rearrange(attn.query(queries) * (1.0 / math.sqrt(d)), "b q (h d) -> h (b q) d", h=h)  # (H, B*Q, d)
    w_k = attn.key.weight.view(h, d, c)  # (H, d, C)
    q_img = torch.bmm(q, w_k)  # (H, B*Q, C): each query, seen from the image side
    q_img = rearrange(q_img, "h (b q) c -> b (h q) c", b=queries.shape[0])  # (B, H*Q, C)
    scores = torch.bmm(q_img, image_embeds.transpose(1, 2))  # (B, H*Q, N)
    scores = rearrange(scores, "b (h q) n -> b h q n", h=h)  # (B, H, Q, N)
    if image_mask is not None:
        scores = scores.masked_fill(~image_mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    dropped = F.dropout(probs, attn.dropout) if attn.training and attn.dropout > 0 else probs
    mixed = torch.bmm(rearrange(dropped, "b h q n -> b (h q) n"), image_embeds)  # (B, H*Q, C)
    mixed = rearrange(mixed, "b (h q) c -> h (b q) c", h=h)  # (H, B*Q, C)
    w_v = attn.value.weight.view(h, d, c)  # (H, d, C)
    out = torch.bmm(mixed, w_v.transpose(1, 2))  # (H, B*Q, d)
    out = rearrange(out, "h (b q) d -> b q (h d)", b=queries.shape[0]) + attn.value.bias  # (B, Q, D)
    return block.output(out, queries), (probs if output_attentions else None)
