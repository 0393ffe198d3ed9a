"""Training augmentation with albumentations (the only module of detseg that imports it).

`build_augment(cfg, task)` turns an `AugmentConfig` into an `Augmenter`: flips, an affine
zoom/shift/rotation, a bbox-safe random crop, colour jitter (brightness, contrast,
saturation, hue) and blur, each skipped when its probability is 0. Boxes go through
`A.BboxParams(format="pascal_voc")`, so they stay valid xyxy inside the image; those keeping
less than `min_visibility` of their area or `min_area` px^2 are dropped with their labels
(and instance masks). `cfg.albumentations`, a pipeline in albumentations' own `to_dict()`
form, replaces the fields. Mosaic needs four samples, so the loader does it.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np

from detseg.config import AugmentConfig
from detseg.data.images import PAD_VALUE
from detseg.data.sample import IGNORE_INDEX
from detseg.errors import DetsegError

__all__ = ["Augmenter", "build_augment"]

Task = Literal["detection", "segmentation"]


def _transforms(cfg: AugmentConfig, task: Task) -> list[A.BasicTransform]:
    """The transforms the config fields ask for, in the usual order: geometry, then photometry."""
    fill_mask = IGNORE_INDEX if task == "segmentation" else 0
    steps: list[A.BasicTransform] = []
    if cfg.hflip:
        steps.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.vflip:
        steps.append(A.VerticalFlip(p=cfg.vflip))
    if cfg.crop_p:
        steps.append(A.BBoxSafeRandomCrop(erosion_rate=0.0, p=cfg.crop_p))
    if cfg.affine_p:
        steps.append(
            A.Affine(
                scale=tuple(cfg.scale),
                translate_percent=(-cfg.translate, cfg.translate),
                rotate=(-cfg.rotate, cfg.rotate),
                border_mode=cv2.BORDER_CONSTANT,
                fill=PAD_VALUE,
                fill_mask=fill_mask,
                p=cfg.affine_p,
            )
        )
    if cfg.elastic_p:
        steps.append(
            A.ElasticTransform(
                alpha=cfg.elastic_alpha,
                sigma=cfg.elastic_sigma,
                border_mode=cv2.BORDER_REFLECT_101,
                p=cfg.elastic_p,
            )
        )
    if cfg.color_p:
        steps.append(
            A.ColorJitter(
                brightness=(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
                contrast=(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
                saturation=(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
                hue=(-cfg.hue, cfg.hue),
                p=cfg.color_p,
            )
        )
    if cfg.blur_p:
        steps.append(A.Blur(blur_limit=(3, 5), p=cfg.blur_p))
    return steps


def _pipeline(cfg: AugmentConfig, task: Task) -> A.Compose:
    """The Compose for `cfg`: from its fields, or from `cfg.albumentations` with our box handling."""
    min_visibility, min_area = cfg.min_visibility, cfg.min_area
    if cfg.albumentations is not None:
        try:
            loaded = A.from_dict(cfg.albumentations)
        except Exception as exc:  # albumentations raises many types for a bad dict
            raise DetsegError(
                f"train.augment.albumentations is not a valid albumentations pipeline: {exc}"
            ) from None
        transforms = list(loaded.transforms)
        user_boxes = loaded.processors.get("bboxes")
        if user_boxes is not None:
            min_visibility, min_area = user_boxes.params.min_visibility, user_boxes.params.min_area
    else:
        transforms = _transforms(cfg, task)
    boxes = A.BboxParams(
        format="pascal_voc",
        label_fields=["labels", "box_index"],
        min_visibility=min_visibility,
        min_area=min_area,
        clip=True,
        filter_invalid_bboxes=True,
    )
    return A.Compose(transforms, bbox_params=boxes)


class Augmenter:
    """A callable `(image, boxes, labels, masks=None, seed=None) -> (image, boxes, labels, masks)`.

    `image` RGB uint8 [H, W, 3]; `boxes` [N, 4] float32 xyxy px; `labels` [N] int32. For
    `task="detection"`, `masks` are instance masks [N, H, W] (they follow their boxes, and
    are dropped with them); for `task="segmentation"`, one semantic map [H, W] whose
    uncovered border becomes IGNORE_INDEX. `seed` makes the call reproducible whatever thread
    runs it: every thread has its own copy of the pipeline, re-seeded per call.
    """

    def __init__(self, pipeline: A.Compose, task: Task = "detection"):
        if task not in ("detection", "segmentation"):
            raise ValueError(f"task must be 'detection' or 'segmentation', got {task!r}")
        self.pipeline = pipeline
        self.task = task
        self._local = threading.local()

    def _thread_pipeline(self) -> A.Compose:
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = self._local.pipeline = copy.deepcopy(self.pipeline)
        return pipeline

    def __getstate__(self) -> dict[str, Any]:  # picklable for multiprocessing workers
        return {"pipeline": self.pipeline, "task": self.task}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["pipeline"], state["task"])

    def to_dict(self) -> dict[str, Any]:
        """The pipeline in albumentations' serialised form (what `AugmentConfig.albumentations` accepts)."""
        return A.to_dict(self.pipeline)

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        masks: np.ndarray | None = None,
        seed: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(labels, np.int32).reshape(-1)
        pipeline = self._thread_pipeline()
        if seed is not None:
            pipeline.set_random_seed(int(seed))
        data: dict[str, Any] = {
            "image": image,
            "bboxes": boxes,
            "labels": labels,
            "box_index": np.arange(len(boxes)),
        }
        if masks is not None:
            masks = np.asarray(masks)
            expected = 2 if self.task == "segmentation" else 3
            if masks.ndim != expected:
                raise ValueError(
                    f"{self.task} masks must have {expected} dimensions, got shape {masks.shape}"
                )
            data["mask" if expected == 2 else "masks"] = masks
        out = pipeline(**data)
        index = np.asarray(out["box_index"], np.int64)
        new_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        new_labels = np.asarray(out["labels"], np.int32).reshape(-1)
        if masks is None:
            new_masks = None
        elif self.task == "segmentation":
            new_masks = out["mask"]
        else:
            new_masks = (
                np.asarray(out["masks"])[index]
                if len(index)
                else np.zeros((0,) + out["image"].shape[:2], masks.dtype)
            )
        return out["image"], new_boxes, new_labels, new_masks


def build_augment(aug_cfg: AugmentConfig, task: Task = "detection") -> Augmenter | None:
    """The training augmentation described by `aug_cfg` (see the module docstring), or None
    when every transform is switched off (the loaders then pass images through as they are)."""
    if aug_cfg.albumentations is None and not _transforms(aug_cfg, task):
        return None
    return Augmenter(_pipeline(aug_cfg, task), task)
