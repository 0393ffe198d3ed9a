"""Boxes: format conversion, area, clipping, the IoU family and non-maximum suppression.

Boxes between modules are `[N, 4]` float32 `xyxy` in absolute pixels (DESIGN.md section 3).
IoU is continuous (no "+1 pixel"), as pycocotools and torchvision compute it.

Host code (loaders, decoding, evaluation) uses the NumPy functions here. In-graph code uses
`keras.utils.bounding_boxes.convert_format` for conversions (the format names below are its
names, and the tests check both agree) and the `*_ops` functions for IoU-based losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import keras
import numpy as np

# The formats of keras.utils.bounding_boxes; a "rel_" prefix means coordinates divided by the
# image width (x) and height (y). "rel_center_xywh" is the YOLO txt format.
BOX_FORMATS = (
    "xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw",
    "rel_xyxy", "rel_yxyx", "rel_xywh", "rel_center_xywh",
)

IOU_KINDS = ("iou", "giou", "diou", "ciou")


# === Conversions ===
def _to_xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    a, b, c, d = np.moveaxis(boxes, -1, 0)
    if fmt == "xyxy":
        parts = (a, b, c, d)
    elif fmt == "yxyx":
        parts = (b, a, d, c)
    elif fmt == "xywh":
        parts = (a, b, a + c, b + d)
    elif fmt == "center_xywh":
        parts = (a - c / 2, b - d / 2, a + c / 2, b + d / 2)
    else:  # center_yxhw
        parts = (b - d / 2, a - c / 2, b + d / 2, a + c / 2)
    return np.stack(parts, axis=-1)


def _from_xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    x1, y1, x2, y2 = np.moveaxis(boxes, -1, 0)
    if fmt == "xyxy":
        parts = (x1, y1, x2, y2)
    elif fmt == "yxyx":
        parts = (y1, x1, y2, x2)
    elif fmt == "xywh":
        parts = (x1, y1, x2 - x1, y2 - y1)
    elif fmt == "center_xywh":
        parts = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    else:  # center_yxhw
        parts = ((y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1)
    return np.stack(parts, axis=-1)


def convert_boxes(
    boxes: np.ndarray,
    source: str,
    target: str,
    *,
    height: float | None = None,
    width: float | None = None,
) -> np.ndarray:
    """Convert `[..., 4]` boxes between `BOX_FORMATS` in NumPy (float32 unless float64 given).

    `height`/`width` (the image size in pixels) are required when either format is relative.
    """
    for name in (source, target):
        if name not in BOX_FORMATS:
            raise ValueError(f"Unknown box format {name!r}; expected one of {BOX_FORMATS}.")
    boxes = np.asarray(boxes)
    dtype = np.float64 if boxes.dtype == np.float64 else np.float32
    boxes = boxes.astype(dtype, copy=False)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"Boxes must have shape [..., 4]; received shape {boxes.shape}.")
    relative = source.startswith("rel_") or target.startswith("rel_")
    if relative and (height is None or width is None):
        raise ValueError(
            f"Converting {source!r} to {target!r} needs the image height and width; "
            f"received height={height}, width={width}."
        )
    scale = None if not relative else np.array([width, height, width, height], dtype)
    xyxy = _to_xyxy(boxes, source.removeprefix("rel_"))
    if source.startswith("rel_"):
        xyxy = xyxy * scale
    if target.startswith("rel_"):
        xyxy = xyxy / scale
    return _from_xyxy(xyxy, target.removeprefix("rel_")).astype(dtype, copy=False)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of `[..., 4]` xyxy boxes; inverted boxes count as area 0."""
    boxes = np.asarray(boxes)
    width = np.maximum(boxes[..., 2] - boxes[..., 0], 0)
    height = np.maximum(boxes[..., 3] - boxes[..., 1], 0)
    return width * height


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Clip `[..., 4]` xyxy boxes to the image `[0, width] x [0, height]`."""
    boxes = np.asarray(boxes)
    upper = np.array([width, height, width, height], dtype=boxes.dtype)
    return np.clip(boxes, 0, upper)


# === IoU family ===
def _numpy_divide_no_nan(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    safe = np.where(denominator == 0, 1, denominator)
    return np.where(denominator == 0, 0, numerator / safe)


def _iou_family(boxes1, boxes2, kind: str, xp, divide: Callable, stop_gradient: Callable):
    """IoU / GIoU / DIoU / CIoU of broadcast-aligned xyxy boxes, written once for both NumPy
    (`xp=np`) and `keras.ops`. A zero denominator gives 0 rather than NaN (divide_no_nan)."""
    if kind not in IOU_KINDS:
        raise ValueError(f"Unknown IoU kind {kind!r}; expected one of {IOU_KINDS}.")
    ax1, ay1, ax2, ay2 = (boxes1[..., i] for i in range(4))
    bx1, by1, bx2, by2 = (boxes2[..., i] for i in range(4))
    aw, ah = ax2 - ax1, ay2 - ay1
    bw, bh = bx2 - bx1, by2 - by1
    inter_w = xp.maximum(xp.minimum(ax2, bx2) - xp.maximum(ax1, bx1), 0.0)
    inter_h = xp.maximum(xp.minimum(ay2, by2) - xp.maximum(ay1, by1), 0.0)
    inter = inter_w * inter_h
    union = aw * ah + bw * bh - inter
    iou = divide(inter, union)
    if kind == "iou":
        return iou
    # Smallest box enclosing both.
    cw = xp.maximum(ax2, bx2) - xp.minimum(ax1, bx1)
    ch = xp.maximum(ay2, by2) - xp.minimum(ay1, by1)
    if kind == "giou":
        enclosing = cw * ch
        return iou - divide(enclosing - union, enclosing)
    # Squared centre distance over squared enclosing diagonal.
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    diou = iou - divide(rho2, cw**2 + ch**2)
    if kind == "diou":
        return diou
    # CIoU aspect-ratio term; alpha is a weight, not differentiated (as in the CIoU paper).
    v = (4 / math.pi**2) * (xp.arctan(divide(bw, bh)) - xp.arctan(divide(aw, ah))) ** 2
    alpha = stop_gradient(divide(v, v - iou + 1))
    return diou - alpha * v


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray, kind: str = "iou") -> np.ndarray:
    """Pairwise IoU (or `kind` = giou/diou/ciou) of `[N, 4]` and `[M, 4]` xyxy boxes -> `[N, M]`."""
    boxes1, boxes2 = np.asarray(boxes1), np.asarray(boxes2)
    return _iou_family(
        boxes1[:, None, :], boxes2[None, :, :], kind, np, _numpy_divide_no_nan, lambda x: x
    )


def box_giou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise generalized IoU `[N, M]` of xyxy boxes."""
    return box_iou(boxes1, boxes2, "giou")


