"""BLIP-2 in miniature: every setting of one end-to-end run, the frozen stand-ins, checkpoints.

``MiniatureConfig`` holds the data, the two stand-ins (image encoder, T5), the Q-Former and
both training stages; ``MiniatureConfig.default()`` is what ``qformer-lite train`` runs,
``MiniatureConfig.quick()`` a seconds-long version for tests. ``load_standins`` builds (or
reads from the cache) everything that is frozen during the Q-Former's training.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from . import cache
from .blip2_t5 import Blip2T5
from .config import QFormerConfig
from .data import DataConfig, ImagePool, ShapesDataset, all_captions, vocabulary
from .language import SPECIAL_TOKENS, CaptionTokenizer, LanguageConfig, build_t5, pretrain_t5
from .language import cache_key as language_key
from .qformer import QFormer
from .seeding import seeded
from .vision import ImageEncoder, VisionConfig, freeze, pretrain_image_encoder
from .vision import cache_key as vision_key


@dataclass
class StageConfig:
    """One training stage: AdamW, linear warmup then cosine decay to a tenth of the peak."""

    steps: int = 500
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    related_fraction: float = 0.0  # of each batch drawn as pairs of related captions (train.CaptionBatches)
    # stage 1 only, LAVIS 1.0.2's choices by default (see losses.py): each ITC direction trains
    # its own side; every hard negative keeps a 1e-4 chance (0: LAVIS's main branch)
    itc_both_sides: bool = False
    negative_floor: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"StageConfig.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"StageConfig.lr must be > 0, got {self.lr!r}")


def vocab_size() -> int:
    return len(SPECIAL_TOKENS) + len(vocabulary())


def miniature_qformer(vision: VisionConfig, **overrides) -> QFormerConfig:
    """The miniature's Q-Former: BLIP-2's structure at 1/6 of the width and 8 queries."""
    base = dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        cross_attention_frequency=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=16, vocab_size=vocab_size(), encoder_hidden_size=vision.embed_dim,
        num_query_tokens=8, image_text_hidden_size=64,
        # BERT's 0.02 leaves a model this small with near-uniform cross-attention for hundreds of
        # steps (a plateau where nothing is learned); 0.1 starts it reading individual patches
        initializer_range=0.1,
    )
    base.update(overrides)
    return QFormerConfig(**base)


@dataclass
class MiniatureConfig:
    seed: int = 0
    train_images: int = 8192  # rendered once; the frozen encoder's features are computed once
    data: DataConfig = field(default_factory=DataConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    qformer: QFormerConfig = field(default_factory=lambda: miniature_qformer(VisionConfig()))
    stage1: StageConfig = field(default_factory=lambda: StageConfig(steps=400, lr=2e-3, related_fraction=0.5))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(steps=1500, lr=3e-3))
    num_beams: int = 5  # LAVIS's default for captions
    max_new_tokens: int = 12  # captions are at most 8 words + </s>
    rerank_k: int = 8  # ITC candidates re-ranked by ITM for recall@1 (LAVIS's k_test)

    def __post_init__(self) -> None:
        if self.qformer.vocab_size != vocab_size():
            raise ValueError(f"qformer.vocab_size must be {vocab_size()} (the tokenizer's), got {self.qformer.vocab_size}")
        if self.qformer.encoder_hidden_size != self.vision.embed_dim:
            raise ValueError(
                f"qformer.encoder_hidden_size must equal vision.embed_dim ({self.vision.embed_dim}), "
                f"got {self.qformer.encoder_hidden_size}"
            )
        if self.vision.image_size != self.data.image_size or self.vision.patch_size != self.data.cell_size:
            raise ValueError(
                f"the encoder must see one cell per patch: vision.image_size/patch_size = "
                f"{self.vision.image_size}/{self.vision.patch_size}, data image_size/cell_size = "
                f"{self.data.image_size}/{self.data.cell_size}"
            )
        if self.train_images < self.stage1.batch_size:
            raise ValueError(f"train_images ({self.train_images}) must be >= stage1.batch_size ({self.stage1.batch_size})")

    @classmethod
    def default(cls, **overrides) -> "MiniatureConfig":
        """What ``qformer-lite train`` runs: about three minutes on two CPU cores."""
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides) -> "MiniatureConfig":
        """A run of a few seconds, for tests: it exercises every step, it learns little."""
        vision = VisionConfig(embed_dim=32, depth=1, num_heads=2, steps=10, batch_size=32)
        base = dict(
            train_images=256,
            vision=vision,
            language=LanguageConfig(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
                                    steps=10, batch_size=32),
            qformer=miniature_qformer(vision, hidden_size=32, intermediate_size=64, num_query_tokens=4,
                                      image_text_hidden_size=16),
            stage1=StageConfig(steps=6, batch_size=16, warmup_steps=2),
            stage2=StageConfig(steps=6, batch_size=16, warmup_steps=2),
            num_beams=2,
            rerank_k=4,
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MiniatureConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MiniatureConfig fields: {unknown}")
        parts = {
            "data": DataConfig, "vision": VisionConfig, "language": LanguageConfig,
            "stage1": StageConfig, "stage2": StageConfig,
        }
        kwargs = dict(data)
        for name, kind in parts.items():
            if name in kwargs:
                kwargs[name] = kind(**kwargs[name])
        if "qformer" in kwargs:
            kwargs["qformer"] = QFormerConfig.from_dict(kwargs["qformer"])
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "MiniatureConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class StandIns:
    """What stays frozen while the Q-Former trains, and the images it trains on."""

    image_encoder: ImageEncoder
    language_model: nn.Module  # a tiny T5ForConditionalGeneration
    tokenizer: CaptionTokenizer
    train_pool: ImagePool
    vision_history: list[float] = field(default_factory=list)
    language_history: list[float] = field(default_factory=list)
    from_cache: bool = False
    seconds: dict = field(default_factory=dict)  # wall time of each part: images, image encoder, language model


def train_pool(config: MiniatureConfig) -> ImagePool:
    return ShapesDataset("train", config.data, seed=config.seed).pool(range(config.train_images))


def test_pool(config: MiniatureConfig) -> ImagePool:
    """Every image of the held-out split."""
    test = ShapesDataset("test", config.data, seed=config.seed)
    return test.pool(range(len(test)))


def load_standins(config: MiniatureConfig, progress: bool = True, use_cache: bool = True) -> StandIns:
    """The pretrained image encoder and T5, read from the cache, or pretrained (and cached) if absent."""
    seconds = {}
    t = time.perf_counter()
    pool = train_pool(config)
    seconds["images"] = time.perf_counter() - t
    tokenizer = CaptionTokenizer()
    captions = ShapesDataset("train", config.data, seed=config.seed).captions
    if config.language.corpus == "all":
        captions = all_captions()
    v_dir = cache.entry_path(vision_key(config.vision, config.data, config.seed, config.train_images))
    l_dir = cache.entry_path(language_key(config.language, tokenizer, captions, config.seed))
    encoder, t5 = ImageEncoder(config.vision), build_t5(config.language, tokenizer)
    t = time.perf_counter()
    encoder, v_hist, hit = cache.cached_training(
        v_dir, encoder, lambda: pretrain_image_encoder(config.vision, pool, seed=config.seed, progress=progress),
        use_cache)
    seconds["image_encoder"] = time.perf_counter() - t
    t = time.perf_counter()
    t5, l_hist, l_hit = cache.cached_training(
        l_dir, t5, lambda: pretrain_t5(config.language, tokenizer, captions, seed=config.seed, progress=progress),
        use_cache)
    seconds["language_model"] = time.perf_counter() - t
    return StandIns(freeze(encoder), freeze(t5), tokenizer, pool, v_hist, l_hist, from_cache=hit and l_hit,
                    seconds=seconds)


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
