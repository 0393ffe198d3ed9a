"""Semantic masks rasterised from COCO instance annotations (detseg.data.semantic)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from detseg.data import IGNORE_INDEX, Dataset, Sample
from detseg.data.coco import load_coco
from detseg.data.semantic import semantic_mask, with_semantic_masks
from detseg.errors import DetsegError


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def test_small_objects_stay_on_top_crowds_and_box_only_objects_are_ignored():
    sample = Sample(
        "a.jpg", 12, 10,
        boxes=[[0, 0, 8, 8], [2, 2, 4, 4], [9, 0, 12, 3], [9, 6, 12, 10]],
        labels=[0, 1, 2, 2],
        iscrowd=[False, False, True, False],
        masks=[square(0, 0, 8, 8), square(2, 2, 4, 4), square(9, 0, 12, 3), None],
    )  # fmt: skip
    class_map = semantic_mask(sample)
    expected = np.zeros((10, 12), np.uint8)
    expected[0:8, 0:8] = 1  # the large object, class 0 -> 1
    expected[2:4, 2:4] = 2  # the small one drawn over it
    expected[0:3, 9:12] = IGNORE_INDEX  # crowd
    expected[6:10, 9:12] = IGNORE_INDEX  # a box without a segmentation: pixels unknown
    assert np.array_equal(class_map, expected)


def test_coco_masks_agree_with_pycocotools_where_objects_do_not_overlap(coco100, tmp_path):
    """On real COCO polygons and crowd RLE: each pixel inside exactly one non-crowd object has
    that object's class + 1 (pycocotools annToMask as the reference), pixels in no object are
    background, crowd pixels are ignored."""
    path = coco100 / "instances_val2014_100.json"
    dataset = load_coco(path, check_images=False)
    semantic = with_semantic_masks(Dataset(dataset.samples[:12], dataset.class_names), tmp_path, path)
    assert semantic.mask_classes == ["background", *dataset.class_names]
    coco = COCO(str(path))
    label_of = {cid: i for i, cid in enumerate(dataset.category_ids)}
    for sample in semantic.samples:
        class_map = cv2.imread(str(sample.semantic_mask_path), cv2.IMREAD_UNCHANGED)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[sample.image_id]))
        masks = np.stack([coco.annToMask(a) for a in anns]).astype(bool)
        crowd = np.array([a["iscrowd"] for a in anns], bool)
        covered = masks[~crowd].sum(0)
        for ann, mask in zip(anns, masks, strict=True):
            alone = mask & (covered == 1) & ~masks[crowd].any(0)
            if not ann["iscrowd"] and alone.any():
                assert (class_map[alone] == label_of[ann["category_id"]] + 1).all()
        assert (class_map[(covered == 0) & ~masks[crowd].any(0)] == 0).all()
        assert (class_map[masks[crowd].any(0) & (covered == 0)] == IGNORE_INDEX).all()
    again = with_semantic_masks(Dataset(dataset.samples[:12], dataset.class_names), tmp_path, path)
    assert [s.semantic_mask_path for s in again.samples] == [s.semantic_mask_path for s in semantic.samples]


def test_a_dataset_without_segmentations_is_refused(tmp_path):
    boxes_only = Dataset([Sample("a.jpg", 10, 10, boxes=[[1, 1, 5, 5]], labels=[0])], ["cat"])
    with pytest.raises(DetsegError, match="ann.json: a segmenter needs masks"):
        with_semantic_masks(boxes_only, tmp_path, "ann.json")
