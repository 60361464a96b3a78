"""The book's figures, chapter by chapter, kept here so that the chapters stay about the idea.

Every function draws one static matplotlib figure and returns it (``fig = ...`` in a
notebook shows it once); chapters 6 and 7's figures are also what ``qformer-lite train``
saves. Colours are the same everywhere: queries blue, text orange, image green, padding
grey, and each stage-1 loss takes the colour of a part: ITC the queries', ITM the image's,
ITG the text's.
"""

from __future__ import annotations

import math
import textwrap
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import PercentFormatter

from .. import queries

QUERY_COLOR = "#1f77b4"
TEXT_COLOR = "#ff7f0e"
IMAGE_COLOR = "#2ca02c"
PAD_COLOR = "#9e9e9e"
SEEN_COLOR = "#2b5d8a"
HIDDEN_COLOR = "#f2f2f2"
TOTAL_COLOR = "#333333"  # a sum of losses
RIGHT_COLOR, WRONG_COLOR = "#1a7f37", "#cf222e"  # a caption equal to the true one, or not
LOSS_COLORS = {"loss": TOTAL_COLOR, "itc": QUERY_COLOR, "itm": IMAGE_COLOR, "itg": TEXT_COLOR}
# chapter 9: BLIP-2's connector in the queries' blue, the others in colours of their own
CONNECTOR_COLORS = {"linear": "#8c564b", "mlp": "#e377c2", "pooled": IMAGE_COLOR, "resampler": "#9467bd",
                    "qformer": "#17becf", "qformer+stage1": QUERY_COLOR}
# inches: the book's content column is about 800 px, and matplotlib draws 100 px per inch
PAGE_WIDTH = 7.8

__all__ = [
    # the book's colours and width
    "QUERY_COLOR",
    "TEXT_COLOR",
    "IMAGE_COLOR",
    "PAD_COLOR",
    "SEEN_COLOR",
    "HIDDEN_COLOR",
    "TOTAL_COLOR",
    "RIGHT_COLOR",
    "WRONG_COLOR",
    "LOSS_COLORS",
    "PAGE_WIDTH",
    # chapter 1
    "token_budget",
    "value_histogram",
    "permutation_figure",
    # chapter 2
    "softmax_saturation",
    "attention_heatmaps",
    # chapter 3
    "patch_grid",
    "region_outline",
    "patch_attention",
    # chapter 4
    "stack_diagram",
    "parameter_bars",
    # chapter 5
    "mask_grid",
    "mask_modes",
    "mask_explorer",
    "change_map",
    # chapter 6
    "caption_grid",
    "stage1_losses",
    "recall_bars",
    "hard_negatives",
    # chapter 7
    "stage2_losses",
    # chapter 8
    "captioned_images",
    # chapter 9
    "CONNECTOR_COLORS",
    "connector_tradeoff",
    # chapter 10
    "DECODER_RUN_COLORS",
    "sequence_strips",
    "decoder_run_bars",
    # chapter 11
    "INSTRUCT_COLORS",
    "accuracy_by_question",
    # chapter 12
    "VIDEO_COLORS",
    "clip_strips",
    "video_scores",
]


# --- shared by several chapters --------------------------------------------------------------

def _to_numpy(x) -> np.ndarray:
    """A tensor (on any device) or an array-like as a numpy array; floating tensors as float32,
    other tensors (uint8 images, bool masks) in their own dtype."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _image(x) -> np.ndarray:
    """An image as ``imshow`` takes it: (H, W, 3) as it is (uint8, or floats in [0, 1]); a float
    (3, H, W) in [-1, 1], the image encoder's input, as (H, W, 3) in [0, 1]."""
    a = _to_numpy(x)
    if a.ndim == 3 and a.shape[0] == 3:
        a = np.clip((a.transpose(1, 2, 0) + 1) / 2, 0, 1)
    return a


