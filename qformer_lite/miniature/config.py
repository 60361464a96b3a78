"""The settings of one miniature run, held by one object.

``MiniatureConfig`` holds the data, the two stand-ins (image encoder, T5), the Q-Former and
both training stages (``DataConfig`` is defined beside the data, ``OptimConfig`` beside
the training loop); each training holds its optimiser settings in one ``OptimConfig``.
``MiniatureConfig.default()`` is what ``qformer-lite train`` runs, ``MiniatureConfig.quick()``
a seconds-long version for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import JsonConfig, QFormerConfig
from .data import SPECIAL_TOKENS, DataConfig, vocabulary
from .trainer import OptimConfig


@dataclass
class VisionConfig(JsonConfig):
    """The image encoder's stand-in: a tiny timm ViT, one patch per cell of the image."""

    image_size: int = 48
    patch_size: int = 16  # = the data's cell size: one object per patch token
    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0
    pos_embed_std: float = 0.5  # timm's 0.02 hides "where" under "what" for the first ~200 steps
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        steps=200, batch_size=128, lr=4e-3, warmup_steps=30, weight_decay=0.01))

    def __post_init__(self) -> None:
        self.optim = OptimConfig.from_dict(self.optim) if isinstance(self.optim, dict) else self.optim

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class LanguageConfig(JsonConfig):
    """The LLM's stand-in: a tiny T5, pretrained to rebuild captions from corrupted copies."""

    d_model: int = 64
    d_kv: int = 16
    d_ff: int = 128
    # one layer each way rebuilds captions about as well as two did, in about half the time
    num_layers: int = 1
    num_decoder_layers: int = 1
    num_heads: int = 4
    # T5's default: 32 buckets, exact up to 8 positions each way. Coarser buckets blur word
    # order, and T5 then swaps the colours of two objects even when copying a caption.
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        steps=800, batch_size=64, lr=3e-3, warmup_steps=30, weight_decay=0.01))
    drop_prob: float = 0.25
    mask_prob: float = 0.3
    empty_prob: float = 0.1  # rebuild from nothing: the decoder's own prior over captions
    # "none" (copy the caption as it is) teaches T5 to follow its input word for word, even a
    # caption it never saw; "swap" (two neighbours exchanged) is left out by default: it teaches
    # T5 to put words back in the order it expects, which undoes the order a soft prompt gives
    corruptions: tuple[str, ...] = ("none", "drop", "mask")
    corpus: str = "train"  # "train": the training split's captions; "all": every sentence of the language

    def __post_init__(self) -> None:
        self.optim = OptimConfig.from_dict(self.optim) if isinstance(self.optim, dict) else self.optim
        self.corruptions = tuple(self.corruptions)
        unknown = set(self.corruptions) - {"none", "drop", "mask", "swap"}
        if not self.corruptions or unknown:
            raise ValueError(
                f"LanguageConfig.corruptions must be drawn from none, drop, mask, swap; got {self.corruptions!r}"
            )
        if self.corpus not in ("train", "all"):
            raise ValueError(f"LanguageConfig.corpus must be 'train' or 'all', got {self.corpus!r}")


@dataclass
class DecoderConfig(JsonConfig):
    """The stand-in for a decoder-only LLM (OPT in BLIP-2, Vicuna in MiniGPT-4): a tiny
    ``transformers`` OPT. Pretrained as the T5 stand-in is, to write a caption after a
    corrupted copy of it (``LanguageConfig``'s corruptions), so that it follows its context:
    trained on captions alone, it ignores a soft prompt, and stage 2 learns nothing. A
    ``chat_fraction`` of its examples come in MiniGPT-4's chat template, as Vicuna knows
    its chat format before MiniGPT-4 meets it."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    ffn_dim: int = 128
    num_attention_heads: int = 4
    max_position_embeddings: int = 64
    chat_fraction: float = 0.5
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        steps=800, batch_size=64, lr=3e-3, warmup_steps=30, weight_decay=0.01))

    def __post_init__(self) -> None:
        self.optim = OptimConfig.from_dict(self.optim) if isinstance(self.optim, dict) else self.optim
        if not 0.0 <= self.chat_fraction <= 1.0:
            raise ValueError(f"DecoderConfig.chat_fraction must be in [0, 1], got {self.chat_fraction!r}")


@dataclass
class StageConfig(JsonConfig):
    """One training stage of the Q-Former."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    related_fraction: float = 0.0  # of each batch drawn as pairs of related captions (train.CaptionBatches)
    # stage 1 only, LAVIS 1.0.2's choices by default (see losses.py): each ITC direction trains
    # its own side; every hard negative keeps a 1e-4 chance (0: LAVIS's main branch)
    itc_both_sides: bool = False
    negative_floor: float = 1e-4

    def __post_init__(self) -> None:
        self.optim = OptimConfig.from_dict(self.optim) if isinstance(self.optim, dict) else self.optim


