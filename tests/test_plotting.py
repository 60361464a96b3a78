"""The book's figures: each helper draws what its chapter says it draws."""

from __future__ import annotations

import inspect
import re
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")  # no display in the test process; notebooks keep their inline backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from qformer_lite import QFormerConfig  # noqa: E402
from qformer_lite.book import plotting  # noqa: E402
from qformer_lite.masks import build_attention_mask  # noqa: E402
from qformer_lite.queries import vit_tokens  # noqa: E402
from qformer_lite.testing import synthetic_image  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def texts(fig: Figure) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts + [ax.title] + ax.get_xticklabels()
                    + ax.get_yticklabels())


def test_vit_tokens():
    assert vit_tokens(224) == 257
    assert vit_tokens(364) == 677
    assert vit_tokens(224, cls_token=False) == 256


def test_the_data_helpers_live_with_their_ideas_not_with_the_figures():
    import qformer_lite.queries
    import qformer_lite.testing

    assert qformer_lite.queries.vit_tokens is vit_tokens  # chapter 1's token count
    assert qformer_lite.testing.synthetic_image is synthetic_image  # a stand-in input
    assert not hasattr(plotting, "vit_tokens") and not hasattr(plotting, "synthetic_image")
    assert "vit_tokens" not in plotting.__all__ and "synthetic_image" not in plotting.__all__


def test_token_budget_labels_the_counts():
    fig = plotting.token_budget()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert "257" in texts(fig) and "677" in texts(fig) and "32" in texts(fig)
    # only the resolutions the chapter explains: 224 px (pre-training) and 364 px (captioning)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["224 px", "364 px"]


def test_value_histogram_and_permutation_figure():
    assert isinstance(plotting.value_histogram(torch.randn(1000) * 0.02, std=0.02), Figure)
    perm = torch.tensor([2, 0, 1])
    fig = plotting.permutation_figure(torch.eye(3)[perm], perm)
    assert len(fig.axes) == 2  # heatmap and colour bar


def test_softmax_saturation_and_heatmaps():
    assert isinstance(plotting.softmax_saturation([16, 64], [0.3, 0.3], [0.6, 0.9]), Figure)
    probs = torch.rand(5, 4, 6).softmax(-1)
    fig = plotting.attention_heatmaps(probs, titles=[f"head {i}" for i in range(5)], cols=3, row_split=2)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 5
    assert plotting.attention_heatmaps(probs[0]).axes  # a single (L_q, L_k) map works too


def test_synthetic_image_is_a_deterministic_rgb_scene():
    img = synthetic_image()
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    assert np.array_equal(img, synthetic_image())
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 8  # several regions, not a flat colour


def test_patch_grid():
    fig = plotting.patch_grid(synthetic_image())
    assert "16×16 = 256 patches" in fig.axes[0].get_title()


def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_title()]


def colour_bars(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax not in panels(fig) and ax.get_ylabel()]


def test_patch_attention_titles_and_one_colour_bar():
    img = synthetic_image()
    attention = torch.rand(3, 257).softmax(-1)
    fig = plotting.patch_attention(img, attention, titles=["a", "b", "c"], cols=2)
    titles = [ax.get_title() for ax in panels(fig)]
    assert len(titles) == 3 and all("[CLS] " in t and "max " in t for t in titles)
    bars = colour_bars(fig)
    assert len(bars) == 1 and bars[0].get_ylabel() == "weight ÷ the panel's max"
    fig = plotting.patch_attention(img, attention, scale="shared")
    assert [ax.get_ylabel() for ax in colour_bars(fig)] == ["attention weight"]
    assert all("max" not in ax.get_title() for ax in panels(fig))  # one scale: the bar gives it
    fig = plotting.patch_attention(img, torch.rand(256), has_cls=False, swatches=[[(1, 0, 0), (0.5, 0.2, 0.1)]],
                                   swatch_labels=["asked", "read"])
    assert fig.axes[0].get_title().startswith("query 0")
    assert len(fig.axes[0].patches) == 2
    assert [t.get_text() for t in fig.axes[0].texts] == ["asked", "read"]
    fig = plotting.patch_attention(img, torch.rand(2, 257), colorbar=False)
    assert len(fig.axes) == 2 and all("max" not in ax.get_title() for ax in fig.axes)