def _image_grid(n: int, columns: int, row_height: float):
    """A page-wide grid of ``columns`` panels a row for ``n`` images, every axis off."""
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(PAGE_WIDTH, rows * row_height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _wrapped(caption: str, width: int) -> str:
    """A caption in lines of at most ``width`` characters; "(empty)" for an empty one."""
    return "\n".join(textwrap.wrap(caption or "(empty)", width))


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    """The moving average over ``window`` steps (the values as they are when fewer)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) < window:
        return v
    kernel = np.ones(window) / window
    return np.convolve(v, kernel, mode="valid")


# --- chapter 1 -------------------------------------------------------------------------------

def token_budget(
    image_sizes: Sequence[int] = (224, 364),
    patch_size: int = 14,
    num_queries: int = 32,
    max_images: int = 16,
):
    """Tokens handed to the LLM: every patch feature of a ViT-g/14 versus 32 queries.

    Left: one image at several resolutions. Right: several images (or video frames) at 224 px.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.4))
    labels = [f"{s} px" for s in image_sizes]
    patches = [queries.vit_tokens(s, patch_size) for s in image_sizes]
    x = np.arange(len(image_sizes))
    bars = left.bar(x - 0.2, patches, 0.4, color=IMAGE_COLOR, label="all patch features + [CLS]")
    query_bars = left.bar(x + 0.2, [num_queries] * len(image_sizes), 0.4, color=QUERY_COLOR,
                          label=f"{num_queries} queries")
    for bar in list(bars) + list(query_bars):
        n = int(bar.get_height())
        left.text(bar.get_x() + bar.get_width() / 2, n, f"{n}", ha="center", va="bottom", fontsize=9)
    left.set_xticks(x, labels)
    left.set_ylim(0, max(patches) * 1.35)  # room for the legend above the bars
    left.set_ylabel("tokens per image")
    left.set_title(f"One image (ViT patch {patch_size})")
    left.legend(frameon=False, loc="upper left")

    frames = np.arange(1, max_images + 1)
    per_image = queries.vit_tokens(image_sizes[0], patch_size)
    right.plot(frames, frames * per_image, "o-", color=IMAGE_COLOR, label=f"{per_image} tokens per image")
    right.plot(frames, frames * num_queries, "o-", color=QUERY_COLOR, label=f"{num_queries} queries per image")
    right.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # a count: whole numbers
    right.set_xlabel("images (or video frames)")
    right.set_ylabel("tokens the LLM must read")
    right.set_title(f"Several images at {image_sizes[0]} px")
    right.legend(frameon=False, loc="upper left")
    for ax in (left, right):
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def value_histogram(values, std: float | None = None, title: str = "", xlabel: str = "value"):
    """Histogram of a tensor's entries, with the normal density of the given std on top."""
    v = _to_numpy(values).ravel()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(v, bins=60, density=True, color=QUERY_COLOR, alpha=0.75, label=f"{v.size} entries")
    if std is not None:
        grid = np.linspace(v.min(), v.max(), 200)
        ax.plot(grid, np.exp(-0.5 * (grid / std) ** 2) / (std * math.sqrt(2 * math.pi)), "k--", label=f"N(0, {std}²)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def permutation_figure(similarity, perm, title: str = "Outputs after permuting the queries"):
    """Heatmap of similarity[i, j] between output i of the permuted run and output j of the
    original run; the permutation's positions are circled."""
    s = _to_numpy(similarity)
    perm = [int(p) for p in perm]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    im = ax.imshow(s, cmap="viridis", vmin=min(0.0, float(s.min())), vmax=1.0)
    ax.scatter(perm, range(len(perm)), s=120, facecolors="none", edgecolors="white", linewidths=1.5)
    ax.set_xlabel("output j of the original order (circles: j = perm[i])")
    ax.set_ylabel("output i after permuting")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="cosine similarity")
    fig.tight_layout()
    return fig


# --- chapter 2 -------------------------------------------------------------------------------

