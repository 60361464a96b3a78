"""From a trained Q-Former to a captioner, and the captioner to a folder and back.

``build_blip2`` puts the stage-1 Q-Former (its query path only, as BLIP-2's stage 2 does)
between the frozen stand-ins; ``save_checkpoint`` writes what ``qformer-lite train`` leaves
behind and ``load_checkpoint`` (``qformer-lite caption``) reads it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..blip2_t5 import Blip2T5
from ..qformer import QFormer
from . import cache
from .config import MiniatureConfig
from .standins import CaptionTokenizer, ImageEncoder, StandIns, build_t5
from .trainer import seeded


def query_only(qformer: QFormer) -> QFormer:
    """The stage-2 Q-Former: the stage-1 one without its text parts (embeddings, text FFNs),
    which BLIP-2's stage 2 deletes. The query path keeps its trained weights."""
    config = replace(qformer.config, use_qformer_text_input=False)
    stage2 = QFormer(config)
    missing, unexpected = stage2.load_state_dict(qformer.state_dict(), strict=False)
    if missing or any(not (k.startswith("embeddings.") or ".text_ffn." in k) for k in unexpected):
        raise ValueError(f"query_only: unexpected key mismatch, missing={missing}, unexpected={unexpected}")
    return stage2


def build_blip2(config: MiniatureConfig, standins: StandIns, qformer: QFormer | None = None) -> Blip2T5:
    """Frozen encoder -> query-only Q-Former (fresh, or from stage 1) -> projection -> frozen T5."""
    with seeded(config.seed + 2):  # the projection (and a fresh Q-Former) start the same in every caller
        if qformer is None:
            qformer = QFormer(replace(config.qformer, use_qformer_text_input=False))
        elif qformer.embeddings is not None:
            qformer = query_only(qformer)
        return Blip2T5(standins.image_encoder, qformer, standins.language_model)


CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def save_checkpoint(model: Blip2T5, config: MiniatureConfig, tokenizer: CaptionTokenizer, folder: Path,
                    stage1=None) -> None:
    """``config.json`` + ``model.safetensors`` (encoder, Q-Former, projection, T5) +
    ``tokenizer.json``; with ``stage1``, also ``stage1.safetensors`` (the Q-Former with its
    text parts and heads, for retrieval)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / "config.json")
    tokenizer.save(folder / "tokenizer.json")
    cache.save_module(model, folder, "model")
    if stage1 is not None:
        cache.save_module(stage1, folder, "stage1")


def load_checkpoint(folder: str | Path) -> tuple[Blip2T5, MiniatureConfig, CaptionTokenizer]:
    """The captioner saved by ``save_checkpoint``. Raises ValueError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"checkpoint folder {folder} does not exist")
    missing = [n for n in CHECKPOINT_FILES if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"checkpoint folder {folder} is incomplete: missing {', '.join(missing)}")
    try:
        config = MiniatureConfig.load(folder / "config.json")
        tokenizer = CaptionTokenizer.load(folder / "tokenizer.json")
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise ValueError(f"checkpoint folder {folder} has an unreadable config.json or tokenizer.json ({err})") from None
    encoder, t5 = ImageEncoder(config.vision), build_t5(config.language, tokenizer)
    qformer = QFormer(replace(config.qformer, use_qformer_text_input=False))
    model = Blip2T5(encoder, qformer, t5)
    try:
        cache.load_module(model, folder, "model")
    except Exception as err:  # a truncated or foreign safetensors file
        raise ValueError(f"checkpoint folder {folder}: model.safetensors does not fit this model ({err})") from None
    return model.eval(), config, tokenizer
