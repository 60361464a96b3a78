"""A synthetic image-caption world, small enough to train BLIP-2 on a laptop CPU.

Each image is a 3 x 3 grid of cells with one or two coloured shapes, each filling most of
one cell; a cell is exactly one patch of the image encoder, so every object sits in one
patch token. Captions come from two templates:

    one object:   "a red circle at the top left"
    two objects:  "a red circle left of a blue square"   (same row, left one named first)
                  "a red circle above a blue square"     (same column, upper one named first)

Everything is generated on the fly and is deterministic by seed: item ``i`` of a split is
drawn from its own random stream, so any item can be rebuilt alone.

The split is made on *captions*, not images: a random part of all captions (object pairs in
a relation, or an object at a position) is held out, and the test split draws only those.
Every word, object and position still appears in training, but never in that combination,
so a correct test caption shows composition rather than memory.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import JsonConfig

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 170, 65),
    "blue": (55, 95, 235),
    "yellow": (235, 205, 45),
    "purple": (165, 70, 215),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
GRID = 3  # cells per side
# (row, column) -> words; one-object captions say where the object is.
PLACES: dict[tuple[int, int], str] = {
    (0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
    (1, 0): "on the left", (1, 1): "in the middle", (1, 2): "on the right",
    (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right",
}
RELATIONS = ("left of", "above")
BACKGROUND = (20, 20, 28)


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    row: int
    col: int
    scale: float = 0.8  # side of the shape / side of its cell
    dx: int = 0  # pixel offset inside the cell
    dy: int = 0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]

    @property
    def caption(self) -> str:
        return caption_of(self)


def caption_of(scene: Scene) -> str:
    """The one caption a scene has: what is drawn, and where."""
    objs = scene.objects
    if len(objs) == 1:
        o = objs[0]
        return f"a {o.name} {PLACES[(o.row, o.col)]}"
    if len(objs) != 2:
        raise ValueError(f"a scene holds one or two objects, got {len(objs)}")
    a, b = objs
    if a.row == b.row and a.col != b.col:
        first, second = (a, b) if a.col < b.col else (b, a)
        return f"a {first.name} left of a {second.name}"
    if a.col == b.col and a.row != b.row:
        first, second = (a, b) if a.row < b.row else (b, a)
        return f"a {first.name} above a {second.name}"
    raise ValueError("two objects must share a row or a column (a diagonal pair has no single caption)")


def all_captions() -> list[str]:
    """Every caption the templates can produce, in a fixed order."""
    objects = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    singles = [f"a {o} {place}" for o in objects for place in PLACES.values()]
    pairs = [f"a {a} {rel} a {b}" for rel in RELATIONS for a, b in itertools.permutations(objects, 2)]
    return singles + pairs


def parse_caption(caption: str) -> tuple[str, ...]:
    """The slots of a caption: ``(colour, shape, place)`` or ``(colour, shape, relation, colour, shape)``."""
    words = caption.split()
    rel = next((r for r in RELATIONS if f" {r} " in caption), None)
    if rel is None:
        if len(words) < 4 or words[0] != "a" or " ".join(words[3:]) not in PLACES.values():
            raise ValueError(f"not a caption of this world: {caption!r}")
        return (words[1], words[2], " ".join(words[3:]))
    if len(words) != 6 + len(rel.split()):
        raise ValueError(f"not a caption of this world: {caption!r}")
    return (words[1], words[2], rel, words[-2], words[-1])


def format_caption(slots: tuple[str, ...]) -> str:
    """The inverse of ``parse_caption``."""
    if len(slots) == 3:
        return f"a {slots[0]} {slots[1]} {slots[2]}"
    return f"a {slots[0]} {slots[1]} {slots[2]} a {slots[3]} {slots[4]}"


def related_captions(caption: str, candidates) -> list[str]:
    """The captions among ``candidates`` one change away: one slot (a colour, a shape, the place
    or the relation) different, or the two objects swapped. These are the negatives that a
    model must tell apart with care."""
    slots = parse_caption(caption)
    choices = (list(COLOURS), list(SHAPES), list(PLACES.values()) if len(slots) == 3 else list(RELATIONS),
               list(COLOURS), list(SHAPES))
    variants = []
    for i, slot in enumerate(slots):
        variants += [slots[:i] + (v,) + slots[i + 1:] for v in choices[i] if v != slot]
    if len(slots) == 5:
        variants.append((slots[3], slots[4], slots[2], slots[0], slots[1]))
    pool = set(candidates)
    return [c for c in dict.fromkeys(format_caption(v) for v in variants) if c in pool and c != caption]


# The tokenizer's own tokens, in front of the words (standins.CaptionTokenizer): T5's pad and
# end, an unknown word, the Q-Former's [CLS] [SEP] and [DEC], and the mask of T5's pretraining.
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>", "[CLS]", "[SEP]", "[DEC]", "<mask>")


def vocabulary() -> list[str]:
    """The words of the caption language, sorted."""
    return sorted({w for c in all_captions() for w in c.split()})


@dataclass
class DataConfig(JsonConfig):
    image_size: int = 48  # GRID cells of image_size // GRID pixels: one encoder patch per cell
    held_out_fraction: float = 0.15  # of all captions, seen only in the test split
    single_object_fraction: float = 0.5  # of training scenes: only they teach the nine places
    test_images_per_caption: int = 2
    split_seed: int = 0  # which captions are held out
    scale_range: tuple[float, float] = (0.75, 0.95)
    colour_jitter: int = 20  # +- per channel
    noise: float = 2.0  # pixel noise std, in 0..255 units

    def __post_init__(self) -> None:
        self.scale_range = tuple(self.scale_range)  # JSON gives a list back
        if self.image_size % GRID or self.image_size // GRID < 6:
            raise ValueError(f"DataConfig.image_size must be a multiple of {GRID} and >= {6 * GRID}, got {self.image_size}")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise ValueError(f"DataConfig.held_out_fraction must be in (0, 1), got {self.held_out_fraction}")
        if not 0.0 <= self.single_object_fraction <= 1.0:
            raise ValueError(f"DataConfig.single_object_fraction must be in [0, 1], got {self.single_object_fraction}")

    @property
    def cell_size(self) -> int:
        return self.image_size // GRID


@dataclass
class CaptionSplit:
    train: list[str]
    test: list[str]


def split_captions(config: DataConfig) -> CaptionSplit:
    """Hold out a random ``held_out_fraction`` of the one-object and of the two-object captions."""
    captions = all_captions()
    singles = [c for c in captions if not any(f" {r} " in c for r in RELATIONS)]
    pairs = [c for c in captions if c not in set(singles)]
    return hold_out((singles, pairs), config.held_out_fraction, np.random.default_rng([config.split_seed, 7]))


def hold_out(groups, fraction: float, rng: np.random.Generator) -> CaptionSplit:
    """A random ``fraction`` (at least one) of each group of captions held out, the rest for
    training; both in the groups' order."""
    train, test = [], []
    for group in groups:
        order = rng.permutation(len(group))
        n_test = max(1, round(fraction * len(group)))
        test += [group[i] for i in sorted(order[:n_test])]
        train += [group[i] for i in sorted(order[n_test:])]
    return CaptionSplit(train, test)


