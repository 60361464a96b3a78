"""Cross-attention computed from the query side: the same numbers as ``MultiHeadAttention``,
with less arithmetic when there are few queries and many wide image tokens.

The plain form projects all N image tokens to keys and values (N x C x D multiply-adds
each), then attends. Per head h, with W_k^h, W_v^h the head's (d, C) slices:

    scores_h = (q_h W_k^h) X^T                  # fold W_k into the queries instead
    out_h    = softmax(scores_h) (X W_v^h)^T = (P_h X) W_v^h^T   # and W_v after the sum

so the image tokens X (N, C) of one image are touched only by (H*Q, C) x (C, N) products.
Per image and layer that costs 2 H Q C (N + d) multiply-adds instead of 2 N C D: at BLIP-2
size (H*Q = 384, N = 257, C = 1408, D = 768) 347M instead of 556M, 38% fewer. The key bias
adds the same number q_h . b_k^h to every score of a row, which softmax ignores; the value
bias comes out unchanged because each row of P sums to 1. The chapters teach the plain form;
tests hold the two equal.

Fewer multiply-adds only pay if the products run as fast as the one large projection they
replace. Batched over images in a single call, they need (H, B*Q, C) <-> (B, H*Q, C) layout
copies of 17 MB per layer at BLIP-2 size, which ate the gain; taken one image at a time, as
here, every product reads and writes contiguous memory. Measured by
benchmarks/bench_qformer.py (BLIP-2 size, batch 8, results in benchmarks/results/): on a
2-core CPU in fp32 it ran at 0.92-0.98 of HuggingFace's time, the plain form at 0.96-1.05; on
an H200 in bf16 it took 1.5x HuggingFace's time (a loop over images is a string of small
kernels there), the plain form 0.82-0.99x. ``QFormer`` therefore uses it by default only on
the CPU and only where it saves arithmetic (``worthwhile``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention import MultiHeadAttention


def arithmetic_ratio(num_heads: int, num_queries: int, head_dim: int, num_image_tokens: int) -> float:
    """Multiply-adds of the query-side form over those of the plain one (image side only)."""
    return num_heads * num_queries * (num_image_tokens + head_dim) / (num_image_tokens * num_heads * head_dim)


def worthwhile(attn: MultiHeadAttention, num_queries: int, image_embeds: torch.Tensor) -> bool:
    """The automatic choice: on the CPU, when it saves at least a quarter of the arithmetic."""
    return image_embeds.device.type == "cpu" and arithmetic_ratio(
        attn.num_heads, num_queries, attn.head_dim, image_embeds.shape[1]) <= 0.75


def query_side_cross_attention(
    block,  # layer.AttentionBlock with a cross-attention MultiHeadAttention
    queries: torch.Tensor,  # (B, Q, D)
    image_embeds: torch.Tensor,  # (B, N, C)
    image_mask: torch.Tensor | None = None,  # bool, broadcastable to (B, 1, 1, N)
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    attn: MultiHeadAttention = block.attention
    h, d = attn.num_heads, attn.head_dim
    b, q_len, _ = queries.shape
    c = image_embeds.shape[-1]
    q = (attn.query(queries) * (1.0 / math.sqrt(d))).view(b, q_len, h, d).transpose(1, 2)  # (B, H, Q, d)
    w_k = attn.key.weight.view(h, d, c)  # (H, d, C)
    w_v_t = attn.value.weight.view(h, d, c).transpose(1, 2)  # (H, C, d)
    outs, probs = [], []
    for i in range(b):  # one image at a time: every product below is on contiguous memory
        x = image_embeds[i]  # (N, C)
        q_img = torch.bmm(q[i], w_k).view(h * q_len, c)  # (H*Q, C): each query, seen from the image side
        scores = (q_img @ x.t()).view(h, q_len, -1)  # (H, Q, N)
        if image_mask is not None:
            scores = scores.masked_fill(~image_mask[i if image_mask.shape[0] > 1 else 0], float("-inf"))
        p = scores.softmax(dim=-1)
        if output_attentions:
            probs.append(p)
        p = F.dropout(p, attn.dropout) if attn.training and attn.dropout > 0 else p
        mixed = (p.view(h * q_len, -1) @ x).view(h, q_len, c)  # (H, Q, C)
        outs.append(torch.bmm(mixed, w_v_t))  # (H, Q, d)
    out = torch.stack(outs).transpose(1, 2).reshape(b, q_len, h * d) + attn.value.bias  # (B, Q, D)
    return block.output(out, queries), (torch.stack(probs) if output_attentions else None)