def test_patch_attention_can_show_the_image_first_in_its_own_colours():
    img = synthetic_image()
    fig = plotting.patch_attention(img, torch.rand(2, 257).softmax(-1), titles=["a", "b"], cols=3,
                                   scale="shared", image_title="the image")
    shown = panels(fig)
    assert [ax.get_title().split("\n")[0] for ax in shown] == ["the image", "a", "b"]
    first = shown[0].get_images()
    assert len(first) == 1 and np.array_equal(first[0].get_array(), img)  # the pixels, not a heat map
    assert all(len(ax.get_images()) == 2 for ax in shown[1:])  # heat map + outlines


@pytest.mark.parametrize("m, cols, colorbar", [(4, 4, True), (4, 2, True), (32, 8, False), (32, 8, True), (1, 4, True)])
def test_patch_attention_fits_the_page_with_readable_titles(m, cols, colorbar):
    fig = plotting.patch_attention(synthetic_image(), torch.rand(m, 257).softmax(-1), cols=cols,
                                   colorbar=colorbar, suptitle="where the queries look")
    width, height = fig.get_size_inches()
    assert width <= 8.0 and height <= 10.0
    texts_ = [ax.title for ax in fig.axes] + [t for ax in fig.axes for t in ax.texts] + [fig._suptitle]
    assert all(t.get_fontsize() >= 9 for t in texts_ if t.get_text()), [t.get_fontsize() for t in texts_]
    # nothing leaves the figure (the saved PNG would grow past the page)
    fig.canvas.draw()
    inside = fig.get_tightbbox(fig.canvas.get_renderer())
    assert inside.width <= width + 0.05 and inside.height <= height + 0.05


