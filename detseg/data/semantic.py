"""Semantic masks rasterised from instance annotations (COCO polygons or RLE), for segmenters.

Class index 0 is "background" and object class `k` becomes `k + 1`. Crowd regions and objects
with no segmentation (their box) are IGNORE_INDEX: their pixels are unknown, so neither the
loss nor the metrics count them. Crowd regions are drawn first and real objects from the
largest to the smallest, so a small object lying on a large one stays visible. Each mask is
written once as a PNG under a cache folder, named by a hash of its image and annotations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np

from detseg.data.coco import decode_instance_masks
from detseg.data.sample import IGNORE_INDEX, Dataset, Sample
from detseg.errors import DetsegError

__all__ = ["BACKGROUND", "semantic_mask", "with_semantic_masks"]

BACKGROUND = "background"
log = logging.getLogger("detseg")


def _segmented(sample: Sample) -> np.ndarray:
    """`[N]` bool: which of a sample's objects have a segmentation (polygons or RLE)."""
    return np.array([bool(seg) for seg in (sample.masks or [None] * sample.num_boxes)], bool).reshape(-1)


def semantic_mask(sample: Sample) -> np.ndarray:
    """The `[H, W]` uint8 class map of a sample's instance segmentations (see the module)."""
    out = np.zeros((sample.height, sample.width), np.uint8)
    masks = decode_instance_masks(sample).astype(bool)
    segmented = _segmented(sample)
    crowd = sample.iscrowd if sample.iscrowd is not None else np.zeros(sample.num_boxes, bool)
    for i in np.flatnonzero(~segmented):  # boxes only: pixels unknown
        x0, y0, x1, y1 = np.round(sample.boxes[i]).astype(int)
        out[y0:y1, x0:x1] = IGNORE_INDEX
    area = masks.reshape(len(masks), -1).sum(1)
    for i in sorted(np.flatnonzero(segmented), key=lambda i: (not crowd[i], -area[i])):
        out[masks[i]] = IGNORE_INDEX if crowd[i] else sample.labels[i] + 1
    return out


def _cache_name(sample: Sample) -> str:
    """A file name that changes whenever the image path or any annotation does."""
    key = json.dumps(
        [str(sample.image_path), sample.width, sample.height, sample.boxes.tolist(), sample.labels.tolist(),
         None if sample.iscrowd is None else sample.iscrowd.tolist(), sample.masks],
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha1(key.encode()).hexdigest()[:20] + ".png"


def with_semantic_masks(dataset: Dataset, cache_dir: str | Path, source: str | Path | None = None) -> Dataset:
    """`dataset` with a semantic mask PNG per sample (rasterised once into `cache_dir`), its
    mask classes "background" + its class names. Raises DetsegError when no object of the
    dataset has a segmentation (`source` names it); objects without one are counted in a log line."""
    if not any(_segmented(s).any() for s in dataset.samples):
        raise DetsegError("a segmenter needs masks, and no object here has a segmentation (polygons or RLE)", source)
    folder = Path(cache_dir) / "semantic"
    folder.mkdir(parents=True, exist_ok=True)
    samples, unsegmented = [], 0
    for sample in dataset.samples:
        unsegmented += int((~_segmented(sample)).sum())
        path = folder / _cache_name(sample)
        if not path.is_file():
            tmp = path.with_suffix(".tmp.png")
            if not cv2.imwrite(str(tmp), semantic_mask(sample)):
                raise DetsegError("cannot write a semantic mask", tmp)
            tmp.replace(path)
        samples.append(dataclasses.replace(sample, semantic_mask_path=path))
    if unsegmented:
        log.warning("%s: %d objects have no segmentation; their boxes are left unlabelled", source or "data", unsegmented)
    classes = [BACKGROUND, *dataset.class_names]
    return dataclasses.replace(
        dataset, samples=samples, mask_classes=classes, mask_values=list(range(len(classes)))
    )