@dataclass
class ClipConfig(JsonConfig):
    """Chapter 12's clips of moving shapes (``clips.py``): how many frames, how many clips."""

    frames: int = 4  # the path of a move, cell by cell with a pause in the middle: 0, 1, 1, 2
    train_clips: int = 2048  # rendered once; their frames' features are computed once
    test_clips_per_caption: int = 8
    held_out_fraction: float = 0.15  # of all clip captions, seen only in the test split
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.frames != 4:
            raise ValueError(f"ClipConfig.frames must be 4 (a move crosses three cells, pausing in the middle), "
                             f"got {self.frames!r}")
        for name in ("train_clips", "test_clips_per_caption"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ClipConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise ValueError(f"ClipConfig.held_out_fraction must be in (0, 1), got {self.held_out_fraction}")


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
class MiniatureConfig(JsonConfig):
    seed: int = 0
    train_images: int = 8192  # rendered once; the frozen encoder's features are computed once
    data: DataConfig = field(default_factory=DataConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # chapter 10's decoder-only LLM
    qformer: QFormerConfig = field(default_factory=lambda: miniature_qformer(VisionConfig()))
    stage1: StageConfig = field(default_factory=lambda: StageConfig(OptimConfig(steps=400, lr=2e-3),
                                                                    related_fraction=0.5))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(OptimConfig(steps=750, lr=3e-3)))
    # chapter 11's instruction tuning: stage 2's settings on questions, for fewer steps (short
    # answers are learnt sooner than captions, and the chapter trains four models)
    instruct: StageConfig = field(default_factory=lambda: StageConfig(OptimConfig(steps=300, lr=3e-3)))
    # chapter 12's clips, and the training of each of its four video models on their captions
    clips: ClipConfig = field(default_factory=ClipConfig)
    video: StageConfig = field(default_factory=lambda: StageConfig(OptimConfig(steps=300, lr=3e-3)))
    num_beams: int = 5  # LAVIS's default for captions
    max_new_tokens: int = 12  # captions are at most 8 words + </s>
    rerank_k: int = 8  # ITC candidates re-ranked by ITM for recall@1 (LAVIS's k_test)

    def __post_init__(self) -> None:
        for name, kind in (("data", DataConfig), ("vision", VisionConfig), ("language", LanguageConfig),
                           ("decoder", DecoderConfig),
                           ("stage1", StageConfig), ("stage2", StageConfig), ("instruct", StageConfig),
                           ("clips", ClipConfig), ("video", StageConfig),
                           ("qformer", QFormerConfig)):
            if isinstance(getattr(self, name), dict):  # as read from JSON
                setattr(self, name, kind.from_dict(getattr(self, name)))
        if self.qformer.vocab_size != vocab_size():
            raise ValueError(f"qformer.vocab_size must be {vocab_size()} (the tokenizer's), got {self.qformer.vocab_size}")
        if self.qformer.encoder_hidden_size != self.vision.embed_dim:
            raise ValueError(
                f"qformer.encoder_hidden_size must equal vision.embed_dim ({self.vision.embed_dim}), "
                f"got {self.qformer.encoder_hidden_size}"
            )
        if self.vision.image_size != self.data.image_size or self.vision.image_size % self.vision.patch_size:
            raise ValueError(
                f"the encoder must see the data's whole image in whole patches: vision.image_size/patch_size = "
                f"{self.vision.image_size}/{self.vision.patch_size}, data.image_size = {self.data.image_size}"
            )
        if self.train_images < self.stage1.optim.batch_size:
            raise ValueError(
                f"train_images ({self.train_images}) must be >= stage1.optim.batch_size ({self.stage1.optim.batch_size})"
            )

    @classmethod
    def default(cls, **overrides) -> "MiniatureConfig":
        """What ``qformer-lite train`` and the chapters run."""
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides) -> "MiniatureConfig":
        """A run of a few seconds, for tests: it exercises every step, it learns little."""
        vision = VisionConfig(embed_dim=32, depth=1, num_heads=2,
                              optim=OptimConfig(steps=10, batch_size=32, lr=4e-3, warmup_steps=30, weight_decay=0.01))
        base = dict(
            train_images=256,
            vision=vision,
            language=LanguageConfig(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
                                    optim=OptimConfig(steps=10, batch_size=32, lr=3e-3, warmup_steps=30,
                                                      weight_decay=0.01)),
            decoder=DecoderConfig(hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=4,
                                  optim=OptimConfig(steps=10, batch_size=32, lr=3e-3, warmup_steps=30,
                                                    weight_decay=0.01)),
            qformer=miniature_qformer(vision, hidden_size=32, intermediate_size=64, num_query_tokens=4,
                                      image_text_hidden_size=16),
            stage1=StageConfig(OptimConfig(steps=6, batch_size=16, warmup_steps=2)),
            stage2=StageConfig(OptimConfig(steps=6, batch_size=16, warmup_steps=2)),
            instruct=StageConfig(OptimConfig(steps=6, batch_size=16, warmup_steps=2)),
            clips=ClipConfig(train_clips=64, test_clips_per_caption=1),
            video=StageConfig(OptimConfig(steps=6, batch_size=16, warmup_steps=2)),
            num_beams=2,
            rerank_k=4,
        )
        base.update(overrides)
        return cls(**base)
