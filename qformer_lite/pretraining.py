"""Stage 1: the Q-Former with its three heads (ITC projections, ITM classifier, ITG LM head)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .config import QFormerConfig
from .qformer import QFormer


@dataclass
class Stage1Output:
    loss: torch.Tensor  # itc + itm + itg, unweighted as in LAVIS
    loss_itc: torch.Tensor
    loss_itm: torch.Tensor
    loss_itg: torch.Tensor
    sim_i2t: torch.Tensor  # (B, B) ITC similarities (max over queries), before the temperature
    neg_image: torch.Tensor  # (B,) the hard negative image drawn for each text
    neg_text: torch.Tensor  # (B,) the hard negative text drawn for each image


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
        return losses.itc_similarity_matrix(image_feats, text_feats)  # (Bi, Bt)

    def itm_logits(self, image_embeds, input_ids, attention_mask=None, image_attention_mask=None) -> torch.Tensor:
        """Match / no-match logits of each (image, text) pair, averaged over the queries: (B, 2)."""
        out = self.qformer(
            image_embeds, input_ids, attention_mask, mode="itm", image_attention_mask=image_attention_mask
        )
        return self.itm_head(out.query_output).mean(dim=1)  # (B, Q, 2) -> (B, 2)

    def lm_logits(self, text_output: torch.Tensor) -> torch.Tensor:
        """Next-token logits from the text outputs of an ITG pass: (B, T, V)."""
        return self.lm_head(text_output, self.qformer.embeddings.word_embeddings.weight)

    def forward(
        self,
        image_embeds: torch.Tensor,  # (B, N, C)
        input_ids: torch.Tensor,  # (B, T), "[CLS] words [SEP]" + padding
        attention_mask: torch.Tensor,  # (B, T)
        dec_token_id: int,  # the [DEC] token that starts ITG's text
        image_attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,  # draws the hard negatives
        label_smoothing: float = 0.1,
        *,
        itc_both_sides: bool = False,
        negative_floor: float = 1e-4,
    ) -> Stage1Output:
        """The three stage-1 losses on one batch of matching (image, text) pairs, as LAVIS's
        ``Blip2Qformer.forward`` computes them in one process: the queries run once, with their
        self-attention keys/values cached, and serve both ITC and ITG.

        The defaults are LAVIS 1.0.2's: each ITC direction trains only its own side (LAVIS's
        gathered features carry no gradient; ``itc_both_sides=True`` trains both), and the
        hard negatives are drawn from softmax(sim / temp) + 1e-4 with the positive at 0
        (``negative_floor=0``: LAVIS's main branch). See ``losses``."""
        if input_ids.dim() != 2 or input_ids.shape[0] != image_embeds.shape[0]:
            raise ValueError(
                f"input_ids must have shape ({image_embeds.shape[0]}, T) to match image_embeds, "
                f"got {tuple(input_ids.shape)}"
            )
        # ITC: queries and text in two separate passes (the unimodal mask)
        q_out = self.qformer(image_embeds, image_attention_mask=image_attention_mask, use_cache=True)
        image_feats = F.normalize(self.vision_proj(q_out.query_output), dim=-1)  # (B, Q, E)
        text_feats = self.text_features(input_ids, attention_mask)  # (B, E)
        loss_itc = losses.itc_loss_from_features(image_feats, text_feats, self.temp, label_smoothing,
                                                 both_sides=itc_both_sides)
        sim_i2t = losses.itc_similarity_matrix(image_feats, text_feats).detach()  # (B, B)

        # ITM: hard negatives drawn from the similarities, then [queries; text] bi-directionally
        neg_image, neg_text = losses.sample_hard_negatives(sim_i2t, self.temp.detach(), generator, negative_floor)
        images, ids, mask, labels = losses.itm_pairs(image_embeds, input_ids, attention_mask, neg_image, neg_text)
        image_mask = None
        if image_attention_mask is not None:
            image_mask = torch.cat([image_attention_mask, image_attention_mask[neg_image], image_attention_mask])
        loss_itm = F.cross_entropy(self.itm_logits(images, ids, mask, image_mask), labels)  # logits (3B, 2)

        # ITG: the text reads the cached queries under the multimodal causal mask
        dec_ids, lm_labels = losses.itg_inputs(input_ids, attention_mask, dec_token_id)
        text = self.qformer(
            input_ids=dec_ids, attention_mask=attention_mask, mode="itg", past_key_values=q_out.past_key_values
        ).text_output  # (B, T, D)
        loss_itg = losses.itg_loss(self.lm_logits(text), lm_labels, label_smoothing)

        return Stage1Output(
            loss_itc + loss_itm + loss_itg, loss_itc, loss_itm, loss_itg, sim_i2t, neg_image, neg_text
        )
