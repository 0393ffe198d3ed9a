"""Augmentation from config: valid boxes, exact flips, seeded reproducibility, masks that follow, serialisation."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from detseg.config import AugmentConfig
from detseg.data import IGNORE_INDEX, build_augment
from detseg.errors import DetsegError

OFF = {"hflip": 0.0, "affine_p": 0.0, "color_p": 0.0}  # every default transform switched off


def _scene(
    width: int = 200, height: int = 120
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An image with three filled rectangles, their boxes, labels and instance masks."""
    boxes = np.array([[10, 10, 60, 50], [100, 30, 190, 110], [70, 80, 90, 100]], np.float32)
    image = np.full((height, width, 3), 30, np.uint8)
    masks = np.zeros((3, height, width), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        image[y1:y2, x1:x2] = 200 + 20 * i
        masks[i, y1:y2, x1:x2] = 1
    return image, boxes, np.array([0, 1, 2], np.int32), masks


def test_horizontal_flip_mirrors_boxes_exactly():
    image, boxes, labels, _ = _scene()
    aug = build_augment(AugmentConfig(**{**OFF, "hflip": 1.0}))
    out, out_boxes, out_labels, _ = aug(image, boxes, labels)
    # x' = W - x: [10, 10, 60, 50] -> [200 - 60, 10, 200 - 10, 50] = [140, 10, 190, 50]
    np.testing.assert_allclose(
        out_boxes,
        np.stack([200 - boxes[:, 2], boxes[:, 1], 200 - boxes[:, 0], boxes[:, 3]], 1),
        atol=1e-4,
    )
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(out_labels, labels)


def test_boxes_stay_valid_inside_the_image_under_heavy_augmentation():
    image, boxes, labels, _ = _scene()
    cfg = AugmentConfig(
        hflip=0.5,
        vflip=0.5,
        rotate=30,
        affine_p=1.0,
        scale=[0.5, 1.5],
        translate=0.3,
        crop_p=0.5,
        blur_p=0.3,
    )
    aug = build_augment(cfg)
    for seed in range(40):
        out, out_boxes, out_labels, _ = aug(image, boxes, labels, seed=seed)
        h, w = out.shape[:2]
        assert (
            out.dtype == np.uint8 and out_boxes.dtype == np.float32 and out_labels.dtype == np.int32
        )
        assert len(out_boxes) == len(out_labels) <= 3
        assert (out_boxes[:, 2] > out_boxes[:, 0]).all() and (
            out_boxes[:, 3] > out_boxes[:, 1]
        ).all()
        assert (
            out_boxes.min(initial=0) >= 0
            and (out_boxes[:, [0, 2]] <= w).all()
            and (out_boxes[:, [1, 3]] <= h).all()
        )


def test_a_seed_reproduces_the_call_and_different_seeds_differ():
    image, boxes, labels, _ = _scene()
    aug = build_augment(AugmentConfig(rotate=10, affine_p=1.0, color_p=1.0))
    first, again, other = (
        aug(image, boxes, labels, seed=11),
        aug(image, boxes, labels, seed=11),
        aug(image, boxes, labels, seed=12),
    )
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_instance_masks_follow_their_boxes():
    image, boxes, labels, masks = _scene()
    aug = build_augment(
        AugmentConfig(hflip=0.5, affine_p=1.0, scale=[0.6, 1.4], translate=0.25, color_p=0.0)
    )
    for seed in range(15):
        _, out_boxes, out_labels, out_masks = aug(image, boxes, labels, masks, seed=seed)
        assert len(out_masks) == len(out_boxes)
        for mask, box in zip(out_masks, out_boxes, strict=True):
            rows, cols = np.nonzero(mask)
            # nearest-neighbour mask warping versus exact box arithmetic: within about one pixel
            np.testing.assert_allclose(
                [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], box, atol=1.5
            )


def _shift_right(px: int) -> dict:
    """An albumentations pipeline (in its to_dict form) that moves everything `px` pixels right."""
    return A.to_dict(A.Compose([A.Affine(translate_px={"x": (px, px), "y": (0, 0)}, p=1.0)]))


def test_albumentations_dict_replaces_the_fields_and_min_visibility_drops_boxes():
    image, boxes, labels, _ = _scene()
    aug = build_augment(AugmentConfig(albumentations=_shift_right(120), min_visibility=0.3))
    _, out_boxes, out_labels, _ = aug(image, boxes, labels, seed=0)
    # +120 px on a 200 px wide image: [10..60] -> [130..180] whole; [100..190] -> [220..] gone;
    # [70..90] -> [190..210], 10 of 20 px visible = 50% >= 30%: kept and clipped to [190..200]
    np.testing.assert_allclose(out_boxes, [[130, 10, 180, 50], [190, 80, 200, 100]], atol=1e-3)
    np.testing.assert_array_equal(out_labels, [0, 2])
    strict = build_augment(AugmentConfig(albumentations=_shift_right(120), min_visibility=0.6))
    np.testing.assert_array_equal(strict(image, boxes, labels, seed=0)[2], [0])


def test_segmentation_fills_uncovered_mask_pixels_with_ignore():
    image, boxes, labels, _ = _scene()  # no pixel is 114 (the fill) before augmenting
    semantic = np.zeros(image.shape[:2], np.uint8)
    cfg = AugmentConfig(**{**OFF, "affine_p": 1.0}, scale=[1.0, 1.0], translate=0.3)
    aug = build_augment(cfg, task="segmentation")
    for seed in range(5):
        out, _, _, out_mask = aug(image, boxes, labels, semantic, seed=seed)
        filled = (out == 114).all(axis=2)
        assert filled.any()
        # the mask is IGNORE exactly where the image was filled: allow a one-pixel seam of interpolation
        seam = np.abs(np.diff(filled.astype(int), axis=1)).sum()
        assert np.logical_xor(out_mask == IGNORE_INDEX, filled).sum() <= seam + filled.shape[0]
        assert set(np.unique(out_mask)) <= {0, IGNORE_INDEX}
    with pytest.raises(ValueError, match="segmentation masks must have 2 dimensions"):
        aug(image, boxes, labels, np.zeros((3,) + image.shape[:2], np.uint8))


def test_elastic_deformation_bends_image_and_mask_alike():
    image, boxes, labels, masks = _scene()
    semantic = np.zeros(image.shape[:2], np.uint8)
    for i, mask in enumerate(masks):
        semantic[mask > 0] = i + 1
    aug = build_augment(AugmentConfig(**OFF, elastic_p=1.0, elastic_alpha=60.0, elastic_sigma=5.0), task="segmentation")
    out, _, _, out_mask = aug(image, boxes, labels, semantic, seed=3)
    assert (out_mask != semantic).mean() > 0.01  # the shapes' outlines really moved
    # the image's value at each pixel still names the mask's class there (interpolated edges aside)
    value_of_class = np.array([30, 200, 220, 240])
    assert (np.abs(out[..., 0].astype(int) - value_of_class[out_mask]) < 10).mean() > 0.97
    assert set(np.unique(out_mask)) <= {0, 1, 2, 3}  # nearest neighbour: no blended labels


def test_to_dict_round_trips_through_the_config():
    image, boxes, labels, _ = _scene()
    aug = build_augment(AugmentConfig(rotate=15, crop_p=0.5, blur_p=0.5))
    again = build_augment(AugmentConfig(albumentations=aug.to_dict()))
    for seed in range(5):
        a, b = aug(image, boxes, labels, seed=seed), again(image, boxes, labels, seed=seed)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.filterwarnings("ignore:Transform NoSuchTransform")
def test_empty_images_and_bad_pipelines():
    image, _, _, _ = _scene()
    out = build_augment(AugmentConfig(crop_p=1.0))(image, np.zeros((0, 4)), np.zeros(0), seed=0)
    assert out[1].shape == (0, 4) and out[2].shape == (0,)
    with pytest.raises(DetsegError, match="not a valid albumentations pipeline"):
        build_augment(
            AugmentConfig(albumentations={"transform": {"__class_fullname__": "NoSuchTransform"}})
        )


def test_no_transform_asked_means_no_augmenter():
    assert build_augment(AugmentConfig(**OFF)) is None  # loaders pass images through unchanged
    assert build_augment(AugmentConfig(**OFF, vflip=1.0)) is not None