def box_diou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise distance IoU `[N, M]` of xyxy boxes."""
    return box_iou(boxes1, boxes2, "diou")


def box_ciou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise complete IoU `[N, M]` of xyxy boxes."""
    return box_iou(boxes1, boxes2, "ciou")


def iou_ops(boxes1, boxes2, kind: str = "iou"):
    """Elementwise IoU (or giou/diou/ciou) of aligned `[..., 4]` xyxy tensors, in keras.ops.

    For losses: differentiable, backend-agnostic; shapes broadcast like any keras.ops call.
    """
    ops = keras.ops
    return _iou_family(
        ops.convert_to_tensor(boxes1),
        ops.convert_to_tensor(boxes2),
        kind,
        ops,
        ops.divide_no_nan,
        ops.stop_gradient,
    )


def giou_ops(boxes1, boxes2):
    """Elementwise generalized IoU of aligned `[..., 4]` xyxy tensors (keras.ops)."""
    return iou_ops(boxes1, boxes2, "giou")


def diou_ops(boxes1, boxes2):
    """Elementwise distance IoU of aligned `[..., 4]` xyxy tensors (keras.ops)."""
    return iou_ops(boxes1, boxes2, "diou")


def ciou_ops(boxes1, boxes2):
    """Elementwise complete IoU of aligned `[..., 4]` xyxy tensors (keras.ops)."""
    return iou_ops(boxes1, boxes2, "ciou")


# === Non-maximum suppression ===
def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_thr: float = 0.45,
    *,
    labels: np.ndarray | None = None,
    score_thr: float = 0.0,
    max_det: int = 300,
) -> np.ndarray:
    """Non-maximum suppression of `[N, 4]` xyxy boxes; returns kept indices, best score first.

    Boxes with `score > score_thr` are candidates; a candidate is suppressed when its IoU with a
    better kept box exceeds `iou_thr`. With `labels` (`[N]` int) suppression is per class
    (boxes of different classes never suppress each other); without, it is class-agnostic.
    Equal scores keep input order. At most `max_det` indices are returned.

    Runs OpenCV's C++ `NMSBoxes` / `NMSBoxesBatched` (several times faster than a vectorised
    NumPy greedy loop, see benchmarks/bench_nms.py), on float64 boxes so the IoU is exact.
    OpenCV's `top_k` is not used: it truncates candidates *before* suppression. Identical
    zero-area boxes count as duplicates (their 0/0 IoU never passes the keep test).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores.")
    if len(boxes) == 0 or max_det <= 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    if labels is None:
        kept = cv2.dnn.NMSBoxes(xywh, scores, score_thr, iou_thr)
    else:
        labels = np.asarray(labels, dtype=np.int32).reshape(-1)
        if len(labels) != len(scores):
            raise ValueError(f"nms: {len(scores)} scores but {len(labels)} labels.")
        kept = cv2.dnn.NMSBoxesBatched(xywh, scores, labels, score_thr, iou_thr)
    return np.asarray(kept, dtype=np.int64).reshape(-1)[:max_det]