def scene_for_caption(caption: str, rng: np.random.Generator, config: DataConfig) -> Scene:
    """Draw one scene whose caption is ``caption``; where exactly, and how big, is left to chance."""
    words = caption.split()
    lo, hi = config.scale_range

    def obj(colour, shape, row, col):
        scale = float(rng.uniform(lo, hi))
        slack = int(config.cell_size * (1 - scale)) // 2
        dx, dy = (int(v) for v in rng.integers(-slack, slack + 1, size=2))
        return ShapeObject(colour, shape, row, col, scale, dx, dy)

    rel = next((r for r in RELATIONS if f" {r} " in caption), None)
    if rel is None:
        place = " ".join(words[3:])
        row, col = next(k for k, v in PLACES.items() if v == place)
        return Scene((obj(words[1], words[2], row, col),))
    first, second = (words[1], words[2]), (words[-2], words[-1])
    line = int(rng.integers(GRID))  # the shared row (or column)
    near, far = sorted(rng.choice(GRID, size=2, replace=False).tolist())
    if rel == "left of":
        return Scene((obj(*first, line, near), obj(*second, line, far)))
    return Scene((obj(*first, near, line), obj(*second, far, line)))


@functools.lru_cache(maxsize=None)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """A boolean (size, size) stencil of a shape."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    if shape == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= c**2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # apex up
        return (yy >= size * 0.05) & (np.abs(xx - c) <= (yy / size) * c)
    if shape == "cross":
        bar = size / 6
        return (np.abs(xx - c) <= bar) | (np.abs(yy - c) <= bar)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def render(scene: Scene, config: DataConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 image of the scene. ``rng`` adds colour jitter and pixel noise."""
    n, cell = config.image_size, config.cell_size
    image = np.empty((n, n, 3), dtype=np.float32)
    image[:] = BACKGROUND
    for o in scene.objects:
        size = max(3, int(round(o.scale * cell)))
        top = o.row * cell + (cell - size) // 2 + o.dy
        left = o.col * cell + (cell - size) // 2 + o.dx
        colour = np.array(COLOURS[o.colour], dtype=np.float32)
        if rng is not None and config.colour_jitter:
            colour = colour + rng.integers(-config.colour_jitter, config.colour_jitter + 1, size=3)
        image[top:top + size, left:left + size][shape_mask(o.shape, size)] = colour
    if rng is not None and config.noise:
        image += rng.standard_normal(size=image.shape, dtype=np.float32) * config.noise
    return np.clip(image, 0, 255).astype(np.uint8)


