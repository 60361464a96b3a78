"""The synthetic shapes world: captions agree with the pixels, splits are disjoint."""

import numpy as np
import pytest

from qformer_lite.miniature.data import (
    BACKGROUND, COLOURS, GRID, PLACES, RELATIONS, SHAPES, DataConfig, Scene, ShapeObject, ShapesDataset, all_captions, caption_of, format_caption, parse_caption, related_captions, render, scene_for_caption, shape_mask, split_captions, vocabulary,
)


def read_scene(image: np.ndarray, config: DataConfig) -> Scene:
    """Find the objects in an image from its pixels alone: colour by the nearest palette colour,
    shape by the stencil that matches best, place by the cell that holds the object."""
    cell = config.cell_size
    diff = np.abs(image.astype(int) - np.array(BACKGROUND)).sum(-1) > 60  # (H, W) object pixels
    objects = []
    for row in range(GRID):
        for col in range(GRID):
            block = diff[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell]
            if block.sum() < 5:
                continue
            ys, xs = np.nonzero(block)
            size = xs.max() - xs.min() + 1
            top, left = ys.max() - size + 1, xs.min()
            region = np.zeros((size, size), dtype=bool)
            for y, x in zip(ys, xs):
                if 0 <= y - top < size:
                    region[y - top, x - left] = True
            shape = max(SHAPES, key=lambda s: (shape_mask(s, size) == region).mean())
            pixels = image[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell][block].mean(0)
            colour = min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - pixels).sum())
            objects.append(ShapeObject(colour, shape, row, col))
    return Scene(tuple(objects))


@pytest.mark.parametrize("split", ["train", "test"])
def test_captions_agree_with_what_is_drawn(split):
    config = DataConfig()
    data = ShapesDataset(split, config, seed=3)
    for i in range(150):
        image, caption = data[i]
        assert image.shape == (config.image_size, config.image_size, 3) and image.dtype == np.uint8
        assert caption_of(read_scene(image, config)) == caption, f"item {i}"


def test_every_caption_can_be_drawn_and_read_back():
    config = DataConfig()
    rng = np.random.default_rng(0)
    for caption in all_captions():
        scene = scene_for_caption(caption, rng, config)
        assert scene.caption == caption
        assert caption_of(read_scene(render(scene, config, rng), config)) == caption


def test_caption_templates():
    red_circle = ShapeObject("red", "circle", 0, 0)
    blue_square = ShapeObject("blue", "square", 0, 2)
    assert caption_of(Scene((red_circle,))) == "a red circle at the top left"
    assert caption_of(Scene((blue_square, red_circle))) == "a red circle left of a blue square"
    below = ShapeObject("blue", "square", 2, 0)
    assert caption_of(Scene((below, red_circle))) == "a red circle above a blue square"
    with pytest.raises(ValueError, match="diagonal"):
        caption_of(Scene((red_circle, ShapeObject("blue", "square", 1, 1))))
    with pytest.raises(ValueError, match="one or two"):
        caption_of(Scene(()))


def test_caption_language():
    captions = all_captions()
    objects = len(COLOURS) * len(SHAPES)
    assert len(captions) == len(set(captions)) == objects * len(PLACES) + len(RELATIONS) * objects * (objects - 1)
    assert len(vocabulary()) == len(set(vocabulary()))
    for c in captions:
        assert format_caption(parse_caption(c)) == c
    with pytest.raises(ValueError, match="not a caption"):
        parse_caption("a red circle somewhere")


def test_splits_are_disjoint_and_cover_every_caption():
    split = split_captions(DataConfig())
    assert not set(split.train) & set(split.test)
    assert sorted(split.train + split.test) == sorted(all_captions())
    train = ShapesDataset("train", seed=1)
    test = ShapesDataset("test", seed=1)
    assert {train[i][1] for i in range(300)} <= set(split.train)
    assert {test[i][1] for i in range(len(test))} == set(split.test)
    assert len(test) == len(split.test) * DataConfig().test_images_per_caption


def test_held_out_combinations_are_made_of_seen_parts():
    """Every held-out caption is new as a whole, but each of its slots (a colour, a shape, a place,
    a relation, in its role) appears in training: the test asks for composition, not new words."""
    split = split_captions(DataConfig())
    seen = {(len(s), i, v) for c in split.train for s in [parse_caption(c)] for i, v in enumerate(s)}
    singles = [c for c in split.test if len(parse_caption(c)) == 3]
    assert singles and len(singles) < len(split.test)  # both one- and two-object scenes are held out
    for c in split.test:
        slots = parse_caption(c)
        assert c not in split.train
        assert all((len(slots), i, v) in seen for i, v in enumerate(slots))


def test_split_depends_only_on_split_seed():
    a, b = split_captions(DataConfig()), split_captions(DataConfig(split_seed=0))
    c = split_captions(DataConfig(split_seed=1))
    assert a.test == b.test and a.test != c.test


def test_items_are_deterministic_by_seed_and_index():
    a, b, c = ShapesDataset("train", seed=0), ShapesDataset("train", seed=0), ShapesDataset("train", seed=1)
    assert np.array_equal(a[5][0], b[5][0]) and a[5][1] == b[5][1]
    assert not np.array_equal(a[5][0], a[6][0])
    assert not np.array_equal(a[5][0], c[5][0])
    pool = a.pool(range(4))
    pixels = pool.pixels()
    assert pixels.shape == (4, 3, 48, 48)
    assert -1.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    assert pool.captions == [a[i][1] for i in range(4)]


def test_related_captions_are_one_change_away():
    split = split_captions(DataConfig())
    caption = "a red circle left of a blue square"
    related = related_captions(caption, all_captions())
    assert "a blue square left of a red circle" in related  # swapped
    assert "a red circle above a blue square" in related  # relation
    assert "a green circle left of a blue square" in related  # one colour
    assert caption not in related and "a green circle left of a green square" not in related
    for other in related_captions("a red circle at the top", split.train):
        assert "a red circle at the top" in related_captions(other, all_captions())


def test_bad_input():
    with pytest.raises(ValueError, match="split must be one of"):
        ShapesDataset("validation")
    with pytest.raises(ValueError, match="image_size"):
        DataConfig(image_size=50)
    with pytest.raises(ValueError, match="held_out_fraction"):
        DataConfig(held_out_fraction=1.5)
    with pytest.raises(IndexError):
        ShapesDataset("test")[10_000]
    with pytest.raises(TypeError, match="unbounded"):
        len(ShapesDataset("train"))
