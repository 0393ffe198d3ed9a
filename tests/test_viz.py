"""Drawing boxes, captions and masks; the gallery PNG."""

from __future__ import annotations

import cv2
import numpy as np

from detseg.data import Dataset, DetectionLoader, Sample
from detseg.viz import GalleryTargets, class_color, draw_detections, draw_semantic, save_gallery


def test_boxes_are_drawn_in_their_class_colour_on_a_copy():
    image = np.zeros((60, 80, 3), np.uint8)
    out = draw_detections(image, np.array([[10, 20, 50, 55]]), np.array([1]), thickness=1)
    assert (image == 0).all()  # the input is untouched
    assert (
        out[40, 10].tolist() == list(class_color(1)) == out[40, 50].tolist()
    )  # left and right edges
    assert (out[30:50, 20:40] == 0).all()  # inside the box stays as it was
    assert class_color(1) != class_color(2) and class_color(1) == class_color(
        21
    )  # 20 colours, cycling


def test_captions_show_the_class_name_and_score():
    image = np.zeros((60, 120, 3), np.uint8)
    plain = draw_detections(image, np.array([[10, 30, 60, 55]]), np.array([0]), thickness=1)
    named = draw_detections(
        image, np.array([[10, 30, 60, 55]]), np.array([0]), np.array([0.87]), ["cat"], thickness=1
    )
    assert not np.array_equal(plain[:30], named[:30])  # a longer caption above the box
    assert (named[:30, 70:] == 0).all()  # but not past its width ("cat 0.87" is < 60 px)


def test_no_boxes_leaves_the_image_as_it_was():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(draw_detections(image, np.zeros((0, 4)), np.zeros(0)), image)


def test_instance_and_semantic_masks_are_blended():
    image = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 20:25, 20:25] = True
    out = draw_detections(
        image, np.array([[1, 18, 39, 39]]), np.array([0]), masks=mask, alpha=0.5
    )  # caption above y=18
    # class 0 is RGB (230, 25, 75): 100 * 0.5 + 230 * 0.5 = 165, 100 * 0.5 + 25 * 0.5 = 62.5 -> 62, 87.5 -> 87
    assert out[22, 22].tolist() == [165, 62, 87] and out[30, 30].tolist() == [100, 100, 100]
    classes = np.zeros((40, 40), np.uint8)
    classes[:, 20:] = 255  # ignored
    tinted = draw_semantic(image, classes, alpha=0.5)
    assert tinted[0, 0].tolist() == [165, 62, 87] and tinted[0, 39].tolist() == [100, 100, 100]


def test_gallery_tiles_the_samples(tmp_path):
    samples = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.full((40, 60, 3), 50 * i, np.uint8))
        samples.append(Sample(path, 60, 40, [[5, 5, 30, 30]], [i % 2]))
    loader = DetectionLoader(Dataset(samples, ["a", "b"]), 64, 3, encoder=GalleryTargets(semantic=False))
    out = save_gallery(loader, tmp_path / "g.png", columns=2)
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * 64 + 4, 2 * 64 + 4, 3)  # 2 x 2 tiles of 64 px with a 4 px gap
    assert (grid[68:, 68:] == 255).all()  # the fourth tile is empty
