"""One Q-Former layer: a post-LN BERT layer with cross-attention for the queries and two FFNs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention
from .config import QFormerConfig

_ACT = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class AddNorm(nn.Module):
    """BERT's post-LN residual: LayerNorm(dropout(dense(x)) + residual)."""

    def __init__(self, in_size: int, hidden_size: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class AttentionBlock(nn.Module):
    """Multi-head attention followed by its output projection and AddNorm."""

    def __init__(self, config: QFormerConfig, context_size: int | None = None):
        super().__init__()
        self.attention = MultiHeadAttention(
            config.hidden_size, config.num_attention_heads, context_size, config.attention_probs_dropout_prob
        )
        self.output = AddNorm(config.hidden_size, config.hidden_size, config.layer_norm_eps, config.hidden_dropout_prob)

    def forward(self, x, context=None, mask=None, output_attentions=False, past_key_value=None):
        attended, probs, kv = self.attention(x, context, mask, output_attentions, past_key_value)
        return self.output(attended, x), probs, kv


class FeedForward(nn.Module):
    """dense -> activation -> dense, then AddNorm: BERT's intermediate + output."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACT[config.hidden_act]
        self.output = AddNorm(
            config.intermediate_size, config.hidden_size, config.layer_norm_eps, config.hidden_dropout_prob
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.act(self.intermediate(x)), x)


class QFormerLayer(nn.Module):
    """Self-attention over [queries; text], cross-attention for the queries only (in every
    ``cross_attention_frequency``-th layer), then the query FFN for queries and the text FFN
    for text. Text never attends to the image: it reads image content only through the
    queries, in self-attention.
    """

    def __init__(self, config: QFormerConfig, layer_index: int):
        super().__init__()
        self.self_attention = AttentionBlock(config)
        self.cross_attention = (
            AttentionBlock(config, context_size=config.encoder_hidden_size)
            if config.has_cross_attention(layer_index) else None
        )
        self.query_ffn = FeedForward(config)
        self.text_ffn = FeedForward(config) if config.use_qformer_text_input else None

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, L, D) with L = num_queries + T
        num_queries: int,
        attention_mask: torch.Tensor | None = None,  # bool (B, 1, L, L_k)
        image_embeds: torch.Tensor | None = None,  # (B, N, C)
        image_mask: torch.Tensor | None = None,  # bool (B, 1, 1, N)
        output_attentions: bool = False,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        h, self_probs, kv = self.self_attention(
            hidden_states, mask=attention_mask, output_attentions=output_attentions, past_key_value=past_key_value
        )  # (B, L, D)
        cross_probs = None
        if num_queries == 0:  # text only (ITC's text pass, or text after cached queries)
            return self.text_ffn(h), self_probs, cross_probs, kv

        queries = h[:, :num_queries]  # (B, Q, D)
        if self.cross_attention is not None:
            queries, cross_probs, _ = self.cross_attention(queries, image_embeds, image_mask, output_attentions)
        out = self.query_ffn(queries)  # (B, Q, D)
        if h.shape[1] > num_queries:
            out = torch.cat([out, self.text_ffn(h[:, num_queries:])], dim=1)  # (B, Q + T, D)
        return out, self_probs, cross_probs, kv
