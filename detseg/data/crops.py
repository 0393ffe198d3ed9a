"""Object crops: every box of a detection Dataset as one labelled image for a classifier.

A `Crops` set does not copy pixels: it lists, for each crop, the source image, the region
to cut (`[N, 4]` float32 xyxy absolute pixels, context padding included, clipped to the
image) and the label. An image-folder Dataset (one whole-image box per sample) gives its
whole images with `padding=0`, so both kinds of classification data share one loader.

`window_crops` makes the data of a sliding-window classifier: square windows around the
objects and random background windows that overlap no object, as the detector will see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detseg.boxes import box_iou
from detseg.data.sample import Dataset, Summary

__all__ = ["BACKGROUND", "Crops", "background_crops", "cut_crop", "object_crops", "window_crops"]

BACKGROUND = "background"
"""Class name of the background windows, the last class of `window_crops`."""

BACKGROUND_TRIES = 10
"""Random candidate windows drawn per background window wanted (an image crowded with
objects may have fewer free windows; the shortfall is counted)."""
NO_BACKGROUND = "background window not found (every candidate overlaps a box)"


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


def _square_inside(boxes: np.ndarray, limits: np.ndarray, padding: float) -> np.ndarray:
    """Squares `[N, 4]` xyxy centred on `boxes`, of side max(w, h) * (1 + 2 padding), moved
    (not cut) to lie inside images of `limits` `[N, 2]` (width, height); no larger than them."""
    wh = boxes[:, 2:] - boxes[:, :2]
    side = np.minimum(wh.max(axis=1) * (1 + 2 * padding), limits.min(axis=1))[:, None]
    corner = np.clip((boxes[:, :2] + boxes[:, 2:] - side) / 2, 0, limits - side)
    return np.hstack([corner, corner + side]).astype(np.float32)


def background_crops(
    dataset: Dataset,
    per_image: int,
    sides: Sequence[float],
    *,
    max_iou: float,
    label: int,
    seed: int = 0,
) -> Crops:
    """Up to `per_image` random square windows per image, labelled `label`, each overlapping
    every box of the image (crowd regions included) by an IoU below `max_iou`.

    A window's side is drawn from `sides` (pixels; capped at the image's shorter side); every
    other candidate lies anywhere in the image, the rest are centred within one side of a
    random object, so that windows partly on an object (where a sliding-window detector
    would fire with a poorly placed box) are among the background. Images where fewer free
    windows turn up among `BACKGROUND_TRIES * per_image` candidates give fewer, counted in
    the dataset's summary (the `Crops` share it, as `object_crops` does). Same `seed`, same
    windows.
    """
    if per_image < 1 or not sides or min(sides) <= 0 or not 0 < max_iou <= 1:
        raise ValueError(
            f"need per_image >= 1, sides > 0 and 0 < max_iou <= 1; got per_image={per_image}, "
            f"sides={list(sides)}, max_iou={max_iou}"
        )
    rng = np.random.default_rng(seed)
    summary = dataset.summary
    paths: list[Path] = []
    windows = []
    for sample in dataset.samples:
        k = BACKGROUND_TRIES * per_image
        side = np.minimum(
            rng.choice(np.asarray(sides, np.float64), k), min(sample.width, sample.height)
        )
        room = np.array([sample.width, sample.height]) - side[:, None]
        corner = rng.uniform(0, 1, (k, 2)) * room
        if sample.num_boxes:  # half the candidates near an object: the hard negatives
            near = sample.boxes[rng.integers(0, sample.num_boxes, k)]
            centre = (near[:, :2] + near[:, 2:]) / 2 + rng.uniform(-1, 1, (k, 2)) * side[:, None]
            shifted = np.clip(centre - side[:, None] / 2, 0, room)
            corner = np.where((np.arange(k) % 2 == 1)[:, None], shifted, corner)
        candidates = np.hstack([corner, corner + side[:, None]]).astype(np.float32)
        free = candidates
        if sample.num_boxes:
            free = candidates[box_iou(candidates, sample.boxes).max(axis=1) < max_iou]
        free = free[:per_image]
        summary.skip(NO_BACKGROUND, sample.image_path, per_image - len(free))
        windows.append(free)
        paths += [sample.image_path] * len(free)
    boxes = np.concatenate(windows) if windows else np.zeros((0, 4), np.float32)
    return Crops(
        paths,
        boxes,
        np.full(len(boxes), label, np.int32),
        [*dataset.class_names, BACKGROUND],
        summary,
        dataset.image_dir,
    )


def window_crops(
    dataset: Dataset,
    padding: float,
    background_per_image: int,
    background_sides: Sequence[float],
    *,
    max_iou: float,
    seed: int = 0,
) -> Crops:
    """The data of a sliding-window classifier: each non-crowd object as a square window
    (side max(w, h) grown by `padding` on each side, moved inside the image), then the
    `background_crops` of every image; classes are the dataset's plus BACKGROUND, last.

    Square windows match what the detector classifies: image squares, never letterboxed.
    """
    objects = object_crops(dataset, padding=0.0)
    sizes = np.array([[s.width, s.height] for s in dataset.samples], np.float32).reshape(-1, 2)
    per_sample = [
        s.num_boxes - (0 if s.iscrowd is None else int(s.iscrowd.sum())) for s in dataset.samples
    ]
    squares = _square_inside(objects.boxes, np.repeat(sizes, per_sample, axis=0), padding)
    background = background_crops(
        dataset,
        background_per_image,
        background_sides,
        max_iou=max_iou,
        label=dataset.num_classes,
        seed=seed,
    )
    return Crops(
        objects.paths + background.paths,
        np.concatenate([squares, background.boxes]),
        np.concatenate([objects.labels, background.labels]),
        background.class_names,
        dataset.summary,
        dataset.image_dir,
    )