def softmax_saturation(dims: Sequence[int], scaled: Sequence[float], unscaled: Sequence[float]):
    """Mean largest softmax probability per row against the head width d, with and without
    the 1/sqrt(d) scale."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(dims, unscaled, "o-", color="#d62728", label="softmax(q·k)")
    ax.plot(dims, scaled, "o-", color=QUERY_COLOR, label="softmax(q·k / √d)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(dims), [str(d) for d in dims])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("head width d")
    ax.set_ylabel("mean of the largest probability")
    ax.set_title("Without the scale, attention collapses onto one key")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def attention_heatmaps(
    probs,
    titles: Sequence[str] | None = None,
    row_label: str = "attending position",
    col_label: str = "attended position",
    row_split: int | None = None,
    col_split: int | None = None,
    suptitle: str | None = None,
    cols: int = 4,
    vmax: float | None = None,
):
    """One heatmap per map of ``probs`` (M, L_q, L_k); rows attend to columns and sum to 1.

    ``row_split``/``col_split`` draw a line after that many rows/columns (e.g. queries | text).
    """
    p = _to_numpy(probs)
    if p.ndim == 2:
        p = p[None]
    m = p.shape[0]
    cols = min(cols, m)
    rows = math.ceil(m / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.8, 3.0 * rows + 0.4), squeeze=False)
    top = float(p.max()) if vmax is None else vmax
    for i, ax in enumerate(axes.flat):
        if i >= m:
            ax.axis("off")
            continue
        im = ax.imshow(p[i], cmap="magma", vmin=0.0, vmax=top, aspect="auto")
        if titles is not None:
            ax.set_title(titles[i], fontsize=10)
        if row_split is not None:
            ax.axhline(row_split - 0.5, color="white", lw=1.5)
        if col_split is not None:
            ax.axvline(col_split - 0.5, color="white", lw=1.5)
        if i % cols == 0:
            ax.set_ylabel(row_label)
        if i // cols == rows - 1:
            ax.set_xlabel(col_label)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label="attention probability")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


# --- chapter 3 -------------------------------------------------------------------------------

def patch_grid(image, patch_size: int = 14, title: str | None = None, number_every: int = 0):
    """The image with its ViT patch grid drawn on top (optionally numbering some patches)."""
    img = _image(image)
    size = img.shape[0]
    grid = size // patch_size
    fig, ax = plt.subplots(figsize=(4.4, 4.4))
    ax.imshow(img)
    for k in range(grid + 1):
        ax.axhline(k * patch_size - 0.5, color="white", lw=0.6, alpha=0.8)
        ax.axvline(k * patch_size - 0.5, color="white", lw=0.6, alpha=0.8)
    if number_every:
        for r in range(0, grid, number_every):
            for c in range(0, grid, number_every):
                ax.text(c * patch_size + patch_size / 2, r * patch_size + patch_size / 2, str(1 + r * grid + c),
                        color="white", fontsize=6, ha="center", va="center")
    ax.set_title(title or f"{grid}×{grid} = {grid * grid} patches of {patch_size} px")
    ax.axis("off")
    fig.tight_layout()
    return fig


def region_outline(image: np.ndarray, share: float = 0.08, threshold: float = 0.04) -> np.ndarray:
    """Where the image's colour changes sharply: a boolean (H, W) map of region borders.

    A pixel is on a border when its colour step to the next pixel is among the largest
    ``share`` of the image's steps and above ``threshold`` (so that smooth gradients draw
    nothing). A 3 × 3 box blur first, so that a photograph's fine texture draws fewer lines.
    """
    img = image.astype(float)
    if img.max() > 1.0:
        img = img / 255.0
    if img.ndim == 2:
        img = img[..., None]
    padded = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    blurred = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9
    step = np.zeros((h, w))
    step[:, 1:] = np.abs(np.diff(blurred, axis=1)).max(-1)
    step[1:, :] = np.maximum(step[1:, :], np.abs(np.diff(blurred, axis=0)).max(-1))
    return step > max(threshold, float(np.quantile(step, 1 - share)))


def patch_attention(
    image,
    attention,
    titles: Sequence[str] | None = None,
    patch_size: int = 14,
    has_cls: bool = True,
    cols: int = 4,
    suptitle: str | None = None,
    swatches: Sequence[Sequence[Sequence[float]]] | None = None,
    swatch_labels: Sequence[str] | None = None,
    colorbar: bool = True,
    *,
    scale: str = "panel",
    width: float = PAGE_WIDTH,
    outline: bool = True,
    fontsize: float = 9,
    image_title: str | None = None,
):
    """Each row of ``attention`` (M, N) drawn as a heat map on the image's patch grid.

    The heat map is opaque, so every cell has exactly the colour the colour bar gives its
    weight; the image is drawn over it as thin white outlines of its regions (``outline``).
    With ``has_cls``, column 0 is the [CLS] token: it has no place on the grid, so its weight
    is written in the panel's title instead.

    ``scale="panel"`` colours each panel from 0 to its own largest patch weight (which the
    title then gives, if there is a colour bar), so that spread-out and peaked maps are both
    visible; ``scale="shared"`` uses one scale, 0 to the largest weight of all panels, so that
    panels compare. ``colorbar`` draws one colour bar for the whole figure: the weight itself
    with a shared scale, the fraction of each panel's largest with per-panel scales.

    The figure is ``width`` inches wide (7.8 in: the book's 800-px column at matplotlib's
    100 dpi, with the saved margin) whatever
    ``cols`` is; text is ``fontsize`` points. ``swatches[i]``: RGB colours (in [0, 1]) drawn
    as small squares in panel i's corner, e.g. the colour a query asks for and the colour it
    reads; ``swatch_labels`` names them, top to bottom. ``image_title``: a first panel with
    that title shows the image itself, whose colours the heat maps hide.
    """
    if scale not in ("panel", "shared"):
        raise ValueError(f"scale must be 'panel' or 'shared', got {scale!r}")
    img = _image(image)
    a = _to_numpy(attention).astype(float)
    if a.ndim == 1:
        a = a[None]
    grid = img.shape[0] // patch_size
    expected = grid * grid + int(has_cls)
    if a.ndim != 2 or a.shape[1] != expected:
        raise ValueError(f"attention must be (M, {expected}) for a {img.shape[0]}-px image in {patch_size}-px "
                         f"patches{' plus [CLS]' if has_cls else ''}; got shape {a.shape}")
    m = a.shape[0]
    first = int(image_title is not None)  # the panels before the heat maps
    cols = min(cols, m + first)
    rows = math.ceil((m + first) / cols)
    cls_weights = a[:, 0] if has_cls else None
    heats = (a[:, 1:] if has_cls else a).reshape(m, grid, grid)
    tops = np.maximum(heats.reshape(m, -1).max(axis=1), 1e-12)  # each panel's largest patch weight
    if scale == "shared":
        shown, vmax = heats, float(tops.max())
    else:
        shown, vmax = heats / tops[:, None, None], 1.0
    bar_room = 0.75 if colorbar else 0.0
    panel = (width - bar_room) / cols
    extras = int(has_cls) + int(colorbar and scale == "panel")  # [CLS] weight, panel's max
    joiner = " · " if panel >= 1.5 else "\n"  # narrow panels: one figure per line
    title_lines = 1 + (min(extras, 1) if joiner == " · " else extras)
    title_height = title_lines * fontsize * 1.35 / 72
    height = rows * (panel + title_height + 0.08) + (2 * fontsize / 72 + 0.1 if suptitle else 0)
    fig = plt.figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    extent = (-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5)
    edges = region_outline(img) if outline else None
    mappable = None
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if first and k == 0:
            ax.imshow(img, extent=extent, interpolation="nearest")
            ax.set_title(image_title + ("\n" if title_lines > 1 else ""), fontsize=fontsize)
            continue
        i = k - first
        if i >= m:
            continue
        mappable = ax.imshow(shown[i], cmap="inferno", vmin=0.0, vmax=vmax, extent=extent,
                             interpolation="nearest")
        if edges is not None:
            lines = np.zeros(edges.shape + (4,))
            lines[edges] = (1.0, 1.0, 1.0, 0.85)
            ax.imshow(lines, extent=extent, interpolation="nearest")
        if swatches is not None:
            for j, rgb in enumerate(swatches[i]):
                y = 0.84 - 0.17 * j
                ax.add_patch(Rectangle((0.04, y), 0.13, 0.13, transform=ax.transAxes,
                                       facecolor=np.clip(np.asarray(rgb, dtype=float), 0, 1),
                                       edgecolor="white", lw=1.2))
                if swatch_labels is not None and j < len(swatch_labels):
                    ax.text(0.2, y + 0.065, swatch_labels[j], transform=ax.transAxes, ha="left",
                            va="center", fontsize=fontsize, color="white",
                            bbox=dict(facecolor="black", alpha=0.55, pad=1.0, lw=0))
        title = titles[i] if titles is not None else f"query {i}"
        second = []
        if cls_weights is not None:
            second.append(f"[CLS] {cls_weights[i]:.2f}")
        if colorbar and scale == "panel":
            second.append(f"max {tops[i]:.2g}")
        if second:
            title += "\n" + joiner.join(second)
        ax.set_title(title, fontsize=fontsize)
    if colorbar and mappable is not None:
        bar = fig.colorbar(mappable, ax=axes, fraction=0.6 / width, pad=0.01, aspect=max(10, 12 * rows))
        label = "attention weight" if scale == "shared" else "weight ÷ the panel's max"
        bar.set_label(label, fontsize=fontsize)
        bar.ax.tick_params(labelsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize + 2)
    return fig


# --- chapter 4 -------------------------------------------------------------------------------

def stack_diagram(config, title: str | None = None):
    """The layers of a Q-Former: self-attention in every layer, cross-attention every
    ``cross_attention_frequency``-th layer (queries only), and the two feed-forward networks."""
    n = config.num_hidden_layers
    fig, ax = plt.subplots(figsize=(min(0.45 * n + 2.4, PAGE_WIDTH), 3.0))
    boxes = [
        ("self-attention\n(queries + text)", "#d9d2e9", lambda i: True),
        ("cross-attention\n(queries only)", IMAGE_COLOR, config.has_cross_attention),
        ("query FFN", QUERY_COLOR, lambda i: True),
        ("text FFN", TEXT_COLOR, lambda i: bool(config.use_qformer_text_input)),
    ]
    for i in range(n):
        for row, (name, colour, present) in enumerate(boxes):
            y = len(boxes) - 1 - row
            if present(i):
                ax.add_patch(Rectangle((i + 0.08, y + 0.1), 0.84, 0.8, color=colour, alpha=0.85))
            else:
                ax.add_patch(Rectangle((i + 0.08, y + 0.1), 0.84, 0.8, fill=False, ls=":", ec="#bbbbbb"))
        ax.text(i + 0.5, -0.25, str(i), ha="center", va="top", fontsize=9)
    for row, (name, _, _) in enumerate(boxes):
        ax.text(-0.15, len(boxes) - 1 - row + 0.5, name, ha="right", va="center", fontsize=9)
    ax.text(n / 2, -0.85, "layer index", ha="center", va="top", fontsize=9)
    ax.set_xlim(-2.3, n + 0.1)
    ax.set_ylim(-1.2, len(boxes) + 0.1)
    ax.axis("off")
    ax.set_title(title or f"{n} layers, cross-attention every {config.cross_attention_frequency} layers")
    fig.tight_layout()
    return fig


def _part_colour(name: str, index: int):
    """The book's colour for a named part of the model (queries blue, text orange, image green)."""
    lowered = name.lower()
    for key, colour in (("cross", IMAGE_COLOR), ("query ffn", QUERY_COLOR), ("query token", "#aec7e8"),
                        ("text ffn", TEXT_COLOR), ("embedding layernorm", PAD_COLOR), ("embedding", "#ffbb78"),
                        ("self-attention", "#9467bd"), ("head", "#555555")):
        if key in lowered:
            return colour
    palette = plt.get_cmap("tab20").colors
    return palette[index % len(palette)]


