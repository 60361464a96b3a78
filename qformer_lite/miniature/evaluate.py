"""The two measures of the held-out split, and the captions they are computed from.

- Caption exact match: the generated caption equals the true one, word for word.
- Image->text recall@1: for each held-out image, every distinct caption of the held-out split
  is a candidate, ranked by the stage-1 ITC similarity (the best query's cosine with the
  text's [CLS] feature). Recall@1 is the fraction of images whose first candidate is their
  own caption. LAVIS's evaluation then re-ranks the top ``rerank_k`` candidates by ITM match
  logit + ITC similarity (``compute_sim_matrix``); that figure is reported beside it.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import losses
from ..blip2_t5 import Blip2T5
from ..pretraining import QFormerPretraining
from .config import MiniatureConfig
from .data import ShapesDataset
from .standins import CaptionTokenizer, encode_images, test_pool


@torch.no_grad()
def generate_captions(
    model: Blip2T5, tokenizer: CaptionTokenizer, features: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None, num_beams: int = 5, max_new_tokens: int = 12, batch_size: int = 256,
) -> list[str]:
    """Captions of images given as encoder features (N, L, C) or as pixels (N, 3, H, W); of
    clips, as their frames' features (N, F, L, C), for a video model."""
    model.eval()
    source = features if features is not None else pixel_values
    if source is None:
        raise ValueError("generate_captions needs features or pixel_values")
    out = []
    for i in range(0, len(source), batch_size):
        chunk = source[i:i + batch_size]
        kwargs = {"image_embeds": chunk} if features is not None else {"pixel_values": chunk}
        ids = model.generate(**kwargs, num_beams=num_beams, max_new_tokens=max_new_tokens)
        out += tokenizer.batch_decode(ids)
    return out


def exact_match(predictions: list[str], references: list[str]) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    return float(np.mean([p == r for p, r in zip(predictions, references)]))


@torch.no_grad()
def retrieval(
    model: QFormerPretraining, features: torch.Tensor, captions: list[str], tokenizer: CaptionTokenizer,
    rerank_k: int = 8,
) -> dict:
    """Image->text retrieval among the distinct captions of a split (see the module docstring).

    Returns ``recall_at_1`` (the ITC ranking), ``recall_at_1_itm_rerank`` (its top
    ``rerank_k`` re-ranked by ITM, as LAVIS does), the candidates, the ITC similarity matrix
    (images x candidates), and the first candidate of each image under each ranking
    (``chosen``: ITC, ``chosen_itm_rerank``).
    """
    model.eval()
    candidates = sorted(set(captions))
    position = {c: i for i, c in enumerate(candidates)}
    truth = torch.tensor([position[c] for c in captions])  # (I,)
    ids, mask = tokenizer.qformer(candidates)  # (C, T)
    image_feats = model.image_features(features)  # (I, Q, E)
    text_feats = model.text_features(ids, mask)  # (C, E)
    sim = losses.itc_similarity_matrix(image_feats, text_feats)  # (I, C)
    k = min(rerank_k, len(candidates))
    top_sim, top = sim.topk(k, dim=1)  # (I, k)
    n = features.shape[0]
    itm = model.itm_logits(features.repeat_interleave(k, dim=0), ids[top.flatten()], mask[top.flatten()])  # (I*k, 2)
    score = itm[:, 1].view(n, k) + top_sim  # LAVIS: ITM match logit + ITC similarity
    reranked = top.gather(1, score.argmax(dim=1, keepdim=True)).squeeze(1)  # (I,)
    chosen = sim.argmax(dim=1)  # (I,)
    return {
        "recall_at_1": float((chosen == truth).float().mean()),
        "recall_at_1_itm_rerank": float((reranked == truth).float().mean()),
        "candidates": candidates,
        "similarity": sim,
        "chosen": chosen,
        "chosen_itm_rerank": reranked,
    }


def test_images(n: int, config: MiniatureConfig | None = None, stride: int | None = None):
    """``n`` held-out images (uint8 (H, W, 3) each) and their true captions, spread over the split."""
    config = config or MiniatureConfig.default()
    test = ShapesDataset("test", config.data, seed=config.seed)
    if not 1 <= n <= len(test):
        raise ValueError(f"n must be between 1 and the {len(test)} test images, got {n}")
    stride = stride or len(test) // n
    pool = test.pool([i * stride for i in range(n)])
    return [image.numpy() for image in pool.images], list(pool.captions)


def evaluate(result) -> dict:
    """Caption every held-out image with ``result.model`` and rank their captions with
    ``result.stage1`` (a ``train.Run``); fills and returns ``result.metrics``, and sets
    ``result.test_pool`` and ``result.test_captions``."""
    config, standins = result.config, result.standins
    pool = test_pool(config)
    features = encode_images(standins.image_encoder, pool)  # (N, L, C)
    captions = generate_captions(result.model, standins.tokenizer, features, num_beams=config.num_beams,
                                 max_new_tokens=config.max_new_tokens)
    ranked = retrieval(result.stage1, features, pool.captions, standins.tokenizer, config.rerank_k)
    result.test_pool, result.test_captions = pool, captions
    result.metrics = {
        "caption_exact_match": exact_match(captions, pool.captions),
        "image_text_recall_at_1": ranked["recall_at_1"],
        "image_text_recall_at_1_itm_rerank": ranked["recall_at_1_itm_rerank"],
        "test_images": len(pool),
        "test_captions": len(ranked["candidates"]),
        "from_cache": dict(result.from_cache),
    }
    return result.metrics