def pixel(fig: Figure, ax, x: float, y: float) -> np.ndarray:
    """The RGB colour drawn at data point (x, y) of ``ax``."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    px, py = ax.transData.transform((x, y))
    return rgba[int(rgba.shape[0] - py), int(px), :3] / 255.0


@pytest.mark.parametrize("scale", ["panel", "shared"])
def test_patch_attention_draws_the_colours_its_colour_bar_gives(scale):
    # a flat grey image has no outlines: every pixel is heat
    image = np.full((56, 56, 3), 128, dtype=np.uint8)
    torch.manual_seed(0)
    attention = torch.rand(2, 17).softmax(-1)
    fig = plotting.patch_attention(image, attention, patch_size=14, cols=2, scale=scale)
    bar = colour_bars(fig)[0]
    heat = panels(fig)[0].images[0]
    assert heat.get_alpha() in (None, 1.0)
    cmap, norm = heat.get_cmap(), heat.norm
    weights = attention[:, 1:].reshape(2, 4, 4).numpy()
    top = weights.max() if scale == "shared" else weights[0].max()
    assert norm.vmax == pytest.approx(top if scale == "shared" else 1.0)
    for row, col in [(0, 0), (1, 2), (3, 3)]:
        w = weights[0, row, col]
        value = w if scale == "shared" else w / top
        expected = np.asarray(cmap(norm(value)))[:3]
        got = pixel(fig, panels(fig)[0], col * 14 + 7, row * 14 + 7)
        assert np.abs(got - expected).max() < 2 / 255, (got, expected)
        # the colour bar shows that colour at that value
        assert bar.get_ylim() == pytest.approx((0.0, norm.vmax))
        inside = min(value, 0.97 * norm.vmax)  # the bar's top edge is its frame
        got = pixel(fig, bar, 0.5, inside)
        assert np.abs(got - np.asarray(cmap(norm(inside)))[:3]).max() < 6 / 255, (got, inside)


def test_patch_attention_outlines_the_scene_and_rejects_bad_input():
    img = synthetic_image()
    edges = plotting.region_outline(img)
    assert edges.shape == img.shape[:2] and 0.005 < edges.mean() < 0.08
    assert not plotting.region_outline(np.full((56, 56, 3), 200, dtype=np.uint8)).any()
    with pytest.raises(ValueError, match=r"\(M, 257\).*got shape \(2, 256\)"):
        plotting.patch_attention(img, torch.rand(2, 256))
    with pytest.raises(ValueError, match="scale must be 'panel' or 'shared', got 'global'"):
        plotting.patch_attention(img, torch.rand(2, 257), scale="global")


def test_stack_diagram_draws_six_cross_attention_boxes_for_blip2():
    cfg = QFormerConfig.blip2()
    fig = plotting.stack_diagram(cfg)
    filled = [p for p in fig.axes[0].patches if p.get_fill()]
    assert len(filled) == 12 * 3 + 6  # self-attention, two FFNs everywhere; cross-attention in 6
    fig = plotting.stack_diagram(QFormerConfig.blip2(use_qformer_text_input=False))
    assert len([p for p in fig.axes[0].patches if p.get_fill()]) == 12 * 2 + 6


def test_parameter_bars_totals():
    rows = [("a", 2_000_000), ("b", 3_000_000)]
    fig = plotting.parameter_bars(rows, {"only a": ["a"], "both": ["a", "b"]})
    assert "2.0M" in texts(fig) and "5.0M" in texts(fig)


def test_mask_grid_labels_queries_text_and_padding():
    text_mask = torch.tensor([[1, 1, 0]])
    mask = build_attention_mask("itg", 2, text_mask)
    fig = plotting.mask_grid(mask[0], 2, text_mask[0], title="ITG")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["q0", "q1", "t0", "t1", "pad"]
    words = texts(fig)
    assert "queries" in words and "text" in words
    image = fig.axes[0].images[0].get_array()
    assert np.array_equal(np.asarray(image).astype(bool), mask[0].numpy())


def test_mask_modes_and_change_map():
    text_mask = torch.tensor([[1, 1, 1, 0]])
    masks = {m: build_attention_mask(m, 3, text_mask)[0] for m in ("itc", "itm", "itg")}
    fig = plotting.mask_modes(masks, 3, text_mask[0])
    assert len(fig.axes) == 3
    fig = plotting.change_map({"ITM": torch.rand(7), "ITG": torch.zeros(7)}, num_queries=3, changed_position=5)
    assert len(fig.axes) == 2


def test_the_figures_of_chapters_1_to_5_are_at_most_a_page_wide():
    text_mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    masks = {m: build_attention_mask(m, 4, text_mask)[0] for m in ("itc", "itm", "itg")}
    figures = [
        plotting.token_budget(),
        plotting.stack_diagram(QFormerConfig.blip2()),
        plotting.mask_modes(masks, 4, text_mask[0]),
        plotting.change_map({"ITM": torch.rand(15), "ITG": torch.rand(15)}, num_queries=8, changed_position=11),
        plotting.parameter_bars([("a", 2_000_000), ("b", 3_000_000)], {"a": ["a"], "both": ["a", "b"]}),
        plotting.attention_heatmaps(torch.rand(4, 8, 8).softmax(-1), cols=2),
    ]
    for fig in figures:
        assert fig.get_size_inches()[0] <= plotting.PAGE_WIDTH + 1e-9, fig.get_size_inches()


def test_mask_explorer_builds_a_widget():
    widgets = pytest.importorskip("ipywidgets")
    explorer = plotting.mask_explorer()
    assert isinstance(explorer, widgets.interactive)
    names = {w.description for w in explorer.children if hasattr(w, "description")}
    assert {"mode", "Q", "T", "padding"} <= names


def pool(n: int = 6, size: int = 24):
    """A stand-in for the miniature's image pool: uint8 (N, H, W, 3) images and captions."""
    images = torch.from_numpy(np.stack([synthetic_image(size)] * n))
    return SimpleNamespace(images=images, captions=[f"caption {i}" for i in range(n)])


def test_caption_grid_colours_each_caption_by_whether_it_is_right():
    p = pool()
    generated = list(p.captions)
    generated[1] = "a wrong caption"
    generated[2] = ""
    fig = plotting.caption_grid(p, generated, n=4, columns=2)
    assert tuple(fig.get_size_inches()) == pytest.approx((plotting.PAGE_WIDTH, 2 * plotting.PAGE_WIDTH / 2 * 1.3))
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["caption 0", "a wrong caption", "(empty)", "caption 3"]
    assert [ax.title.get_color() for ax in shown] == [plotting.RIGHT_COLOR, plotting.WRONG_COLOR,
                                                      plotting.WRONG_COLOR, plotting.RIGHT_COLOR]
    assert np.array_equal(shown[0].images[0].get_array(), p.images[0].numpy())  # uint8 as it is
    fig = plotting.caption_grid(p, p.captions, n=3, columns=4, start=3)  # every image from 3 on
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["caption 3", "caption 4", "caption 5"]


