"""qformer_lite: BLIP-2's Q-Former, one small module per idea, equal to the reference implementations."""

from .attention import MultiHeadAttention, attention_from_scratch
from .config import QFormerConfig
from .masks import MODES, build_attention_mask
from .pretraining import QFormerPretraining
from .qformer import QFormer, QFormerOutput
from .queries import LearnableQueries

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "LearnableQueries",
    "MultiHeadAttention",
    "QFormer",
    "QFormerConfig",
    "QFormerOutput",
    "QFormerPretraining",
    "attention_from_scratch",
    "build_attention_mask",
]