def parameter_bars(rows: Sequence[tuple[str, int]], groups: Mapping[str, Sequence[str]], title: str = ""):
    """Stacked horizontal bars: one bar per group (e.g. "query path"), made of the named rows.

    ``rows``: (name, count) pairs; ``groups``: bar label -> names of the rows it contains.
    """
    counts = dict(rows)
    colour = {name: _part_colour(name, i) for i, (name, _) in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 0.9 * len(groups) + 1.6))
    labels = list(groups)
    used = set()
    for y, label in enumerate(labels):
        left = 0.0
        for name in groups[label]:
            width = counts[name] / 1e6
            ax.barh(y, width, left=left, color=colour[name], edgecolor="white",
                    label=name if name not in used else None)
            used.add(name)
            left += width
        ax.text(left + 1, y, f"{left:.1f}M", va="center", fontsize=9)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("parameters (millions)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_xlim(0, max(sum(counts[n] for n in g) for g in groups.values()) / 1e6 * 1.12)
    fig.tight_layout()
    return fig


# --- chapter 5 -------------------------------------------------------------------------------

def mask_grid(mask, num_queries: int, text_mask=None, ax=None, title: str | None = None, fontsize: int = 7):
    """One attention mask as a grid: row i may attend to column j where the cell is dark.

    The query and text blocks are labelled; padded text columns and rows are marked.
    ``mask``: bool (L, L) with L = Q + T; ``text_mask``: (T,) with 0 for padding.
    """
    m = _to_numpy(mask).astype(bool)
    if m.ndim == 3:
        m = m[0]
    length = m.shape[0]
    q = num_queries
    t = length - q
    pad = np.zeros(t, dtype=bool) if text_mask is None else ~_to_numpy(text_mask).astype(bool).reshape(-1)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(0.32 * length + 1.8, 0.32 * length + 1.6))
    else:
        fig = ax.figure
    ax.imshow(m, cmap=ListedColormap([HIDDEN_COLOR, SEEN_COLOR]), vmin=0, vmax=1)
    for k in range(length + 1):
        ax.axhline(k - 0.5, color="white", lw=0.8)
        ax.axvline(k - 0.5, color="white", lw=0.8)
    if 0 < q < length:
        ax.axhline(q - 0.5, color="black", lw=2)
        ax.axvline(q - 0.5, color="black", lw=2)
    for j in np.flatnonzero(pad):
        ax.add_patch(Rectangle((q + j - 0.5, -0.5), 1, length, fill=False, hatch="///", ec=PAD_COLOR, lw=0))
    names = [f"q{i}" for i in range(q)] + [("pad" if pad[i] else f"t{i}") for i in range(t)]
    colours = [QUERY_COLOR] * q + [PAD_COLOR if pad[i] else TEXT_COLOR for i in range(t)]
    ax.set_xticks(range(length), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(length), names, fontsize=fontsize)
    for tick, c in zip(ax.get_xticklabels(), colours):
        tick.set_color(c)
    for tick, c in zip(ax.get_yticklabels(), colours):
        tick.set_color(c)
    ax.tick_params(length=0)
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("attended to (keys)", fontsize=fontsize + 2)
    ax.set_ylabel("attending (rows)", fontsize=fontsize + 2)
    for start, size, name, colour in ((0, q, "queries", QUERY_COLOR), (q, t, "text", TEXT_COLOR)):
        if size:
            ax.text(start + size / 2 - 0.5, length - 0.2, name, ha="center", va="top", color=colour,
                    fontsize=fontsize + 2, fontweight="bold")
    if title:
        ax.set_title(title, pad=4 * fontsize + 12, fontsize=fontsize + 4)
    if own:
        fig.tight_layout()
    return fig


