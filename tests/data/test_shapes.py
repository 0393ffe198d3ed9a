"""The built-in shapes dataset: deterministic, consistent annotations, cached; and its video."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from detseg.config import ShapesConfig
from detseg.data import (
    SHAPES_CLASSES,
    load_shapes,
    load_video_truth,
    read_image,
    write_shapes_video,
)
from detseg.data.masks import read_mask
from detseg.data.shapes import generate_shapes, shapes_dir
from detseg.errors import DetsegError

SMALL = ShapesConfig(
    num_train=40, num_val=4, image_size=128, min_size=14, max_size=48, max_objects=6, seed=3
)


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes_cache")


@pytest.fixture(scope="module")
def train(shapes_cache):
    return load_shapes(SMALL, "train", shapes_cache)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None] - inter)


def test_class_names_and_object_counts(train):
    assert train.class_names == SHAPES_CLASSES == ["circle", "square", "triangle"]
    assert len(train) == 40
    counts = [s.num_boxes for s in train.samples]
    assert min(counts) >= SMALL.min_objects and max(counts) <= SMALL.max_objects
    assert set(np.concatenate([s.labels for s in train.samples]).tolist()) == {0, 1, 2}


def test_boxes_are_inside_large_enough_and_some_overlap_or_touch_the_border(train):
    boxes = np.concatenate([s.boxes for s in train.samples])
    assert boxes.min() >= 0 and boxes.max() <= SMALL.image_size
    assert (boxes[:, 2:] - boxes[:, :2]).min() >= 12  # the 12 px floor that keeps shapes learnable
    assert ((boxes[:, :2] == 0) | (boxes[:, 2:] == SMALL.image_size)).any(
        axis=1
    ).sum() >= 3  # cut by the border
    overlapping = 0
    for s in train.samples:
        iou = _iou_matrix(s.boxes, s.boxes)
        np.fill_diagonal(iou, 0)
        overlapping += int((iou > 0).any())
    assert overlapping >= 3


def test_areas_and_boxes_agree_with_the_semantic_masks(train):
    for s in train.samples[:15]:
        mask = read_mask(s.semantic_mask_path)  # 0 background, label + 1
        assert mask.shape == (s.height, s.width)
        # every visible pixel belongs to exactly one shape, so the per-class pixel counts equal the summed areas
        per_class = np.bincount(mask.ravel(), minlength=4)[1:]
        expected = np.bincount(s.labels, weights=s.area, minlength=3)
        np.testing.assert_array_equal(per_class, expected)
        for box, label in zip(s.boxes.astype(int), s.labels, strict=True):
            x1, y1, x2, y2 = box
            inside = mask[y1:y2, x1:x2] == label + 1
            assert (
                inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            )  # tight box


def test_polygons_decode_to_exactly_the_visible_pixels(train):
    from detseg.data import decode_instance_masks

    for s in train.samples[:10]:
        masks = decode_instance_masks(s)  # pycocotools' rasterisation of the polygons
        semantic = read_mask(s.semantic_mask_path)
        assert (masks.sum(axis=0) <= 1).all()  # visible parts do not overlap
        np.testing.assert_array_equal(masks.sum(axis=(1, 2)), s.area)
        for mask, label in zip(masks, s.labels, strict=True):
            assert (semantic[mask.astype(bool)] == label + 1).all()


def test_generation_is_deterministic_and_cached(shapes_cache, tmp_path, train):
    root = shapes_dir(SMALL, shapes_cache)
    stamp = (root / "train/annotations.json").stat().st_mtime_ns
    again = load_shapes(SMALL, "train", shapes_cache)
    assert (root / "train/annotations.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    other = generate_shapes(SMALL, tmp_path)
    assert json.loads((other / "train/annotations.json").read_text()) == json.loads(
        (root / "train/annotations.json").read_text()
    )
    name = again.samples[7].image_path.name
    np.testing.assert_array_equal(
        read_image(other / "train/images" / name), read_image(root / "train/images" / name)
    )
    different = generate_shapes(SMALL.model_copy(update={"seed": 4}), tmp_path)
    assert different != other
    assert (different / "train/annotations.json").read_text() != (
        other / "train/annotations.json"
    ).read_text()


def test_missing_split_names_it(shapes_cache):
    with pytest.raises(DetsegError, match="no split 'test'.*num_test"):
        load_shapes(SMALL, "test", shapes_cache)


def test_shapes_video_truth_covers_every_changed_pixel(tmp_path):
    path = tmp_path / "v.mp4"
    truth = write_shapes_video(path, 12, 160, seed=1)
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame.astype(np.int16))
    capture.release()
    assert len(frames) == len(truth) == 12 and frames[0].shape == (160, 160, 3)
    assert 3 <= len(truth[0][0]) <= 5
    moved = 0
    for k in range(11):
        (boxes_a, labels_a), (boxes_b, labels_b) = truth[k], truth[k + 1]
        np.testing.assert_array_equal(labels_a, labels_b)
        assert boxes_a.min() >= 0 and boxes_a.max() <= 160
        iou = _iou_matrix(boxes_a, boxes_a)
        np.fill_diagonal(iou, 0)
        assert (iou == 0).all()  # shapes never overlap
        moved += int(np.abs(boxes_a - boxes_b).max() > 0)
        # every pixel that changed between two frames lies in a shape's box of one of them (8 px codec margin)
        changed = np.abs(frames[k + 1] - frames[k]).max(axis=2) > 60
        covered = np.zeros_like(changed)
        for x1, y1, x2, y2 in np.concatenate([boxes_a, boxes_b]).astype(int):
            covered[max(y1 - 8, 0) : y2 + 8, max(x1 - 8, 0) : x2 + 8] = True
        assert changed.sum() > 0 and (changed & ~covered).sum() <= 0.01 * changed.sum()
    assert moved == 11
    assert (
        write_shapes_video(tmp_path / "w.mp4", 12, 160, seed=1)[5][0].tolist()
        == truth[5][0].tolist()
    )


def test_shapes_config_can_write_the_video_with_its_truth(tmp_path):
    cfg = ShapesConfig(
        num_train=2, num_val=1, image_size=96, min_size=12, max_size=30, video_frames=5
    )
    root = generate_shapes(cfg, tmp_path)
    truth = load_video_truth(root / "video_boxes.json")
    assert len(truth) == 5 and (root / "video.mp4").stat().st_size > 0
    np.testing.assert_array_equal(
        truth[0][0], write_shapes_video(tmp_path / "x.mp4", 5, 96, cfg.seed)[0][0]
    )
