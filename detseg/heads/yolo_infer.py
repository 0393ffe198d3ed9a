"""Fast Python inference with a trained `YoloDetector`: images in, boxes in original pixels out.

`Detector` letterboxes RGB uint8 images, runs the model and the candidate decoding as one
compiled call per batch (`predict_on_batch`: `Model.predict` costs ~50 ms of overhead per
call), then runs OpenCV's NMS on the host (`detseg.boxes.nms`), which is faster than the
in-graph NMS of `predict_step` and gives the same detections, and maps the boxes back to the
original images.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from detseg.boxes import nms
from detseg.data.images import letterbox, unletterbox_boxes
from detseg.errors import DetsegError

__all__ = ["Detector", "host_nms"]


class _CandidateModel(keras.Model):
    """uint8 images -> the detector's top-k candidates, compiled by `predict_on_batch`."""

    def __init__(self, detector: keras.Model):
        super().__init__(name=f"{detector.name}_candidates")
        self.detector = detector

    def call(self, images):
        return self.detector.candidates(self.detector(images, training=False))


def host_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    score_thr: float,
    iou_thr: float,
    max_det: int,
    agnostic: bool = False,
) -> list[dict[str, np.ndarray]]:
    """NMS of a batch of sorted candidates (boxes [B, K, 4], scores [B, K], labels [B, K]).

    Returns one dict per image: boxes [n, 4], scores [n], labels [n] int32, best first.
    """
    results = []
    for image_boxes, image_scores, image_labels in zip(boxes, scores, labels, strict=True):
        keep = nms(
            image_boxes,
            image_scores,
            iou_thr,
            labels=None if agnostic else image_labels,
            score_thr=score_thr,
            max_det=max_det,
        )
        results.append(
            {
                "boxes": image_boxes[keep].astype(np.float32),
                "scores": image_scores[keep].astype(np.float32),
                "labels": image_labels[keep].astype(np.int32),
            }
        )
    return results


class Detector:
    """Run a `YoloDetector` on RGB uint8 images of any size.

    Args:
        model: a trained `YoloDetector`.
        input_size: letterbox side; defaults to (and must equal) the model's input size.
        score_thr, iou_thr, max_det, agnostic: post-processing (see `PredictConfig`).
        batch_size: images per compiled model call.

    `detector(images)` returns, per image, {"boxes" [n, 4] xyxy in original pixels (clipped to
    the image), "scores" [n], "labels" [n] int32}, best score first.
    """

    def __init__(
        self,
        model: keras.Model,
        input_size: int | None = None,
        score_thr: float = 0.25,
        iou_thr: float = 0.45,
        max_det: int = 100,
        agnostic: bool = False,
        batch_size: int = 16,
    ):
        if input_size is not None and input_size != model.input_size:
            raise DetsegError(
                f"this model takes {model.input_size} px inputs, got input_size={input_size}"
            )
        if batch_size < 1:
            raise DetsegError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.input_size = model.input_size
        self.score_thr = score_thr
        self.iou_thr = iou_thr
        self.max_det = max_det
        self.agnostic = agnostic
        self.batch_size = batch_size
        self._candidates = _CandidateModel(model)

    def candidates(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k candidates (boxes in input pixels, scores, labels) of letterboxed uint8 images [B, S, S, 3]."""
        boxes, scores, labels = self._candidates.predict_on_batch(batch)
        return np.asarray(boxes), np.asarray(scores), np.asarray(labels)

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            boxed = [letterbox(self._check(image), self.input_size) for image in chunk]
            batch = np.stack([image for image, _ in boxed])
            found = host_nms(
                *self.candidates(batch), self.score_thr, self.iou_thr, self.max_det, self.agnostic
            )
            for detections, (_, params) in zip(found, boxed, strict=True):
                detections["boxes"] = unletterbox_boxes(detections["boxes"], params)
                results.append(detections)
        return results

    @staticmethod
    def _check(image: np.ndarray) -> np.ndarray:
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", None)
            raise DetsegError(f"Detector takes RGB uint8 images [H, W, 3], got shape/dtype {got}")
        return image