def test_stage1_and_stage2_losses_draw_each_loss_in_its_parts_colour():
    assert plotting.LOSS_COLORS == {"loss": plotting.TOTAL_COLOR, "itc": plotting.QUERY_COLOR,
                                    "itm": plotting.IMAGE_COLOR, "itg": plotting.TEXT_COLOR}
    steps = 50
    history = {k: list(np.linspace(3, 1, steps)) for k in ("loss", "itc", "itm", "itg")}
    fig = plotting.stage1_losses(history, window=10)
    assert tuple(fig.get_size_inches()) == pytest.approx((plotting.PAGE_WIDTH, 3.0))
    three, total = fig.axes
    assert [line.get_label() for line in three.lines] == ["ITC", "ITM", "ITG"]
    assert [line.get_color() for line in three.lines] == [plotting.QUERY_COLOR, plotting.IMAGE_COLOR,
                                                          plotting.TEXT_COLOR]
    assert total.lines[0].get_color() == plotting.TOTAL_COLOR
    assert len(total.lines[0].get_ydata()) == steps - 10 + 1  # a moving average over 10 steps
    fig = plotting.stage2_losses(history)
    assert len(fig.axes[0].lines) == 1 and fig.axes[0].get_legend() is None
    fig = plotting.stage2_losses({"a": history, "b": {"loss": [2.0] * 5}})
    assert [line.get_label() for line in fig.axes[0].lines] == ["a", "b"]
    assert fig.axes[0].get_yscale() == "log"


def test_recall_bars():
    fig = plotting.recall_bars({"untrained": 0.1234, "trained": 0.5})
    assert "12.3%" in texts(fig) and "50.0%" in texts(fig)
    assert fig.axes[0].patches[0].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(plotting.QUERY_COLOR))


def test_hard_negatives_shows_each_text_its_image_and_the_drawn_negative():
    images = torch.rand(4, 3, 24, 24) * 2 - 1  # the image encoder's input: (3, H, W) in [-1, 1]
    captions = [f"caption {i}" for i in range(4)]
    sim = torch.zeros(4, 4)
    fig = plotting.hard_negatives(images, captions, sim, torch.tensor([1, 0, 3, 2]), rows=2)
    assert tuple(fig.get_size_inches()) == pytest.approx((5.4, 4.8))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["caption 0", "drawn negative, p = 0.33\ncaption 1",
                      "caption 1", "drawn negative, p = 0.33\ncaption 0"]
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape == (24, 24, 3) and 0 <= shown.min() and shown.max() <= 1
    assert np.allclose(shown, (images[0].permute(1, 2, 0).numpy() + 1) / 2)


def test_captioned_images_wraps_each_caption_under_its_image():
    images = [synthetic_image(32)] * 3
    fig = plotting.captioned_images(images, ["a " * 40, "", "short"], columns=4)
    panel = plotting.PAGE_WIDTH / 3  # three images: three columns
    assert tuple(fig.get_size_inches()) == pytest.approx((plotting.PAGE_WIDTH, panel + 0.9))
    captions = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert captions[1:] == ["(empty)", "short"] and len(captions[0].splitlines()) > 1
    assert fig.axes[0].images[0].get_interpolation() == "nearest"  # a small image: its pixels
    fig = plotting.captioned_images([synthetic_image()], ["a house"], title="one")
    assert fig.axes[0].images[0].get_interpolation() == "antialiased" and fig._suptitle.get_text() == "one"


def test_connector_tradeoff_draws_a_line_per_kind_and_a_point_for_a_single_m():
    rows = [{"kind": "linear", "M": 64, "exact_match": 0.9, "slot_accuracy": 0.95, "t5_encoder_ms": 3.0}]
    rows += [{"kind": "pooled", "M": m, "exact_match": e, "slot_accuracy": e + 0.02, "t5_encoder_ms": m / 30}
             for m, e in ((16, 0.8), (4, 0.5), (36, 0.9))]
    fig = plotting.connector_tradeoff(rows)
    accuracy, cost = fig.axes
    lines = {line.get_label(): line for line in accuracy.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"linear", "pooled"}
    assert list(lines["pooled"].get_xdata()) == [4, 16, 36]  # sorted by M
    assert list(lines["pooled"].get_ydata()) == pytest.approx([0.52, 0.82, 0.92])  # slot accuracy, solid
    exact = [line for line in accuracy.get_lines() if line.get_linestyle() == "--"]
    assert [list(line.get_ydata()) for line in exact] == [[0.9], [0.5, 0.8, 0.9]]
    assert lines["pooled"].get_color() == plotting.CONNECTOR_COLORS["pooled"]
    assert [list(line.get_ydata()) for line in cost.get_lines()][0] == [3.0]
    assert fig.get_size_inches()[0] == pytest.approx(plotting.PAGE_WIDTH)


