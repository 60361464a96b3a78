"""Chapter 9's experiment: the 64-patch world, the connectors' line-up, the cost model, and
``compare`` end to end on a seconds-long configuration."""

from dataclasses import replace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from qformer_lite.miniature import cache
from qformer_lite.miniature.compare import (
    Spec, build_connector, compare, connector_world, default_specs, slot_accuracy, t5_encoder_macs,
    trainable_parameters,
)
from qformer_lite.miniature.config import MiniatureConfig, VisionConfig
from qformer_lite.miniature.data import Scene, ShapeObject
from qformer_lite.miniature.standins import CaptionTokenizer, ImageEncoder, build_t5, patch_labels
from qformer_lite.miniature.trainer import OptimConfig


def quick_world(**overrides) -> MiniatureConfig:
    vision = VisionConfig(patch_size=6, embed_dim=32, depth=1, num_heads=2,
                          optim=OptimConfig(steps=10, batch_size=32, lr=4e-3, warmup_steps=5))
    return MiniatureConfig.quick(vision=vision, **overrides)


def test_the_connector_world_cuts_the_same_images_into_64_patches():
    config = connector_world()
    assert config.data == MiniatureConfig.default().data  # the same images and captions
    assert config.vision.num_patches == 64 and config.vision.patches_per_side == 8
    tokens = ImageEncoder(config.vision)(torch.zeros(2, 3, 48, 48))
    assert tokens.shape == (2, 1 + 64, config.vision.embed_dim)


def test_the_connector_worlds_stage_1_is_chapter_6s_for_half_the_steps():
    ours, chapter6 = connector_world().stage1, MiniatureConfig.default().stage1
    assert ours.optim.steps == chapter6.optim.steps // 2
    assert ours.optim.batch_size == chapter6.optim.batch_size and ours.optim.lr == chapter6.optim.lr
    assert ours.related_fraction == chapter6.related_fraction


def test_each_patch_is_labelled_by_the_cell_under_its_centre():
    scene = Scene((ShapeObject("red", "circle", 0, 2), ShapeObject("blue", "cross", 1, 2)))
    colour, shape = (t.view(8, 8) for t in patch_labels([scene], patches_per_side=8))
    # 6-px patches over 16-px cells: rows 0-2 lie in cell row 0, rows 3-4 in row 1, 5-7 in row 2
    assert (colour[:3, 5:] == 1).all() and (colour[3:5, 5:] == 3).all()  # red is label 1, blue 3
    assert colour.count_nonzero() == 9 + 6 and (shape[3:5, 5:] == 4).all()  # cross is shape 4
    one, _ = patch_labels([scene])  # one patch per cell: the cell itself
    assert one.view(3, 3).tolist() == [[0, 0, 1], [0, 0, 3], [0, 0, 0]]


def test_an_image_not_cut_into_whole_patches_is_refused():
    with pytest.raises(ValueError, match="whole patches"):
        MiniatureConfig(vision=VisionConfig(patch_size=5))


def test_the_language_model_is_shared_with_the_default_world():
    # T5 reads captions only: a finer image grid must not retrain it
    assert cache.entry_for("language-model", connector_world()) == cache.entry_for(
        "language-model", MiniatureConfig.default())
    assert cache.entry_for("image-encoder", connector_world()) != cache.entry_for(
        "image-encoder", MiniatureConfig.default())


def test_specs_name_their_m_and_refuse_a_missing_or_needless_one():
    specs = default_specs()
    assert [s.name for s in specs][:3] == ["linear", "mlp", "pooled M=4"]
    assert {s.num_tokens for s in specs if s.kind == "resampler"} == {4, 16, 36}
    with pytest.raises(ValueError, match="one of"):
        Spec("conv")
    with pytest.raises(ValueError, match="num_tokens"):
        Spec("pooled")
    with pytest.raises(ValueError, match="num_tokens"):
        Spec("linear", 16)
    with pytest.raises(ValueError, match="stage-1 Q-Former"):
        build_connector(Spec("qformer+stage1", 16), connector_world())


