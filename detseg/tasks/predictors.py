"""Task models behind the stream runner's `Predictor` contract: infer, draw, record, describe.

`DetectionPredictor` wraps any callable with the `Detector` contract (boxes in original
pixels); `ClassificationPredictor` wraps a classifier's probabilities as its top-k labels.
Each draws its own results and writes its own JSONL fields, so `detseg.stream` carries any
task's result without knowing what it is.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from detseg.data.images import letterbox
from detseg.errors import DetsegError
from detseg.metrics.detection import encode_masks
from detseg.stream.sinks import draw_text_block
from detseg.viz import draw_detections, draw_legend, draw_semantic, paint_semantic, untinted_labels

__all__ = ["ClassificationPredictor", "DetectionPredictor", "SegmentationPredictor"]

Detections = dict[str, np.ndarray]
"""One frame's detections: boxes [N, 4] float32 xyxy original pixels, scores [N] float32,
labels [N] int32, and masks [N, H, W] when the model gives them."""


def _checked_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
        raise DetsegError(f"class_names must be a list of strings, got {class_names!r}")
    return list(class_names)


def _named(labels: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """The class name of each label; a label without a name is a user error."""
    bad = labels[(labels < 0) | (labels >= len(class_names))]
    if bad.size:
        raise DetsegError(f"label {int(bad[0])} has no class name ({len(class_names)} names)")
    return [class_names[i] for i in labels]


def _rounded(values: np.ndarray, digits: int) -> list:
    """A JSON-ready nested list of `values` rounded to `digits` decimals (in float64, so the
    JSON holds 0.1234, not the float32 0.12340000271797180)."""
    return np.round(np.asarray(values, np.float64), digits).tolist()


def _checked_detections(position: int, result: Any) -> Detections:
    """A detector's result for the image at `position` of its call, checked as arrays."""
    try:
        boxes = np.asarray(result["boxes"], np.float32).reshape(-1, 4)
        scores = np.asarray(result["scores"], np.float32).reshape(-1)
        labels = np.asarray(result["labels"], np.int32).reshape(-1)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"infer result for image {position} is not boxes/scores/labels: {exc}"
        ) from exc
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(
            f"infer result for image {position}: "
            f"{len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
        )
    detections = {"boxes": boxes, "scores": scores, "labels": labels}
    if result.get("masks") is not None:
        detections["masks"] = result["masks"]
    return detections


class DetectionPredictor:
    """A detector as a stream `Predictor`.

    `infer` has the `Detector` contract: RGB uint8 frames of any size -> per frame
    {"boxes" [N, 4] xyxy original pixels, "scores" [N], "labels" [N], optional "masks"
    [N, H, W]}; each result is checked and returned as arrays (ValueError when it breaks the
    contract). Drawing is `detseg.viz.draw_detections`.
    """

    def __init__(
        self, infer: Callable[[list[np.ndarray]], list[dict[str, Any]]], class_names: Sequence[str]
    ):
        self.infer = infer
        self.class_names = _checked_names(class_names)

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        return [_checked_detections(i, result) for i, result in enumerate(self.infer(images))]

    def draw(self, image: np.ndarray, result: Detections) -> np.ndarray:
        """A copy of `image` with the boxes (and masks) drawn and captioned "name score"."""
        return draw_detections(
            image,
            result["boxes"],
            result["labels"],
            scores=result["scores"],
            class_names=self.class_names,
            masks=result.get("masks"),
        )

    def record(self, result: Detections) -> dict[str, Any]:
        """Boxes `[x1, y1, x2, y2]` in original pixels rounded to 0.01 px, scores to 1e-4,
        labels and their class names."""
        return {
            "boxes": _rounded(result["boxes"], 2),
            "scores": _rounded(result["scores"], 4),
            "labels": result["labels"].tolist(),
            "classes": _named(result["labels"], self.class_names),
        }

    def describe(self, result: Detections) -> str:
        """Detections per class, most first: "2 circle, 1 square" (or "no detections")."""
        counts = collections.Counter(_named(result["labels"], self.class_names))
        if not counts:
            return "no detections"
        return ", ".join(f"{count} {name}" for name, count in counts.most_common())


