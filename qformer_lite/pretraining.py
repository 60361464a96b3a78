"""Stage 1: the Q-Former with its three heads (ITC projections, ITM classifier, ITG LM head)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import QFormerConfig
from .qformer import QFormer


class LMHead(nn.Module):
    """BERT's MLM head: dense -> GELU -> LayerNorm, then the word embeddings (tied) + a bias."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        h = self.LayerNorm(F.gelu(self.dense(hidden)))  # (B, T, D)
        return F.linear(h, word_embeddings, self.bias)  # (B, T, V)


class QFormerPretraining(nn.Module):
    """A ``QFormer`` plus what stage 1 trains beside it.

    - ``vision_proj``, ``text_proj``: D -> ``image_text_hidden_size`` (256), the ITC space;
    - ``itm_head``: D -> 2 (no match / match), applied to each query output;
    - ``lm_head``: the ITG decoder head, tied to the text word embeddings;
    - ``temp``: the ITC temperature, learnable, initialised at 0.07 and not clamped (BLIP-2).
    """

    def __init__(self, config: QFormerConfig):
        super().__init__()
        if not config.use_qformer_text_input:
            raise ValueError("QFormerPretraining needs the text parts: build it with use_qformer_text_input=True")
        self.config = config
        self.qformer = QFormer(config)
        self.vision_proj = nn.Linear(config.hidden_size, config.image_text_hidden_size)
        self.text_proj = nn.Linear(config.hidden_size, config.image_text_hidden_size)
        self.itm_head = nn.Linear(config.hidden_size, 2)
        self.lm_head = LMHead(config)
        self.temp = nn.Parameter(torch.tensor(0.07))
        for module in (self.vision_proj, self.text_proj, self.itm_head, self.lm_head):
            module.apply(self.qformer._init_weights)

    def image_features(self, image_embeds: torch.Tensor, image_attention_mask=None) -> torch.Tensor:
        """Normalised ITC features of every query: (B, Q, E)."""
        queries = self.qformer(image_embeds, image_attention_mask=image_attention_mask).query_output  # (B, Q, D)
        return F.normalize(self.vision_proj(queries), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised ITC feature of each text: its first token's ([CLS]) output, (B, E)."""
        text = self.qformer(input_ids=input_ids, attention_mask=attention_mask, mode="itc").text_output  # (B, T, D)
        return F.normalize(self.text_proj(text[:, 0]), dim=-1)

    def itc_similarity(self, image_embeds, input_ids, attention_mask=None, image_attention_mask=None) -> torch.Tensor:
        """Cosine similarity of every image with every text, max over the queries, before the
        temperature: (B_images, B_texts)."""
        image_feats = self.image_features(image_embeds, image_attention_mask)  # (Bi, Q, E)
        text_feats = self.text_features(input_ids, attention_mask)  # (Bt, E)
        per_query = torch.einsum("iqe,te->itq", image_feats, text_feats)  # (Bi, Bt, Q)
        return per_query.max(dim=-1).values  # (Bi, Bt)

    def itm_logits(self, image_embeds, input_ids, attention_mask=None, image_attention_mask=None) -> torch.Tensor:
        """Match / no-match logits of each (image, text) pair, averaged over the queries: (B, 2)."""
        out = self.qformer(
            image_embeds, input_ids, attention_mask, mode="itm", image_attention_mask=image_attention_mask
        )
        return self.itm_head(out.query_output).mean(dim=1)  # (B, Q, 2) -> (B, 2)

    def lm_logits(self, text_output: torch.Tensor) -> torch.Tensor:
        """Next-token logits from the text outputs of an ITG pass: (B, T, V)."""
        return self.lm_head(text_output, self.qformer.embeddings.word_embeddings.weight)