@pytest.mark.parametrize("kind, m, expected", [("linear", None, 64), ("mlp", None, 64), ("pooled", 16, 16),
                                               ("pooled", 36, 36), ("resampler", 4, 4), ("qformer", 36, 36)])
def test_each_connector_gives_its_m(kind, m, expected):
    config = connector_world()
    connector = build_connector(Spec(kind, m), config)
    out = connector(torch.randn(3, 65, config.vision.embed_dim))
    assert out.shape == (3, expected, config.language.d_model)
    assert trainable_parameters(connector) == sum(p.numel() for p in connector.parameters())


@pytest.mark.parametrize("length", [5, 17, 65])
def test_the_encoder_cost_formula_counts_what_torch_counts(length):
    config = MiniatureConfig.default()
    t5 = build_t5(config.language, CaptionTokenizer()).eval()
    # the math form of attention: PyTorch's counter does not see inside the fused CPU kernel
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        t5.get_encoder()(inputs_embeds=torch.randn(1, length, config.language.d_model))
    assert counter.get_total_flops() == 2 * t5_encoder_macs(t5.config, length)


def test_slot_accuracy_gives_partial_credit_and_none_to_a_caption_of_another_kind():
    truth = ["a red circle at the top", "a red circle left of a blue square"]
    assert slot_accuracy(truth, truth) == 1.0
    guesses = ["a red square at the top",  # 2 of 3 slots
               "a blue square left of a red circle"]  # the objects swapped: relation only, 1 of 5
    assert slot_accuracy(guesses, truth) == pytest.approx((2 / 3 + 1 / 5) / 2)
    assert slot_accuracy(["a red circle left of a blue square", "circle circle"], truth) == 0.0
    with pytest.raises(ValueError, match="2 references"):
        slot_accuracy(["a"], truth)


def test_compare_measures_every_connector_and_reads_them_back(module_cache):
    config = quick_world()
    specs = [Spec("linear"), Spec("pooled", 4), Spec("resampler", 4), Spec("qformer+stage1", 4)]
    rows = compare(config, specs, progress=False)
    assert [r["connector"] for r in rows] == ["linear", "pooled M=4", "resampler M=4", "qformer+stage1 M=4"]
    assert [r["M"] for r in rows] == [64, 4, 4, 4]
    for r in rows:
        assert 0.0 <= r["exact_match"] <= r["slot_accuracy"] <= 1.0 and r["train_seconds"] > 0
        assert not r["from_cache"]
        assert r["t5_encoder_macs"] == t5_encoder_macs(build_t5(config.language, CaptionTokenizer()).config,
                                                       r["M"] + 1)
    assert rows[0]["t5_encoder_macs"] > rows[1]["t5_encoder_macs"]  # 65 positions against 5
    assert rows[1]["t5_encoder_ms"] == rows[2]["t5_encoder_ms"] == rows[3]["t5_encoder_ms"]  # one M, one timing
    again = compare(config, specs, progress=False)
    assert all(r["from_cache"] for r in again)
    for a, b in zip(rows, again):  # the same weights: the same captions, the recorded seconds
        assert (a["exact_match"], a["slot_accuracy"], a["train_seconds"], a["final_loss"]) == (
            b["exact_match"], b["slot_accuracy"], b["train_seconds"], b["final_loss"])


def test_only_the_connector_with_a_stage_1_is_retrained_when_stage_1_changes(module_cache):
    config = quick_world()
    longer = replace(config, stage1=replace(config.stage1, optim=replace(config.stage1.optim, steps=7)))
    compare(config, [Spec("linear"), Spec("qformer+stage1", 4)], progress=False)
    rows = compare(longer, [Spec("linear"), Spec("qformer+stage1", 4)], progress=False)
    assert [r["from_cache"] for r in rows] == [True, False]
