"""Single-object data: any detection Dataset reduced to one object per image, and its batches.

A classification + localization model predicts one class and one box per image.
`one_object_per_image(dataset, "largest")` keeps every image's largest (non-crowd) box;
`"single"` keeps only the images with exactly one object. Images left out are counted in the
returned dataset's `Summary` under `NO_OBJECT` / `SEVERAL_OBJECTS`, never silently.

`single_object_loader` batches such a dataset as `(images uint8 [B, S, S, 3] RGB pixels,
{"labels": int32 [B], "boxes": float32 [B, 4]})`, the box normalised (cx, cy, w, h) in the
letterboxed image (`detseg.boxes` format "rel_center_xywh"). Training augmentation moves the
box with the image; a transform that would lose the object is not applied to that sample
(`ObjectKeepingAugmenter` counts those).
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np

from detseg.boxes import convert_boxes
from detseg.data.augment import Augmenter
from detseg.data.loader import DetectionLoader
from detseg.data.sample import Dataset

__all__ = [
    "NO_OBJECT",
    "SEVERAL_OBJECTS",
    "ObjectKeepingAugmenter",
    "SingleBoxEncoder",
    "one_object_per_image",
    "single_object_loader",
]

NO_OBJECT = "image without an object (one object per image)"
SEVERAL_OBJECTS = "image with several objects (objects: single)"
SMALLER_OBJECTS = "smaller objects left out (objects: largest)"

Mode = Literal["largest", "single"]


def one_object_per_image(dataset: Dataset, mode: Mode = "largest") -> Dataset:
    """A copy of `dataset` whose every sample has exactly one box.

    Crowd boxes (COCO `iscrowd`) are never the object. `mode="largest"` keeps the box of
    largest area (the first on ties) and notes how many smaller ones were left out;
    `mode="single"` skips images with more than one object (a crowd region counts as
    several). Both skip images without any. The source dataset is not changed.
    """
    if mode not in ("largest", "single"):
        raise ValueError(f"mode must be 'largest' or 'single', got {mode!r}")
    summary = copy.deepcopy(dataset.summary)
    samples = []
    for sample in dataset.samples:
        crowd = sample.iscrowd if sample.iscrowd is not None else np.zeros(sample.num_boxes, bool)
        candidates = np.flatnonzero(~crowd)
        if not len(candidates):
            summary.skip(NO_OBJECT, sample.image_path)
            continue
        if mode == "single" and sample.num_boxes > 1:
            summary.skip(SEVERAL_OBJECTS, sample.image_path)
            continue
        wh = sample.boxes[candidates, 2:] - sample.boxes[candidates, :2]
        largest = candidates[np.argmax(wh[:, 0] * wh[:, 1])]
        summary.note(SMALLER_OBJECTS, sample.num_boxes - 1)
        samples.append(sample.select(np.arange(sample.num_boxes) == largest))
    return Dataset(
        samples,
        list(dataset.class_names),
        summary,
        category_ids=dataset.category_ids,
        image_dir=dataset.image_dir,
        mask_classes=dataset.mask_classes,
        mask_values=dataset.mask_values,
    )


class SingleBoxEncoder:
    """Targets of a localizer: `{"labels": int32 [B], "boxes": float32 [B, 4]}`, each box
    normalised (cx, cy, w, h) in the `input_size` letterbox. Every image must hold one box."""

    def __init__(self, input_size: int):
        self.input_size = int(input_size)

    def __call__(self, boxes: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, np.ndarray]:
        counts = [len(b) for b in boxes]
        if any(n != 1 for n in counts):
            raise ValueError(f"one box per image expected, got {counts}")
        side = self.input_size
        return {
            "labels": np.concatenate(labels).astype(np.int32),
            "boxes": convert_boxes(
                np.concatenate(boxes), "xyxy", "rel_center_xywh", height=side, width=side
            ),
        }


class ObjectKeepingAugmenter(Augmenter):
    """An `Augmenter` that never loses the object: when its transforms drop a box (moved out
    of the image, or less visible than `min_visibility`), the sample passes un-augmented,
    counted in `unaugmented` (approximate with several workers, like any shared counter)."""

    def __init__(self, pipeline, task: Literal["detection", "segmentation"] = "detection"):
        super().__init__(pipeline, task)
        self.unaugmented = 0

    def __call__(self, image, boxes, labels, masks=None, seed=None):
        out = super().__call__(image, boxes, labels, masks, seed)
        if len(out[1]) == len(boxes):
            return out
        self.unaugmented += 1
        return (
            image,
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int32),
            masks,
        )


def single_object_loader(
    dataset: Dataset,
    input_size: int,
    batch_size: int,
    *,
    augment: Augmenter | None = None,
    shuffle: bool = False,
    seed: int = 0,
    workers: int = 0,
    use_multiprocessing: bool = False,
) -> DetectionLoader:
    """Batches of a one-object-per-image dataset (see the module docstring); `augment` is
    wrapped in an `ObjectKeepingAugmenter`. Row `i` of batch `b` is sample
    `loader.batch_samples(b)[i]`, in dataset order when `shuffle` is False."""
    keeping = None if augment is None else ObjectKeepingAugmenter(augment.pipeline, augment.task)
    return DetectionLoader(
        dataset,
        input_size,
        batch_size,
        augment=keeping,
        encoder=SingleBoxEncoder(input_size),
        shuffle=shuffle,
        seed=seed,
        workers=workers,
        use_multiprocessing=use_multiprocessing,
    )
