"""Object crops: every box of a detection Dataset as one labelled image for a classifier.

A `Crops` set does not copy pixels: it lists, for each crop, the source image, the region
to cut (`[N, 4]` float32 xyxy absolute pixels, context padding included, clipped to the
image) and the label. An image-folder Dataset (one whole-image box per sample) gives its
whole images with `padding=0`, so both kinds of classification data share one loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detseg.data.sample import Dataset, Summary

__all__ = ["Crops", "cut_crop", "object_crops"]


@dataclass
class Crops:
    """Crop `i` is `paths[i]` cut at `boxes[i]` ([N, 4] float32 xyxy px) with label `labels[i]` ([N] int32).

    `summary` is the source dataset's, plus the boxes left out here (crowd regions).
    `root` is the folder the source images came from (for error messages).
    """

    paths: list[Path]
    boxes: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    summary: Summary
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        """Crops per class, `[C]` int64."""
        return np.bincount(self.labels, minlength=self.num_classes)


def object_crops(dataset: Dataset, padding: float = 0.0) -> Crops:
    """One crop per non-crowd box of `dataset`, grown by `padding` x its width/height on each side.

    Crowd boxes (COCO `iscrowd`: a group, not one object) are left out and counted in the
    summary as skipped.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    paths: list[Path] = []
    boxes, labels = [], []
    summary = dataset.summary
    for sample in dataset.samples:
        keep = np.ones(sample.num_boxes, bool)
        if sample.iscrowd is not None:
            keep = ~sample.iscrowd
            summary.skip(
                "crowd box (not one object), no crop cut",
                sample.image_path,
                int(sample.iscrowd.sum()),
            )
        kept = sample.boxes[keep]
        wh = kept[:, 2:] - kept[:, :2]
        grown = kept + padding * np.hstack([-wh, wh])
        limits = np.array([sample.width, sample.height] * 2, np.float32)
        boxes.append(np.clip(grown, 0, limits))
        labels.append(sample.labels[keep])
        paths += [sample.image_path] * len(kept)
    return Crops(
        paths,
        np.concatenate(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32),
        np.concatenate(labels).astype(np.int32) if labels else np.zeros((0,), np.int32),
        list(dataset.class_names),
        summary,
        dataset.image_dir,
    )


def cut_crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The pixels of `image` [H, W, ...] covered by `box` (xyxy px): every pixel the box touches, at least one."""
    h, w = image.shape[:2]
    x1 = min(max(int(np.floor(box[0])), 0), w - 1)
    y1 = min(max(int(np.floor(box[1])), 0), h - 1)
    x2 = min(max(int(np.ceil(box[2])), x1 + 1), w)
    y2 = min(max(int(np.ceil(box[3])), y1 + 1), h)
    return image[y1:y2, x1:x2]
