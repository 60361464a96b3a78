"""Figures for the miniature's chapters (6 and 7) and for ``qformer-lite train``.

Every function draws one static matplotlib figure and returns it.
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np


LOSS_COLOURS = {"loss": "#333333", "itc": "#1f77b4", "itm": "#2ca02c", "itg": "#ff7f0e"}
RIGHT, WRONG = "#1a7f37", "#cf222e"


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) < window:
        return v
    kernel = np.ones(window) / window
    return np.convolve(v, kernel, mode="valid")


def _image(x) -> np.ndarray:
    """uint8 (H, W, 3), or a float (3, H, W) tensor in [-1, 1] -> something imshow takes."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if a.ndim == 3 and a.shape[0] == 3:
        a = np.clip((a.transpose(1, 2, 0) + 1) / 2, 0, 1)
    return a


def plot_stage1_history(history: Mapping[str, Sequence[float]], window: int = 20, title: str = "Stage 1 losses"):
    """ITC, ITM and ITG per step (moving average), and their sum."""
    fig, axes = plt.subplots(1, 2, figsize=(7.8, 3.0))  # the width of the book's page
    for key in ("itc", "itm", "itg"):
        if key in history:
            axes[0].plot(_smooth(history[key], window), label=key.upper(), color=LOSS_COLOURS[key])
    axes[0].set_title("the three losses")
    axes[0].legend()
    axes[1].plot(_smooth(history["loss"], window), color=LOSS_COLOURS["loss"])
    axes[1].set_title("ITC + ITM + ITG")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_stage2_history(histories, window: int = 20, title: str = "Stage 2: T5's loss on the caption"):
    """One loss curve, or several named ones (``{"name": history}``) on the same axes."""
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


def plot_caption_grid(pool, captions: Sequence[str], n: int = 16, columns: int = 4, references=None, start: int = 0):
    """Images with their generated captions: green when equal to the true caption, red when not."""
    references = pool.captions if references is None else references
    n = min(n, len(captions) - start)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(7.8, 7.8 / columns * 1.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    step = max(1, (len(captions) - start) // n)
    for ax, i in zip(axes.flat, range(start, start + step * n, step)):
        ax.imshow(_image(pool.images[i]), interpolation="nearest")
        ok = captions[i] == references[i]
        ax.set_title("\n".join(textwrap.wrap(captions[i] or "(empty)", 22)), fontsize=8, color=RIGHT if ok else WRONG)
    fig.tight_layout()
    return fig


def plot_hard_negatives(images, captions: Sequence[str], sim, neg_image, rows: int = 4):
    """For a few texts of one batch: the matching image, then the negative image drawn for that
    text, with the probability it had of being drawn."""
    sim = np.asarray(sim.detach() if hasattr(sim, "detach") else sim)
    fig, axes = plt.subplots(rows, 2, figsize=(5.4, 2.4 * rows), squeeze=False)
    for r in range(rows):
        j = int(neg_image[r])
        logits = sim[:, r].copy()  # images for text r
        logits[r] = -np.inf
        p = np.exp(logits - logits[np.isfinite(logits)].max())
        p /= p.sum()
        axes[r, 0].imshow(_image(images[r]), interpolation="nearest")
        axes[r, 0].set_title("\n".join(textwrap.wrap(captions[r], 26)), fontsize=8, color=RIGHT)
        axes[r, 1].imshow(_image(images[j]), interpolation="nearest")
        axes[r, 1].set_title(f"drawn negative, p = {p[j]:.2f}\n" + "\n".join(textwrap.wrap(captions[j], 26)),
                             fontsize=8, color=WRONG)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle("text: its image (left) and the hard negative drawn for it (right)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_recall(values: Mapping[str, float], title: str = "Held-out image->text recall@1"):
    """Bars of recall@1 (or any fractions) by name."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    names = list(values)
    bars = ax.barh(names, [values[k] for k in names], color="#1f77b4")
    for bar, name in zip(bars, names):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, f"{values[name]:.1%}", va="center")
    ax.set_xlim(0, 1.1)
    ax.invert_yaxis()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_similarity(sim, row_labels: Sequence[str], col_labels: Sequence[str], title: str = "ITC similarity"):
    """A small similarity matrix with its labels."""
    s = np.asarray(sim.detach() if hasattr(sim, "detach") else sim)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * len(col_labels), 1.0 + 0.45 * len(row_labels)))
    im = ax.imshow(s, cmap="viridis")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