def test_sequence_strips_draw_one_cell_per_position_and_refuse_an_unknown_kind():
    rows = {"left-padded": [("", "pad"), ("q1", "query"), ("</s>", "text"), ("red", "target")],
            "alone": [("q1", "query"), ("</s>", "text")]}
    fig = plotting.sequence_strips(rows, title="t")
    ax = fig.axes[0]
    assert len(ax.patches) == 6
    outlined = [p for p in ax.patches if p.get_linewidth() > 1]
    assert len(outlined) == 1  # the one target
    assert fig.get_size_inches()[0] == pytest.approx(plotting.PAGE_WIDTH)
    with pytest.raises(ValueError, match="kind must be one of"):
        plotting.sequence_strips({"x": [("a", "word")]})


def test_decoder_run_bars_label_each_run_with_its_figures():
    rows = [{"run": "T5", "kind": "blip2-t5", "exact_match": 0.968, "trainable_params": 374_336},
            {"run": "MiniGPT-4", "kind": "minigpt4", "exact_match": 0.5, "trainable_params": 8_256}]
    fig = plotting.decoder_run_bars(rows)
    exact, params = fig.axes
    assert [p.get_width() for p in exact.patches] == [0.968, 0.5]
    assert [t.get_text() for t in exact.texts] == [" 96.8%", " 50.0%"]
    assert [t.get_text() for t in params.texts] == [" 374,336", " 8,256"] and params.get_xscale() == "log"
    assert exact.patches[1].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(
        plotting.DECODER_RUN_COLORS["minigpt4"]))


def test_accuracy_by_question_draws_a_bar_per_run_and_type_and_hatches_the_fewer_queries():
    rows = [{"kind": "blip2", "queries": 8, "accuracy": {"colour": 0.7, "relation": 0.6, "all": 0.65}},
            {"kind": "instructblip", "queries": 1, "accuracy": {"colour": 0.99, "all": 0.96}}]
    fig = plotting.accuracy_by_question(rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["colour", "relation", "all"]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:3] == [0.7, 0.6, 0.65] and heights[3] == 0.99 and np.isnan(heights[4])
    assert ax.patches[0].get_hatch() in ("", None) and ax.patches[3].get_hatch() == "//"


def test_the_module_lists_its_figures_chapter_by_chapter():
    source = inspect.getsource(plotting)
    defined = [name for name, value in vars(plotting).items()
               if not name.startswith("_") and not inspect.ismodule(value)
               and getattr(value, "__module__", plotting.__name__) == plotting.__name__]
    assert sorted(plotting.__all__) == sorted(defined)  # every public name, and nothing imported
    figures = [name for name in plotting.__all__ if inspect.isfunction(getattr(plotting, name))]
    assert figures == sorted(figures, key=lambda name: source.index(f"\ndef {name}("))  # book order
    assert re.findall(r"^# --- chapter (\d+)", source, flags=re.MULTILINE) == [str(c) for c in range(1, 13)]
    assert not [name for name in figures if name.startswith("plot_")]  # figures are named as nouns


def test_clip_strips_draw_a_row_per_clip_and_colour_the_captions():
    from qformer_lite.miniature import clips
    from qformer_lite.miniature.config import MiniatureConfig

    pool = clips.clip_pool("test", MiniatureConfig.quick())
    fig = plotting.clip_strips(pool, [0, 1])
    assert len(fig.axes) == 2 * 4 and fig.axes[0].get_xlabel() == "frame 0"
    assert fig.axes[0].get_ylabel() and fig.axes[4].get_ylabel()
    guesses = [pool.captions[0], clips.reversed_caption(pool.captions[1])]
    fig = plotting.clip_strips(pool, [0, 1], captions=guesses + pool.captions[2:])
    assert fig.axes[0].yaxis.label.get_color() == plotting.RIGHT_COLOR
    assert fig.axes[4].yaxis.label.get_color() == plotting.WRONG_COLOR


def test_video_scores_draw_a_bar_per_model_and_score():
    rows = [{"kind": k, "tokens": t, "scores": {"exact": e, "direction": d, "change": c, "reversed": r}}
            for k, t, e, d, c, r in [("video-qformer", 8, 0.9, 0.8, 1.0, 0.05), ("average", 8, 0.0, 0.0, 0.1, 0.7)]]
    ax = plotting.video_scores(rows).axes[0]
    assert [p.get_height() for p in ax.patches] == [0.9, 0.8, 1.0, 0.05, 0.0, 0.0, 0.1, 0.7]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["video-qformer (8 tokens)", "average (8 tokens)"]