class ClassificationPredictor:
    """A classifier as a stream `Predictor`: each frame's `topk` labels, most probable first.

    `model_fn` takes a uint8 batch [B, S, S, 3] (frames letterboxed to `input_size`, as an
    export takes them) and returns class probabilities [B, C], C = len(class_names). A result is
    {"labels" [k] int32, "scores" [k] float32} with k = min(topk, C).
    """

    def __init__(
        self,
        model_fn: Callable[[np.ndarray], Any],
        class_names: Sequence[str],
        input_size: int,
        topk: int = 3,
    ):
        if topk < 1:
            raise DetsegError(f"topk must be >= 1, got {topk}")
        self.model_fn = model_fn
        self.class_names = _checked_names(class_names)
        self.input_size = input_size
        self.topk = min(topk, len(self.class_names))

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        batch = np.stack([letterbox(image, self.input_size)[0] for image in images])
        probs = np.asarray(self.model_fn(batch), np.float32)
        if probs.shape != (len(images), len(self.class_names)):
            raise ValueError(
                f"the classifier returned probabilities of shape {probs.shape} for "
                f"{len(images)} images and {len(self.class_names)} classes"
            )
        top = np.argsort(-probs, axis=1, kind="stable")[:, : self.topk]
        return [
            {"labels": labels.astype(np.int32), "scores": p[labels]}
            for p, labels in zip(probs, top, strict=True)
        ]

    def _lines(self, result: dict[str, np.ndarray]) -> list[str]:
        """One "name score" line per top-k label."""
        names = _named(result["labels"], self.class_names)
        return [f"{name} {score:.3f}" for name, score in zip(names, result["scores"], strict=True)]

    def draw(self, image: np.ndarray, result: dict[str, np.ndarray]) -> np.ndarray:
        """A copy of `image` with the top-k lines on a filled box in its bottom-left corner
        (the top-left one holds a video's FPS)."""
        return draw_text_block(np.ascontiguousarray(image).copy(), self._lines(result), bottom=True)

    def record(self, result: dict[str, np.ndarray]) -> dict[str, Any]:
        """The top-k labels, their probabilities rounded to 1e-4 and their class names."""
        return {
            "labels": result["labels"].tolist(),
            "scores": _rounded(result["scores"], 4),
            "classes": _named(result["labels"], self.class_names),
        }

    def describe(self, result: dict[str, np.ndarray]) -> str:
        """The top-k as one line: "cat 0.912, dog 0.051, fox 0.020"."""
        return ", ".join(self._lines(result))


class SegmentationPredictor:
    """A segmenter as a stream `Predictor`: each frame's class map `[H, W]` in its own pixels.

    `infer` takes RGB uint8 frames of any size and returns one class map per frame (a
    `detseg.heads.Segmenter`). Drawing tints every class but "background" in its colour (alpha
    blend) with a legend of the classes present, and `mask_image` paints the plain colour
    mask; the JSONL fields are each class's pixel fraction and, with `rle`, each present
    class's mask as COCO RLE; describe lists the classes present, largest first.
    """

    def __init__(
        self,
        infer: Callable[[list[np.ndarray]], list[np.ndarray]],
        class_names: Sequence[str],
        *,
        rle: bool = False,
    ):
        self.infer = infer
        self.class_names = _checked_names(class_names)
        self.rle = rle
        self._skip = untinted_labels(self.class_names)

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        maps = self.infer(images)
        for image, class_map in zip(images, maps, strict=True):
            if class_map.shape != image.shape[:2]:
                raise ValueError(f"a class map of {class_map.shape} for an image of {image.shape[:2]}")
        return maps

    def fractions(self, class_map: np.ndarray) -> np.ndarray:
        """The share of the pixels of each class [C] (they add up to 1)."""
        counts = np.bincount(class_map.ravel(), minlength=len(self.class_names))[: len(self.class_names)]
        return counts / max(1, class_map.size)

    def draw(self, image: np.ndarray, result: np.ndarray) -> np.ndarray:
        """The frame with the classes tinted and a legend of those present."""
        present = [i for i in np.flatnonzero(self.fractions(result)) if i not in self._skip]
        return draw_legend(draw_semantic(image, result, skip=self._skip), self.class_names, present)

    def mask_image(self, result: np.ndarray) -> np.ndarray:
        """The class map as an RGB colour mask, untinted classes black (what `--save` writes
        as `masks/<name>.png`)."""
        return paint_semantic(result, self._skip)

    def record(self, result: np.ndarray) -> dict[str, Any]:
        """`{"fractions": {class: share of the pixels, 1e-4}}`, every class listed; with `rle`
        also `"rle": {class: {"size": [H, W], "counts": str}}` for each class present."""
        shares = self.fractions(result)
        fields: dict[str, Any] = {"fractions": dict(zip(self.class_names, _rounded(shares, 4), strict=True))}
        if self.rle:
            present = np.flatnonzero(shares)
            rles = encode_masks(np.stack([result == i for i in present])) if len(present) else []
            fields["rle"] = {
                self.class_names[i]: {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}
                for i, r in zip(present, rles, strict=True)
            }
        return fields

    def describe(self, result: np.ndarray) -> str:
        shares = self.fractions(result)
        order = np.argsort(-shares, kind="stable")
        return ", ".join(f"{self.class_names[i]} {shares[i]:.3f}" for i in order if shares[i] > 0)

