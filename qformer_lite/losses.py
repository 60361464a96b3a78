"""The three stage-1 losses of BLIP-2, as in LAVIS ``Blip2Qformer.forward``, for one process.

- ITC (contrastive): every image against every text of the batch. An image has one feature
  per query; its similarity to a text is the *best* query's, divided by a learned
  temperature; symmetric cross-entropy with label smoothing 0.1.
- ITM (matching): a binary classifier on [queries; text] seen together, trained on 3B pairs:
  B positives, and for each of them a hard negative image and a hard negative text, drawn at
  random with probability given by the ITC similarity (so the negatives that look most alike
  are drawn most often), never the positive itself.
- ITG (generation): the text is generated from the queries under the multimodal causal mask;
  the first token ``[CLS]`` becomes ``[DEC]``, padding is ignored, label smoothing 0.1.

LAVIS gathers features across GPUs first; in one process the batch *is* the world, so the
diagonal of the similarity matrix holds the positives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def itc_similarity_matrix(image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each image with each text, max over the image's queries.

    image_feats: (B_i, Q, E), text_feats: (B_t, E), both L2-normalised -> (B_i, B_t).
    """
    per_query = torch.einsum("iqe,te->itq", image_feats, text_feats)  # (B_i, B_t, Q)
    return per_query.max(dim=-1).values  # (B_i, B_t)


def itc_loss(sim_i2t: torch.Tensor, temp: torch.Tensor | float, label_smoothing: float = 0.1) -> torch.Tensor:
    """Symmetric contrastive loss; the positives are on the diagonal of ``sim_i2t`` (B, B)."""
    if sim_i2t.dim() != 2 or sim_i2t.shape[0] != sim_i2t.shape[1]:
        raise ValueError(f"sim_i2t must be a square (B, B) matrix, got {tuple(sim_i2t.shape)}")
    logits = sim_i2t / temp  # (B, B)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (
        F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        + F.cross_entropy(logits.t(), targets, label_smoothing=label_smoothing)
    ) / 2


def negative_weights(sim_i2t: torch.Tensor, temp: torch.Tensor | float = 1.0) -> torch.Tensor:
    """For each row (an image), the probability of drawing each column (a text) as its
    negative: softmax of sim / temp over the row, the positive (diagonal) at exactly 0.
    ``negative_weights(sim.t(), temp)`` gives the texts' weights over images."""
    positive = torch.eye(sim_i2t.shape[0], dtype=torch.bool, device=sim_i2t.device)
    return (sim_i2t / temp).float().masked_fill(positive, float("-inf")).softmax(dim=1)  # (B, B)


@torch.no_grad()
def sample_hard_negatives(
    sim_i2t: torch.Tensor, temp: torch.Tensor | float = 1.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each text a negative image, for each image a negative text, drawn from the softmax of
    the (temperature-scaled) similarities with the positives masked out.

    Returns (neg_image_for_text (B,), neg_text_for_image (B,)), indices into the batch.
    """
    b = sim_i2t.shape[0]
    if b < 2:
        raise ValueError(f"hard negatives need a batch of at least 2 pairs, got {b}")
    weights_i2t = negative_weights(sim_i2t, temp)  # (B, B): row = image, over texts
    weights_t2i = negative_weights(sim_i2t.t(), temp)  # (B, B): row = text, over images
    neg_image = torch.multinomial(weights_t2i, 1, generator=generator).squeeze(1)  # (B,)
    neg_text = torch.multinomial(weights_i2t, 1, generator=generator).squeeze(1)  # (B,)
    return neg_image, neg_text


def itm_pairs(image_embeds, input_ids, attention_mask, neg_image, neg_text):
    """The 3B ITM pairs: (image, its text), (a hard negative image, the text), (the image, a hard
    negative text); labels 1, 0, 0."""
    b = input_ids.shape[0]
    images = torch.cat([image_embeds, image_embeds[neg_image], image_embeds], dim=0)  # (3B, N, C)
    ids = torch.cat([input_ids, input_ids, input_ids[neg_text]], dim=0)  # (3B, T)
    mask = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]], dim=0)  # (3B, T)
    labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(input_ids.device)  # (3B,)
    return images, ids, mask, labels


def itg_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, dec_token_id: int):
    """Decoder inputs ([CLS] -> [DEC]) and labels (padding -> -100), both (B, T)."""
    decoder_input_ids = input_ids.clone()
    decoder_input_ids[:, 0] = dec_token_id
    labels = decoder_input_ids.masked_fill(attention_mask == 0, -100)
    return decoder_input_ids, labels


def itg_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t + 1; -100 labels are ignored.

    logits: (B, T, V), labels: (B, T). The label at position 0 ([DEC]) is never predicted.
    """
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B * (T - 1), V)
    targets = labels[:, 1:].reshape(-1)  # (B * (T - 1),)
    return F.cross_entropy(shifted, targets, ignore_index=-100, label_smoothing=label_smoothing)
