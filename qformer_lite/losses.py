"""The three stage-1 losses of BLIP-2, as LAVIS trains them (``Blip2Qformer.forward``).

- ITC (contrastive): every image against every text of the batch. An image has one feature
  per query; its similarity to a text is the *best* query's, divided by a learned
  temperature; symmetric cross-entropy with label smoothing 0.1.
- ITM (matching): a binary classifier on [queries; text] seen together, trained on 3B pairs:
  B positives, and for each of them a hard negative image and a hard negative text, drawn at
  random with probability given by the ITC similarity (so the negatives that look most alike
  are drawn most often), never the positive itself.
- ITG (generation): the text is generated from the queries under the multimodal causal mask;
  the first token ``[CLS]`` becomes ``[DEC]``, padding is ignored, label smoothing 0.1.

Two details follow LAVIS's code rather than the paper, which does not state them:

- LAVIS always trains inside a process group and gathers every GPU's features with
  ``concat_all_gather``, which is ``@torch.no_grad``. So in the image->text direction the
  texts are constants and only the image side learns; in text->image only the text side
  does. That holds on one GPU too (the gather of one process is a detached copy).
  ``itc_loss_from_features`` does the same by default; ``both_sides=True`` lets both sides
  of both directions learn, as a loss on one similarity matrix does, and as OpenCLIP does for
  each GPU's own features (it puts them, with their gradient, back into the gathered ones).
  The loss is the same number either way; only its gradient differs.
- The hard-negative draw of the 1.0.2 release (the code the paper's models came from) adds
  1e-4 to the softmax of the similarities and sets the positive to 0, so every negative keeps
  a small chance. LAVIS's main branch later (commit 93e0179, July 2023) masks the positive
  before the softmax and adds no floor: ``negative_floor=0``.

In one process the batch *is* the world, so the diagonal of the similarity matrix holds the
positives.
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
    """Symmetric contrastive loss; the positives are on the diagonal of ``sim_i2t`` (B, B).

    Both directions read the same matrix, so its gradient reaches both sides of each
    direction (``both_sides=True`` below). The value is LAVIS's either way."""
    if sim_i2t.dim() != 2 or sim_i2t.shape[0] != sim_i2t.shape[1]:
        raise ValueError(f"sim_i2t must be a square (B, B) matrix, got {tuple(sim_i2t.shape)}")
    return _two_way_loss(sim_i2t, sim_i2t.t(), temp, label_smoothing)


def _two_way_loss(sim_i2t, sim_t2i, temp, label_smoothing):
    targets = torch.arange(sim_i2t.shape[0], device=sim_i2t.device)  # the diagonal
    return (
        F.cross_entropy(sim_i2t / temp, targets, label_smoothing=label_smoothing)
        + F.cross_entropy(sim_t2i / temp, targets, label_smoothing=label_smoothing)
    ) / 2


def itc_loss_from_features(
    image_feats: torch.Tensor, text_feats: torch.Tensor, temp: torch.Tensor | float,
    label_smoothing: float = 0.1, both_sides: bool = False,
) -> torch.Tensor:
    """ITC from the normalised features, image (B, Q, E) and text (B, E), as LAVIS trains it.

    LAVIS compares its own images with the gathered texts, and its own texts with the gathered
    images; the gathered side carries no gradient. So image->text trains the image side and
    text->image the text side. ``both_sides=True`` keeps the gradient of both sides."""
    if image_feats.shape[0] != text_feats.shape[0]:
        raise ValueError(f"ITC needs as many images as texts, got {image_feats.shape[0]} and {text_feats.shape[0]}")
    if both_sides:
        return itc_loss(itc_similarity_matrix(image_feats, text_feats), temp, label_smoothing)
    sim_i2t = itc_similarity_matrix(image_feats, text_feats.detach())  # (B, B): texts are constants
    sim_t2i = itc_similarity_matrix(image_feats.detach(), text_feats).t()  # (B, B): images are constants
    return _two_way_loss(sim_i2t, sim_t2i, temp, label_smoothing)


def negative_weights(
    sim_i2t: torch.Tensor, temp: torch.Tensor | float = 1.0, floor: float = 1e-4,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """For each row (an image), the probability of drawing each column (a text) as its
    negative: the softmax of sim / temp over the whole row, plus ``floor``, with the positive
    (diagonal) set to exactly 0, renormalised (``torch.multinomial`` would do the same).

    ``floor=1e-4`` is LAVIS 1.0.2; ``floor=0`` is LAVIS's main branch (the positive masked
    before the softmax), the same numbers as a softmax over the other columns only.
    ``negative_weights(sim.t(), temp)`` gives the texts' weights over images.

    ``positives`` (b,): the column of each row's positive, for one process's b rows against
    the whole batch of B columns, as LAVIS has them on several GPUs (rank * b + i); None: the
    diagonal of a square matrix."""
    if positives is None:
        if sim_i2t.dim() != 2 or sim_i2t.shape[0] != sim_i2t.shape[1]:
            raise ValueError(f"sim_i2t must be a square (B, B) matrix, got {tuple(sim_i2t.shape)}")
        positives = torch.arange(sim_i2t.shape[0], device=sim_i2t.device)
    elif sim_i2t.dim() != 2 or positives.shape != (sim_i2t.shape[0],):
        raise ValueError(f"positives must name one column per row of sim_i2t (b, B): got positives of shape "
                         f"{tuple(positives.shape)} for sim_i2t of shape {tuple(sim_i2t.shape)}")
    if floor < 0:
        raise ValueError(f"floor must be >= 0, got {floor}")
    positive = torch.zeros(sim_i2t.shape, dtype=torch.bool, device=sim_i2t.device)
    positive[torch.arange(sim_i2t.shape[0], device=sim_i2t.device), positives] = True  # (b, B)
    logits = (sim_i2t / temp).float()  # (b, B)
    if floor == 0:  # main branch; masking first stays exact where the positive takes all the mass
        return logits.masked_fill(positive, float("-inf")).softmax(dim=1)
    weights = (logits.softmax(dim=1) + floor).masked_fill(positive, 0.0)  # 1.0.2
    return weights / weights.sum(dim=1, keepdim=True)


@torch.no_grad()
def sample_hard_negatives(
    sim_i2t: torch.Tensor, temp: torch.Tensor | float = 1.0, generator: torch.Generator | None = None,
    floor: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each text a negative image, for each image a negative text, drawn with the
    probabilities of ``negative_weights`` (the positives never drawn).

    Returns (neg_image_for_text (B,), neg_text_for_image (B,)), indices into the batch.
    """
    b = sim_i2t.shape[0]
    if b < 2:
        raise ValueError(f"hard negatives need a batch of at least 2 pairs, got {b}")
    weights_i2t = negative_weights(sim_i2t, temp, floor)  # (B, B): row = image, over texts
    weights_t2i = negative_weights(sim_i2t.t(), temp, floor)  # (B, B): row = text, over images
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
    """Decoder inputs ([CLS] -> [DEC]) and labels (padding -> -100), both (B, T).

    LAVIS ignores the positions whose id is the pad id; here, those whose attention mask is 0.
    The two are the same positions: a tokenizer writes the pad id exactly where it pads and
    never for a word (BERT's ``[PAD]`` and the miniature's ``<pad>`` are not words), and the
    mask is 0 exactly there. The mask also works for a tokenizer whose pad id is a real token."""
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
