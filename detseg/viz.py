"""Drawing on RGB images with OpenCV: boxes with class names and scores, instance and semantic masks.

The drawing functions are cheap enough to run on every video frame (a few OpenCV calls per
box, one blend for all masks). `save_gallery` tiles a batch of a loader (augmented, for training)
into one PNG, to see what the model will be trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from detseg.data.images import letterbox
from detseg.data.loader import DetectionLoader
from detseg.data.sample import IGNORE_INDEX
from detseg.errors import DetsegError
from detseg.feature_maps import feature_maps  # the chapter's filter demo, re-exported here

__all__ = ["class_color", "draw_detections", "draw_legend", "draw_semantic", "feature_maps", "save_gallery", "tile_images", "titled_grid", "untinted_labels", "GalleryTargets"]

# Twenty well-separated RGB colours (a qualitative palette); class k uses _PALETTE[k % 20].
_PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
        [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
        [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128],
    ],
    np.uint8,
)  # fmt: skip
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(label: int) -> tuple[int, int, int]:
    """The RGB colour of a class label (stable across calls and runs)."""
    r, g, b = _PALETTE[int(label) % len(_PALETTE)]
    return int(r), int(g), int(b)


def _blend(image: np.ndarray, colors: np.ndarray, where: np.ndarray, alpha: float) -> None:
    """In place: `image[where] = (1 - alpha) * image + alpha * colors` for the pixels in `where`."""
    region = image[where].astype(np.float32)
    image[where] = (region * (1 - alpha) + colors[where] * alpha).astype(np.uint8)


def untinted_labels(class_names: Sequence[str] | None) -> list[int]:
    """The labels a class map is not tinted for: unlabelled pixels (IGNORE_INDEX) and a class
    named "background", so the overlay shows the objects."""
    return [IGNORE_INDEX] + [i for i, name in enumerate(class_names or []) if name == "background"]


def draw_semantic(
    image_rgb: np.ndarray,
    class_map: np.ndarray,
    alpha: float = 0.45,
    skip: Sequence[int] = (IGNORE_INDEX,),
) -> np.ndarray:
    """A copy of the image with each class of the `[H, W]` class-index map tinted in its colour (`skip` left as is)."""
    out = image_rgb.copy()
    where = ~np.isin(class_map, skip)
    _blend(out, paint_semantic(class_map, skip), where, alpha)
    return out


def paint_semantic(class_map: np.ndarray, skip: Sequence[int] = (IGNORE_INDEX,)) -> np.ndarray:
    """The `[H, W]` class-index map as an RGB colour mask: each class in its colour, `skip` black."""
    colors = _PALETTE[class_map.astype(np.int64) % len(_PALETTE)]
    colors[np.isin(class_map, skip)] = 0
    return colors


def draw_legend(image_rgb: np.ndarray, class_names: Sequence[str], labels: Sequence[int]) -> np.ndarray:
    """In place: a key of `labels` (a colour swatch and the class name each) in the top-right
    corner, on a black box so it reads on any background. Returns the image."""
    if not len(labels):
        return image_rgb
    scale = max(0.35, image_rgb.shape[0] / 720.0 * 0.7)
    thickness = max(1, round(scale * 2))
    (_, text_h), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    row, pad = text_h + baseline + 4, 4
    width = max(cv2.getTextSize(class_names[i], cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for i in labels)
    box_w = width + row + 3 * pad
    x0 = max(0, image_rgb.shape[1] - box_w)
    cv2.rectangle(image_rgb, (x0, 0), (image_rgb.shape[1] - 1, len(labels) * row + pad), (0, 0, 0), -1)
    for k, label in enumerate(labels):
        y = pad + k * row
        cv2.rectangle(image_rgb, (x0 + pad, y), (x0 + pad + row - 4, y + row - 4), class_color(label), -1)
        cv2.putText(
            image_rgb, class_names[label], (x0 + 2 * pad + row, y + text_h), cv2.FONT_HERSHEY_SIMPLEX,
            scale, (255, 255, 255), thickness, cv2.LINE_AA,
        )  # fmt: skip
    return image_rgb


def draw_detections(
    image_rgb: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    masks: np.ndarray | None = None,
    *,
    thickness: int = 2,
    alpha: float = 0.45,
) -> np.ndarray:
    """A copy of `image_rgb` (uint8 [H, W, 3]) with the boxes drawn and captioned.

    `boxes` [N, 4] xyxy pixels, `labels` [N] ints, optional `scores` [N] and `class_names`
    (the caption is `name score`, or the label number), optional instance `masks`
    [N, H, W] (bool or 0/1) tinted in their box's colour.
    """
    out = np.ascontiguousarray(image_rgb).copy()
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if masks is not None and len(boxes):
        masks = np.asarray(masks).astype(bool)
        colors = np.zeros_like(out)
        owner = masks.any(axis=0)
        for mask, label in zip(masks, labels, strict=True):
            colors[mask] = class_color(label)
        _blend(out, colors, owner, alpha)
    h, w = out.shape[:2]
    corners = np.round(boxes).astype(np.int64)
    corners[:, [0, 2]] = np.clip(corners[:, [0, 2]], 0, w - 1)
    corners[:, [1, 3]] = np.clip(corners[:, [1, 3]], 0, h - 1)
    scale = max(0.35, min(h, w) / 900)
    for i, (x1, y1, x2, y2) in enumerate(corners.tolist()):
        color = class_color(labels[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        name = (
            class_names[labels[i]]
            if class_names is not None and 0 <= labels[i] < len(class_names)
            else str(labels[i])
        )
        caption = f"{name} {scores[i]:.2f}" if scores is not None else name
        (tw, th), base = cv2.getTextSize(caption, _FONT, scale, 1)
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + th + base + 2), color, -1)
        text_color = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        cv2.putText(out, caption, (x1 + 1, top + th + 1), _FONT, scale, text_color, 1, cv2.LINE_AA)
    return out


def tile_images(images: Sequence[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Equal-sized RGB images in a grid with `gap` white pixels between them."""
    if not images:
        raise ValueError("no images to tile")
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    return grid


