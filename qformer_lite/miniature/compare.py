"""Chapter 9's experiment: every connector trained on the same stage-2 task, and measured.

The world is the miniature's, seen through a finer ViT (``connector_world``): the same 48-px
images in 6-px patches, 64 patch tokens (and [CLS]) where chapter 6 has 9, enough for
compressing them to matter. Every connector (``connectors``) sits between the same frozen
encoder and the same frozen T5 and trains with the same steps, batches, learning rate and
seed (``config.stage2``) on the same captions; the held-out split measures them all.

``compare`` returns one row per connector: held-out exact match and slot accuracy (partial
credit, ``slot_accuracy``), M (the soft prompt's length), trainable parameters, training
seconds (as measured when it was trained, and cached with it), and the T5 encoder's
multiply-adds and time per batch at that M.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..connectors import (
    ConnectorT5, LinearProjection, MLPProjection, PerceiverResampler, PooledProjection, QFormerProjection,
)
from ..qformer import QFormer
from . import cache
from .checkpoint import query_only
from .config import MiniatureConfig, StageConfig, VisionConfig
from .data import parse_caption
from .evaluate import exact_match, generate_captions
from .standins import StandIns, encode_images, load_standins, test_pool
from .train import cached_stage1, train_stage2
from .trainer import OptimConfig, seeded

KINDS = ("linear", "mlp", "pooled", "resampler", "qformer", "qformer+stage1")
VARIABLE_M = ("pooled", "resampler", "qformer", "qformer+stage1")  # the ones whose M is a choice


def connector_world(**overrides) -> MiniatureConfig:
    """The miniature's images cut into 64 patches of 6 px instead of 9 of 16 (objects now
    straddle patches, as in photographs), the stage-2 budget every connector gets, and a
    stage 1 of 200 steps for the Q-Former that has one."""
    vision = VisionConfig(patch_size=6, optim=OptimConfig(
        steps=200, batch_size=32, lr=4e-3, warmup_steps=30, weight_decay=0.01))
    stage1 = MiniatureConfig().stage1  # chapter 6's, for half its steps: half the chapter's first run
    stage1 = replace(stage1, optim=replace(stage1.optim, steps=stage1.optim.steps // 2))
    base = dict(vision=vision, stage1=stage1, stage2=StageConfig(OptimConfig(steps=400, batch_size=32, lr=3e-3)))
    base.update(overrides)
    return MiniatureConfig(**base)


@dataclass(frozen=True)
class Spec:
    """One connector of the comparison: its kind (one of ``KINDS``) and, where the kind lets it
    choose, its number of output tokens M."""

    kind: str
    num_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind in VARIABLE_M) != (self.num_tokens is not None):
            raise ValueError(f"{self.kind!r} takes num_tokens only if it is one of {VARIABLE_M}; "
                             f"got num_tokens={self.num_tokens!r}")

    @property
    def name(self) -> str:
        return self.kind if self.num_tokens is None else f"{self.kind} M={self.num_tokens}"


def default_specs(token_counts=(4, 16, 36), stage1_tokens: int = 16) -> list[Spec]:
    """The chapter's line-up: linear and MLP (M = 64), pooling, the resampler and the Q-Former
    at each M in ``token_counts``, and the Q-Former after stage 1 at ``stage1_tokens``."""
    specs = [Spec("linear"), Spec("mlp")]
    specs += [Spec(kind, m) for kind in ("pooled", "resampler", "qformer") for m in token_counts]
    return specs + [Spec("qformer+stage1", stage1_tokens)]


def with_queries(config: MiniatureConfig, num_tokens: int) -> MiniatureConfig:
    return replace(config, qformer=replace(config.qformer, num_query_tokens=num_tokens))


def build_connector(spec: Spec, config: MiniatureConfig, stage1_qformer: QFormer | None = None) -> nn.Module:
    """A fresh connector from the encoder's width to T5's (the stage-1 Q-Former's weights for
    ``"qformer+stage1"``), initialised from ``config.seed`` alone."""
    c_in, d_model, m = config.vision.embed_dim, config.language.d_model, spec.num_tokens
    with seeded(config.seed + 2):
        if spec.kind == "linear":
            return LinearProjection(c_in, d_model)
        if spec.kind == "mlp":
            return MLPProjection(c_in, d_model)
        if spec.kind == "pooled":
            return PooledProjection(c_in, d_model, m)
        if spec.kind == "resampler":
            return PerceiverResampler(c_in, d_model, m)
        if spec.kind == "qformer":
            query_path = replace(with_queries(config, m).qformer, use_qformer_text_input=False)
            return QFormerProjection(QFormer(query_path), d_model)
        if stage1_qformer is None or stage1_qformer.config.num_query_tokens != m:
            raise ValueError(f"{spec.name} needs the stage-1 Q-Former with {m} queries")
        return QFormerProjection(query_only(stage1_qformer), d_model)


def slot_accuracy(predictions: list[str], references: list[str]) -> float:
    """Partial credit: the fraction of a caption's slots (colour, shape, place; or colour,
    shape, relation, colour, shape) that the generated caption gets right, averaged over
    the captions. A caption of the wrong kind, or not of this world, scores 0."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    scores = []
    for p, r in zip(predictions, references):
        truth = parse_caption(r)
        try:
            guess = parse_caption(p)
        except ValueError:
            guess = ()
        scores.append(sum(a == b for a, b in zip(guess, truth)) / len(truth) if len(guess) == len(truth) else 0.0)
    return sum(scores) / len(scores)


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def t5_encoder_macs(t5_config, length: int) -> int:
    """Multiply-adds of one T5 encoder pass over ``length`` tokens (one example): per layer the
    q, k, v, o projections, the attention scores and their weighted sum (which grow as
    length squared), and the gated feed-forward (two input maps, one output map)."""
    d, inner, ff = t5_config.d_model, t5_config.num_heads * t5_config.d_kv, t5_config.d_ff
    gated = 3 if t5_config.is_gated_act else 2
    per_layer = 4 * length * d * inner + 2 * length * length * inner + gated * length * d * ff
    return t5_config.num_layers * per_layer


