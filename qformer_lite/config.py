"""The Q-Former's hyper-parameters, named as in HuggingFace's ``Blip2QFormerConfig``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

ACTIVATIONS = ("gelu", "gelu_new", "gelu_tanh", "relu", "silu")


class JsonConfig:
    """A dataclass of settings to JSON and back: ``to_dict``/``from_dict``, ``save``/``load``.
    A field the class does not have is refused by name."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class QFormerConfig(JsonConfig):
    """Sizes of one Q-Former. Field names follow ``transformers.Blip2QFormerConfig``.

    The defaults are BLIP-2's (``QFormerConfig.blip2()``): a BERT-base encoder that
    cross-attends, every second layer, to the 1408-wide EVA ViT-g features.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    vocab_size: int = 30523  # bert-base-uncased (30522) + [DEC]
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408  # width of the image features (EVA ViT-g)
    initializer_range: float = 0.02
    num_query_tokens: int = 32
    image_text_hidden_size: int = 256  # shared ITC space (LAVIS embed_dim)
    use_qformer_text_input: bool = True  # False: a query-only Q-Former, as kept by stage 2
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        positive = (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "vocab_size", "encoder_hidden_size", "num_query_tokens",
            "image_text_hidden_size",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"QFormerConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"QFormerConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        freq = self.cross_attention_frequency
        if isinstance(freq, bool) or not isinstance(freq, int) or freq < 1:
            raise ValueError(f"QFormerConfig.cross_attention_frequency must be an integer >= 1, got {freq!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"QFormerConfig.{name} must be in [0, 1), got {p!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"QFormerConfig.hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if not self.layer_norm_eps > 0 or not self.initializer_range > 0:
            raise ValueError("QFormerConfig.layer_norm_eps and initializer_range must be > 0")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"QFormerConfig.pad_token_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_token_id}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def has_cross_attention(self, layer_index: int) -> bool:
        """BLIP-2 puts cross-attention in layers 0, f, 2f, ... (f = cross_attention_frequency)."""
        return layer_index % self.cross_attention_frequency == 0

    @classmethod
    def blip2(cls, **overrides) -> "QFormerConfig":
        """The paper's Q-Former: BERT-base, 32 queries, cross-attention to ViT-g every 2nd layer."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> "QFormerConfig":
        """A CPU-sized Q-Former with BLIP-2's structure, for tests and the chapters."""
        base = dict(
            hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, vocab_size=100, encoder_hidden_size=48,
            num_query_tokens=8, image_text_hidden_size=32,
        )
        base.update(overrides)
        return cls(**base)