TITLE_HEIGHT = 24
"""Pixels of the title strip above the columns of a `titled_grid`."""


def titled_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], side: int = 160, gap: int = 4) -> np.ndarray:
    """RGB panels of any size, each letterboxed to `side` x `side`, in one row per entry of
    `rows` under a white strip naming each column (`titles`, one per panel of a row).

    The grid is `TITLE_HEIGHT + len(rows) * (side + gap)` high and
    `len(titles) * (side + gap) - gap` wide.
    """
    if any(len(row) != len(titles) for row in rows):
        raise ValueError(f"every row needs {len(titles)} panels, one per title")
    grid = tile_images([letterbox(panel, side)[0] for row in rows for panel in row], len(titles), gap)
    strip = np.full((TITLE_HEIGHT + gap, grid.shape[1], 3), 255, np.uint8)
    for column, title in enumerate(titles):
        cv2.putText(strip, title, (column * (side + gap) + 4, TITLE_HEIGHT - 7), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, grid])


class GalleryTargets:
    """A loader encoder that keeps each sample's boxes, labels (and semantic masks) as they
    are, so a gallery shows a batch exactly as the loader prepared it."""

    def __init__(self, semantic: bool):
        if semantic:
            self.uses_masks = "semantic"

    def __call__(self, boxes: list, labels: list, masks: list | None = None) -> tuple:
        return boxes, labels, masks


def save_gallery(loader: DetectionLoader, out_png: str | Path, *, columns: int = 4) -> Path:
    """Write a PNG grid of the first batch of `loader` (its encoder a `GalleryTargets`), as the
    model will see it: augmented when the loader augments.

    Boxes are captioned with class names; semantic masks are tinted when the loader reads
    them (the dataset's "background" class, if any, is left untinted).
    """
    if not isinstance(loader.encoder, GalleryTargets):
        raise DetsegError(f"a gallery needs a loader with GalleryTargets, got {type(loader.encoder).__name__}")
    dataset = loader.dataset
    images, (boxes, labels, masks) = loader[0]
    skip = untinted_labels(dataset.mask_classes)
    tiles = []
    for i, image in enumerate(images):
        tile = image
        if masks is not None:
            tile = draw_semantic(tile, masks[i], skip=skip)
        tiles.append(draw_detections(tile, boxes[i], labels[i], class_names=dataset.class_names))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(
        str(out), cv2.cvtColor(tile_images(tiles, min(columns, len(tiles))), cv2.COLOR_RGB2BGR)
    ):
        raise DetsegError("cannot write the gallery image", out)
    return out
