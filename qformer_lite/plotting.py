"""Figures for the book, kept here so that the chapters stay about the idea.

Every function draws one static matplotlib figure and returns it (``fig = ...`` in a
notebook shows it once). Colours are the same everywhere: queries blue, text orange,
image green, padding grey.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle

QUERY_COLOR = "#1f77b4"
TEXT_COLOR = "#ff7f0e"
IMAGE_COLOR = "#2ca02c"
PAD_COLOR = "#9e9e9e"
SEEN_COLOR = "#2b5d8a"
HIDDEN_COLOR = "#f2f2f2"
# inches: the book's content column is about 800 px, and matplotlib draws 100 px per inch
PAGE_WIDTH = 7.8

__all__ = [
    "token_budget",
    "value_histogram",
    "permutation_figure",
    "softmax_saturation",
    "attention_heatmaps",
    "synthetic_image",
    "patch_grid",
    "patch_attention",
    "stack_diagram",
    "parameter_bars",
    "mask_grid",
    "mask_modes",
    "mask_explorer",
    "change_map",
    "captioned_images",
]


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


# --- chapter 1 -------------------------------------------------------------------------------

def vit_tokens(image_size: int, patch_size: int = 14, cls_token: bool = True) -> int:
    """Number of tokens a ViT produces for a square image: patches plus the [CLS] token."""
    return (image_size // patch_size) ** 2 + int(cls_token)


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
    patches = [vit_tokens(s, patch_size) for s in image_sizes]
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
    per_image = vit_tokens(image_sizes[0], patch_size)
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

def synthetic_image(size: int = 224) -> np.ndarray:
    """A small drawn scene (sky, sun, hills, a red house, a tree) as uint8 (size, size, 3).

    Made with numpy only, so the book needs no image download.
    """
    yy, xx = np.mgrid[0:size, 0:size] / size  # both in [0, 1)
    img = np.zeros((size, size, 3))
    sky = np.stack([0.45 + 0.25 * yy, 0.65 + 0.2 * yy, 0.95 - 0.05 * yy], axis=-1)
    img[:] = sky
    hill = yy > 0.62 + 0.06 * np.sin(6 * xx)
    img[hill] = [0.30, 0.62, 0.25]
    sun = (xx - 0.8) ** 2 + (yy - 0.18) ** 2 < 0.09 ** 2
    img[sun] = [1.0, 0.85, 0.15]
    wall = (xx > 0.14) & (xx < 0.44) & (yy > 0.50) & (yy < 0.78)
    img[wall] = [0.80, 0.15, 0.12]
    roof = (yy > 0.34) & (yy <= 0.50) & (np.abs(xx - 0.29) < (yy - 0.34) * 1.15)
    img[roof] = [0.45, 0.22, 0.12]
    door = (xx > 0.26) & (xx < 0.33) & (yy > 0.64) & (yy < 0.78)
    img[door] = [0.35, 0.18, 0.08]
    trunk = (xx > 0.66) & (xx < 0.70) & (yy > 0.55) & (yy < 0.75)
    img[trunk] = [0.40, 0.26, 0.13]
    crown = (xx - 0.68) ** 2 + (yy - 0.48) ** 2 < 0.10 ** 2
    img[crown] = [0.10, 0.42, 0.12]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def patch_grid(image, patch_size: int = 14, title: str | None = None, number_every: int = 0):
    """The image with its ViT patch grid drawn on top (optionally numbering some patches)."""
    img = _to_numpy(image)
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


def _outline(image: np.ndarray, share: float = 0.08, threshold: float = 0.04) -> np.ndarray:
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
    reads; ``swatch_labels`` names them, top to bottom.
    """
    if scale not in ("panel", "shared"):
        raise ValueError(f"scale must be 'panel' or 'shared', got {scale!r}")
    img = _to_numpy(image)
    a = _to_numpy(attention).astype(float)
    if a.ndim == 1:
        a = a[None]
    grid = img.shape[0] // patch_size
    expected = grid * grid + int(has_cls)
    if a.ndim != 2 or a.shape[1] != expected:
        raise ValueError(f"attention must be (M, {expected}) for a {img.shape[0]}-px image in {patch_size}-px "
                         f"patches{' plus [CLS]' if has_cls else ''}; got shape {a.shape}")
    m = a.shape[0]
    cols = min(cols, m)
    rows = math.ceil(m / cols)
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
    edges = _outline(img) if outline else None
    mappable = None
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= m:
            continue
        mappable = ax.imshow(shown[i], cmap="inferno", vmin=0.0, vmax=vmax, extent=extent,
                             interpolation="nearest")
        if edges is not None:
            lines = np.zeros(edges.shape + (4,))
            lines[edges] = (1.0, 1.0, 1.0, 0.85)
            ax.imshow(lines, extent=extent, interpolation="nearest")
        if swatches is not None:
            for k, rgb in enumerate(swatches[i]):
                y = 0.84 - 0.17 * k
                ax.add_patch(Rectangle((0.04, y), 0.13, 0.13, transform=ax.transAxes,
                                       facecolor=np.clip(np.asarray(rgb, dtype=float), 0, 1),
                                       edgecolor="white", lw=1.2))
                if swatch_labels is not None and k < len(swatch_labels):
                    ax.text(0.2, y + 0.065, swatch_labels[k], transform=ax.transAxes, ha="left",
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

    from .masks import MODES, build_attention_mask

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


# --- chapter 8 -------------------------------------------------------------------------------

def captioned_images(images, captions: Sequence[str], columns: int = 4, width: int | None = None,
                     title: str | None = None):
    """Images (H, W, 3) in a row-major grid as wide as the page, each with its caption wrapped
    underneath (``width`` characters a line; by default what fits under the image at 9 pt)."""
    import textwrap

    n = len(images)
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    panel = PAGE_WIDTH / columns  # inches
    width = width or max(12, int(panel * 13))  # about 13 characters an inch at 9 pt
    fig, axes = plt.subplots(rows, columns, figsize=(PAGE_WIDTH, rows * (panel + 0.9)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        picture = _to_numpy(image)
        ax.imshow(picture, interpolation="nearest" if picture.shape[0] < 100 else "antialiased")
        ax.text(0.5, -0.04, "\n".join(textwrap.wrap(caption or "(empty)", width)), transform=ax.transAxes,
                ha="center", va="top", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.92 if title else 0.98, bottom=0.16, wspace=0.08, hspace=0.5)
    return fig