def to_tensor(images: np.ndarray | list[np.ndarray] | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], the image encoder's input."""
    if not isinstance(images, torch.Tensor):
        images = torch.from_numpy(np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images))
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass
class ImagePool:
    """Rendered images kept as uint8 (4x smaller than floats), with their captions and scenes."""

    images: torch.Tensor  # (N, H, W, 3) uint8
    captions: list[str]
    scenes: list[Scene] = field(repr=False, default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)

    def pixels(self, index=None) -> torch.Tensor:
        return to_tensor(self.images if index is None else self.images[index])  # (B, 3, H, W)


class ShapesDataset:
    """Images and captions of one split, generated on demand.

    ``"train"`` is unbounded: item ``i`` exists for every i >= 0 (a training run reads
    fresh images, never an epoch twice). ``"test"`` has ``test_images_per_caption``
    images of every held-out caption.
    """

    SPLITS = ("train", "test")

    def __init__(self, split: str, config: DataConfig | None = None, seed: int = 0):
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        self.split = split
        self.config = config or DataConfig()
        self.seed = seed
        captions = split_captions(self.config)
        self.captions = captions.train if split == "train" else captions.test
        singles = [c for c in self.captions if not any(f" {r} " in c for r in RELATIONS)]
        self._singles, self._pairs = singles, [c for c in self.captions if c not in set(singles)]

    def __len__(self) -> int:
        if self.split == "train":
            raise TypeError("the training split is unbounded; index it with any i >= 0")
        return len(self.captions) * self.config.test_images_per_caption

    def scene(self, index: int) -> tuple[Scene, np.random.Generator]:
        if index < 0 or (self.split == "test" and index >= len(self)):
            raise IndexError(f"index {index} out of range for the {self.split} split")
        rng = np.random.default_rng([self.seed, self.SPLITS.index(self.split), index])
        if self.split == "test":
            caption = self.captions[index // self.config.test_images_per_caption]
        elif rng.random() < self.config.single_object_fraction:
            caption = self._singles[int(rng.integers(len(self._singles)))]
        else:
            caption = self._pairs[int(rng.integers(len(self._pairs)))]
        return scene_for_caption(caption, rng, self.config), rng

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        scene, rng = self.scene(index)
        return render(scene, self.config, rng), scene.caption

    def pool(self, indices) -> ImagePool:
        images, captions, scenes = [], [], []
        for i in indices:
            scene, rng = self.scene(int(i))
            images.append(render(scene, self.config, rng))
            captions.append(scene.caption)
            scenes.append(scene)
        return ImagePool(torch.from_numpy(np.stack(images)), captions, scenes)