def mask_modes(masks: Mapping[str, object], num_queries: int, text_mask=None, titles: Mapping[str, str] | None = None):
    """Several masks side by side (e.g. ITC, ITM, ITG) with a shared legend."""
    n = len(masks)
    length = _to_numpy(next(iter(masks.values()))).shape[-1]
    side = min(0.22 * length + 1.3, PAGE_WIDTH / n)  # small cells, large labels, one page wide
    fig, axes = plt.subplots(1, n, figsize=(side * n, side + 0.9), squeeze=False)
    for ax, (name, m) in zip(axes.flat, masks.items()):
        mask_grid(m, num_queries, text_mask, ax=ax, title=(titles or {}).get(name, name), fontsize=9)
    handles = [Patch(color=SEEN_COLOR, label="may attend"), Patch(color=HIDDEN_COLOR, label="hidden"),
               Patch(facecolor="white", hatch="///", edgecolor=PAD_COLOR, label="padded text column")]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def mask_explorer():
    """A widget over ``mask_grid``: pick the mode, Q, T and the number of padded tokens.

    It needs a live kernel (Colab or Jupyter); the static figures in the chapter show the same.
    """
    import ipywidgets as widgets
    import torch

    from ..masks import MODES, build_attention_mask

    def show(mode="itg", num_queries=4, text_length=6, padding=1):
        padding = min(padding, text_length - 1)  # at least one real token
        text_mask = torch.ones(1, text_length, dtype=torch.long)
        if padding:
            text_mask[0, -padding:] = 0
        mask = build_attention_mask(mode, num_queries, text_mask)[0]
        mask_grid(mask, num_queries, text_mask[0], title=f"{mode.upper()}: Q={num_queries}, T={text_length}, "
                                                         f"{padding} padded")
        plt.show()

    return widgets.interactive(
        show,
        mode=widgets.Dropdown(options=list(MODES), value="itg", description="mode"),
        num_queries=widgets.IntSlider(value=4, min=1, max=8, description="Q"),
        text_length=widgets.IntSlider(value=6, min=1, max=10, description="T"),
        padding=widgets.IntSlider(value=1, min=0, max=9, description="padding"),
    )