@torch.no_grad()
def t5_encoder_seconds(language_model: nn.Module, length: int, batch_size: int = 64, repeats: int = 7) -> float:
    """Median wall time of the frozen T5 encoder on a batch of ``length`` input vectors."""
    encoder = language_model.get_encoder()
    x = torch.randn(batch_size, length, language_model.config.d_model)
    encoder(inputs_embeds=x)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        encoder(inputs_embeds=x)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def cached_connector(spec: Spec, config: MiniatureConfig, standins: StandIns, features: torch.Tensor,
                     progress: bool = True, use_cache: bool = True) -> tuple[ConnectorT5, dict, bool]:
    """One connector trained on stage 2 (or read from the cache): (model, history, from_cache).
    The history holds the losses and, under ``"seconds"``, the training's wall time."""
    stage1_qformer, stage1_entry, run_config = None, None, config
    if spec.kind == "qformer+stage1":
        run_config = with_queries(config, spec.num_tokens)
        stage1, _, _ = cached_stage1(run_config, standins, features, progress, use_cache=use_cache)
        stage1_qformer, stage1_entry = stage1.qformer, cache.entry_for("stage1", run_config).name
    model = ConnectorT5(standins.image_encoder, build_connector(spec, config, stage1_qformer),
                        standins.language_model)

    def train():
        t = time.perf_counter()
        history = train_stage2(run_config, model, features, standins.train_pool.captions, standins.tokenizer,
                               progress, desc=spec.name)
        return model, history | {"seconds": [time.perf_counter() - t]}

    model, history, hit = cache.cached_training(
        cache.entry_for("connector", run_config, connector=spec.kind, tokens=spec.num_tokens, stage1=stage1_entry),
        model, train,
        use_cache, trainable_only=True)
    return model.eval(), history, hit


def compare(config: MiniatureConfig | None = None, specs: list[Spec] | None = None, progress: bool = True,
            use_cache: bool = True) -> list[dict]:
    """Train (or read) every connector of ``specs`` in ``config``'s world and measure each on
    the held-out split. One dict per connector, in the order of ``specs``."""
    config = config or connector_world()
    specs = default_specs() if specs is None else specs
    standins = load_standins(config, progress=progress, use_cache=use_cache)
    features = encode_images(standins.image_encoder, standins.train_pool)  # (N, 1 + 64, C)
    pool = test_pool(config)
    test_features = encode_images(standins.image_encoder, pool)
    t5 = standins.language_model
    t5_ms: dict[int, float] = {}  # measured once per prompt length, so equal M shows equal time
    rows = []
    for spec in specs:
        model, history, hit = cached_connector(spec, config, standins, features, progress, use_cache)
        captions = generate_captions(model, standins.tokenizer, test_features, num_beams=config.num_beams,
                                     max_new_tokens=config.max_new_tokens)
        m = model.image_prefix(image_embeds=test_features[:1])[0].shape[1]
        length = m + 1  # the soft prompt and the empty prompt's </s>
        if length not in t5_ms:
            t5_ms[length] = 1000 * t5_encoder_seconds(t5, length, config.stage2.optim.batch_size, repeats=15)
        rows.append({
            "connector": spec.name, "kind": spec.kind, "M": m,
            "exact_match": exact_match(captions, pool.captions),
            "slot_accuracy": slot_accuracy(captions, pool.captions),
            "trainable_params": trainable_parameters(model),
            "train_seconds": history["seconds"][0],
            "final_loss": history["loss"][-1],
            "t5_encoder_macs": t5_encoder_macs(t5.config, length),
            "t5_encoder_ms": t5_ms[length],
            "from_cache": hit,
        })
    return rows