def change_map(changes: Mapping[str, object], num_queries: int, changed_position: int, title: str = ""):
    """How much each output position moved when one text token was changed, per mode.

    ``changes``: mode -> (L,) max absolute change per position; ``changed_position`` is the
    index (in [queries; text]) of the token that was changed.
    """
    n = len(changes)
    fig, axes = plt.subplots(n, 1, figsize=(PAGE_WIDTH, 1.6 * n + 0.6), sharex=True, squeeze=False)
    for ax, (name, delta) in zip(axes.flat, changes.items()):
        d = _to_numpy(delta)
        length = d.shape[0]
        colours = [QUERY_COLOR if i < num_queries else TEXT_COLOR for i in range(length)]
        others = np.delete(d, changed_position)
        top = float(others.max()) * 1.3 if others.size and others.max() > 0 else 1.0
        ax.bar(range(length), np.minimum(d, top), color=colours)
        ax.bar([changed_position], [top], color="white", edgecolor="black", hatch="//", lw=0.8)
        ax.text(changed_position, top, f"changed token: {d[changed_position]:.2g} ↑", ha="center", va="bottom",
                fontsize=8)
        zero = [i for i in range(length) if d[i] == 0]
        if zero:
            ax.scatter(zero, [0] * len(zero), marker="x", color="black", s=18, zorder=3, clip_on=False,
                       label="exactly 0")
            ax.legend(frameon=False, fontsize=8, loc="upper left")
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_ylim(0, top * 1.25)
    names = [f"q{i}" for i in range(num_queries)] + [f"t{i}" for i in range(length - num_queries)]
    axes.flat[-1].set_xticks(range(length), names, rotation=90, fontsize=8)
    axes.flat[0].set_title(title or "Largest change of each output after changing one text token", pad=14)
    fig.tight_layout()
    return fig


# --- chapter 6 -------------------------------------------------------------------------------

def caption_grid(pool, captions: Sequence[str], n: int = 16, columns: int = 4, references=None, start: int = 0):
    """Images of ``pool`` with their generated captions: green when equal to the true caption,
    red when not. ``n`` images spread evenly from ``start``; ``references``: the true captions
    (by default ``pool.captions``)."""
    references = pool.captions if references is None else references
    n = min(n, len(captions) - start)
    fig, axes = _image_grid(n, columns, PAGE_WIDTH / columns * 1.3)
    step = max(1, (len(captions) - start) // n)
    for ax, i in zip(axes.flat, range(start, start + step * n, step)):
        ax.imshow(_image(pool.images[i]), interpolation="nearest")
        ok = captions[i] == references[i]
        ax.set_title(_wrapped(captions[i], 22), fontsize=8, color=RIGHT_COLOR if ok else WRONG_COLOR)
    fig.tight_layout()
    return fig


def stage1_losses(history: Mapping[str, Sequence[float]], window: int = 20, title: str = "Stage 1 losses"):
    """ITC, ITM and ITG per step (moving average over ``window`` steps), and their sum."""
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.0))
    for key in ("itc", "itm", "itg"):
        if key in history:
            axes[0].plot(_smooth(history[key], window), label=key.upper(), color=LOSS_COLORS[key])
    axes[0].set_title("the three losses")
    axes[0].legend()
    axes[1].plot(_smooth(history["loss"], window), color=LOSS_COLORS["loss"])
    axes[1].set_title("ITC + ITM + ITG")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def recall_bars(values: Mapping[str, float], title: str = "Held-out image->text recall@1"):
    """Bars of recall@1 (or any fractions) by name, each labelled to a tenth of a percent."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    names = list(values)
    bars = ax.barh(names, [values[k] for k in names], color=QUERY_COLOR)
    for bar, name in zip(bars, names):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, f"{values[name]:.1%}", va="center")
    ax.set_xlim(0, 1.1)
    ax.invert_yaxis()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def hard_negatives(images, captions: Sequence[str], sim, neg_image, rows: int = 4):
    """For the first ``rows`` texts of one batch: the matching image, then the negative image
    drawn for that text, with the probability it had of being drawn: a softmax of ``sim``
    (images, texts; divided by the temperature already) over the other images. LAVIS 1.0.2
    adds 1e-4 to each weight before the draw (``losses.negative_weights``), a change the two
    decimals shown do not see."""
    sim = _to_numpy(sim)
    fig, axes = plt.subplots(rows, 2, figsize=(5.4, 2.4 * rows), squeeze=False)
    for r in range(rows):
        j = int(neg_image[r])
        logits = sim[:, r].copy()  # images for text r
        logits[r] = -np.inf
        p = np.exp(logits - logits[np.isfinite(logits)].max())
        p /= p.sum()
        axes[r, 0].imshow(_image(images[r]), interpolation="nearest")
        axes[r, 0].set_title(_wrapped(captions[r], 26), fontsize=8, color=RIGHT_COLOR)
        axes[r, 1].imshow(_image(images[j]), interpolation="nearest")
        axes[r, 1].set_title(f"drawn negative, p = {p[j]:.2f}\n" + _wrapped(captions[j], 26),
                             fontsize=8, color=WRONG_COLOR)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle("text: its image (left) and the hard negative drawn for it (right)", fontsize=9)
    fig.tight_layout()
    return fig


# --- chapter 7 -------------------------------------------------------------------------------

def stage2_losses(histories, window: int = 20, title: str = "Stage 2: T5's loss on the caption"):
    """T5's loss per step (moving average): one history, or several named ones
    (``{"name": history}``) on the same axes."""
    if "loss" in histories:
        histories = {"stage 2": histories}
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for name, history in histories.items():
        ax.plot(_smooth(history["loss"], window), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (log scale)")
    ax.grid(alpha=0.3, which="both")
    if len(histories) > 1:
        ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


# --- chapter 8 -------------------------------------------------------------------------------

def captioned_images(images, captions: Sequence[str], columns: int = 4, width: int | None = None,
                     title: str | None = None):
    """Images (H, W, 3) in a row-major grid as wide as the page, each with its caption wrapped
    underneath (``width`` characters a line; by default what fits under the image at 9 pt)."""
    columns = min(columns, len(images))
    panel = PAGE_WIDTH / columns  # inches
    width = width or max(12, int(panel * 13))  # about 13 characters an inch at 9 pt
    fig, axes = _image_grid(len(images), columns, panel + 0.9)
    for ax, image, caption in zip(axes.flat, images, captions):
        picture = _image(image)
        ax.imshow(picture, interpolation="nearest" if picture.shape[0] < 100 else "antialiased")
        ax.text(0.5, -0.04, _wrapped(caption, width), transform=ax.transAxes, ha="center", va="top", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.92 if title else 0.98, bottom=0.16, wspace=0.08, hspace=0.5)
    return fig


# --- chapter 9 -------------------------------------------------------------------------------

def connector_tradeoff(rows: Sequence[Mapping], title: str = "Connectors on one task"):
    """Two panels over M, the soft prompt's length: held-out accuracy (left; slot accuracy
    solid, exact match dashed) and the T5 encoder's time per batch (right). ``rows`` as
    ``miniature.compare.compare`` returns them; a kind with several M is a line, one with a
    single M a point."""
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.7))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    for kind in kinds:
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["M"])
        ms = [r["M"] for r in mine]
        colour = CONNECTOR_COLORS.get(kind, TOTAL_COLOR)
        axes[0].plot(ms, [r["slot_accuracy"] for r in mine], color=colour, marker="o", label=kind)
        axes[0].plot(ms, [r["exact_match"] for r in mine], color=colour, marker="x", ls="--")
        axes[1].plot(ms, [r["t5_encoder_ms"] for r in mine], color=colour, marker="o", label=kind)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M, vectors in the soft prompt (log scale)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out: slots (—), exact (--)")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylabel("T5 encoder, ms per batch")
    fig.suptitle(title)
    # one legend for both panels, below them: inside a panel it would cover a measured point
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=len(kinds), loc="lower center", frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


# --- chapter 10 ------------------------------------------------------------------------------

DECODER_RUN_COLORS = {"blip2-t5": CONNECTOR_COLORS["qformer+stage1"], "blip2-opt": TEXT_COLOR,
                      "minigpt4": "#9467bd"}


def sequence_strips(rows: Mapping[str, Sequence[tuple[str, str]]], title: str | None = None):
    """Sequences as a decoder-only model reads them, one strip per named row, one cell per
    position: ``(label, kind)`` with kind ``"pad"`` (grey), ``"query"`` (a projected query),
    ``"text"`` (read only) or ``"target"`` (a token the loss learns, outlined). Left to right
    is the order of the positions; the model writes its next token after the last cell.
    Labels longer than three characters are written upwards, in cells tall enough for them."""
    fill = {"pad": PAD_COLOR, "query": QUERY_COLOR, "text": "#ffffff", "target": "#ffe9cc"}
    for cells in rows.values():
        for _, kind in cells:
            if kind not in fill:
                raise ValueError(f"kind must be one of {sorted(fill)}, got {kind!r}")
    width = max(len(cells) for cells in rows.values())
    longest = max(len(label) for cells in rows.values() for label, _ in cells)
    height = 0.8 if longest <= 3 else 0.6 + 0.22 * longest  # in cell widths
    step = height + 0.35
    cell_inches = min(0.42, (PAGE_WIDTH - 1.6) / width)
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, cell_inches * step * len(rows) + 1.0))
    for r, (name, cells) in enumerate(rows.items()):
        y = (len(rows) - 1 - r) * step
        for c, (label, kind) in enumerate(cells):
            ax.add_patch(plt.Rectangle((c, y), 0.94, height, facecolor=fill[kind],
                                       edgecolor=TEXT_COLOR if kind == "target" else "#555555",
                                       linewidth=1.6 if kind == "target" else 0.6))
            ax.text(c + 0.47, y + height / 2, label, ha="center", va="center", fontsize=7,
                    rotation=90 if len(label) > 3 else 0, color="white" if kind in ("pad", "query") else "black")
        ax.text(-0.3, y + height / 2, name, ha="right", va="center", fontsize=8)
    ax.set_xlim(-0.1, width)
    ax.set_ylim(-0.05, (len(rows) - 1) * step + height + 0.05)
    ax.set_aspect("equal")
    ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=fill[k], edgecolor="#555555") for k in ("pad", "query", "text")]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=fill["target"], edgecolor=TEXT_COLOR, linewidth=1.6))
    fig.legend(handles, ["padding", "projected query", "text, read", "text, a target of the loss"],
               loc="lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def decoder_run_bars(rows: Sequence[Mapping], title: str = "Three stage-2 runs on the same captions"):
    """Held-out exact match (left) and trainable parameters (right, log scale) of each run, as
    ``miniature.decoder.decoder_runs`` returns them; each bar labelled with its figure."""
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 2.2 + 0.35 * len(rows)))
    names = [r["run"] for r in rows]
    colours = [DECODER_RUN_COLORS.get(r["kind"], TOTAL_COLOR) for r in rows]
    exact = [r["exact_match"] for r in rows]
    params = [r["trainable_params"] for r in rows]
    for ax, values, label in ((axes[0], exact, "held-out exact match"), (axes[1], params, "trainable parameters")):
        bars = ax.barh(names, values, color=colours)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, axis="x")
        for bar, v in zip(bars, values):
            shown = f"{v:.1%}" if isinstance(v, float) else f"{v:,}"
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {shown}", va="center", fontsize=8)
    axes[0].set_xlim(0, 1.18)
    axes[0].xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    axes[1].set_xscale("log")
    axes[1].set_xlim(min(params) / 2, max(params) * 12)
    axes[1].set_yticklabels([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- chapter 11 ------------------------------------------------------------------------------

INSTRUCT_COLORS = {"blip2": QUERY_COLOR, "instructblip": TEXT_COLOR}


def accuracy_by_question(rows: Sequence[Mapping], title: str = "Held-out answers by question type"):
    """Grouped bars: each question type (and all), one bar per run, as
    ``miniature.instruct.instruct_runs`` returns them (``kind``, ``queries``, ``accuracy``);
    a run with fewer queries is hatched."""
    types = [k for k in ("colour", "shape", "where", "relation", "all") if any(k in r["accuracy"] for r in rows)]
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.2))
    most = max(r["queries"] for r in rows)
    width = 0.8 / len(rows)
    for j, r in enumerate(rows):
        xs = np.arange(len(types)) + (j - (len(rows) - 1) / 2) * width
        values = [r["accuracy"].get(k, np.nan) for k in types]
        ax.bar(xs, values, width, color=INSTRUCT_COLORS.get(r["kind"], TOTAL_COLOR),
               hatch="" if r["queries"] == most else "//", edgecolor="white",
               label=f"{r['kind']}, Q = {r['queries']}")
    ax.set_xticks(np.arange(len(types)), types)
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("right answers")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=len(rows), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


# --- chapter 12 ------------------------------------------------------------------------------

VIDEO_COLORS = {"video-qformer": QUERY_COLOR, "no-positions": "#9ecae1", "concatenation": TEXT_COLOR,
                "average": PAD_COLOR}


def clip_strips(pool, indices: Sequence[int], captions: Sequence[str] | None = None, title: str | None = None):
    """Clips of ``pool`` (``miniature.clips.ClipPool``), one row each, frame after frame; each
    row titled with its caption, or with the model's ``captions`` in green (right) or red."""
    frames = pool.frames.shape[1]
    fig, axes = plt.subplots(len(indices), frames, figsize=(PAGE_WIDTH * 0.62, 1.2 * len(indices) + 0.3),
                             squeeze=False)
    for r, (row, i) in enumerate(zip(axes, indices)):
        for f, ax in enumerate(row):
            ax.imshow(_image(pool.frames[i, f]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_xlabel(f"frame {f}", fontsize=8)
                ax.xaxis.set_label_position("top")
        text = pool.captions[i] if captions is None else captions[i]
        colour = TOTAL_COLOR if captions is None else (RIGHT_COLOR if captions[i] == pool.captions[i] else WRONG_COLOR)
        row[0].set_ylabel(_wrapped(text, 16), fontsize=8, color=colour, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def video_scores(rows: Sequence[Mapping], title: str = "Four video models on the held-out clips"):
    """Grouped bars, one group per score of ``miniature.clips.clip_scores`` and one bar per
    model, as ``miniature.clips.video_runs`` returns them; the models' token counts in the legend."""
    keys = ("exact", "direction", "change", "reversed")
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.2))
    width = 0.8 / len(rows)
    for j, r in enumerate(rows):
        xs = np.arange(len(keys)) + (j - (len(rows) - 1) / 2) * width
        values = [r["scores"][k] for k in keys]
        bars = ax.bar(xs, values, width, color=VIDEO_COLORS.get(r["kind"], TOTAL_COLOR),
                      edgecolor="white", label=f"{r['kind']} ({r['tokens']} tokens)")
        for bar, v in zip(bars, values):  # a bar at 0 is a label, not nothing
            ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.0%}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(np.arange(len(keys)),
                  ["exact match\n(all clips)", "direction\n(of the moves)", "colour change, in order\n(of the changes)",
                   "captioned as reversed\n(all clips)"], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("share")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig
