"""The YOLOv3 loss terms in keras.ops: box, objectness (with the ignore rule) and class.

Every term is a sum over anchors (and coordinates or classes) per image; the model averages
the per-image sums over the batch. Summing per image, as YOLOv3 does, keeps an image without
objects well defined (its box and class terms are exactly 0) and weighs each object equally
whatever the number of objects in the batch.

- objectness: BCE of every anchor against its target: at assigned anchors 1 ("one"), or
  with `objectness_target="iou"` the IoU of the decoded box with its ground truth, clipped to
  [0, 1] and without gradient (a constant target, as in YOLOv4's IoU-aware objectness); 0
  elsewhere. An unassigned
  prediction whose decoded box overlaps a ground truth of its image with IoU > ignore_thresh
  is left out: it found an object, just not at the assigned anchor.
- class: BCE of each assigned anchor's class logits against the one-hot class, smoothed to
  (1 - eps/2, eps/2) with label smoothing eps.
- box, at assigned anchors only:
  "yolov3": BCE of the centre-offset logits against the offsets of the cell, plus the squared
  error of the size logits against log(size / anchor), scaled by 2 - w*h/S^2 so small boxes
  weigh more; "giou" / "ciou": 1 - GIoU / CIoU of the decoded box with the target, plus
  `LOG_SIZE_WEIGHT` x that same log-size squared error. The IoU losses alone let a box that
  collapsed (or exploded) early in training stay stuck: its IoU with the target is ~0 whatever
  its size, so the size gets no gradient (measured: 1 of 13 boxes stuck at 0.3 px on the
  overfit test, AP50 0.85 after 600 steps; with the term, AP50 1.0 after 200). The term is 0 at
  a perfect prediction, like the IoU loss (PP-YOLO combines the two the same way).
  With `box_bins` (a distribution-focal head, `yolo_decode`) the IoU loss is joined instead
  by `DFL_WEIGHT` x the distribution focal loss (GFL): per side, with its target distance y
  in bins between bins i and i + 1, the cross-entropy of the side's softmax against
  (i + 1 - y) at bin i and (y - i) at bin i + 1, averaged over the four sides. It is least
  when the distribution puts exactly that mass on the two bins, whose expectation is y, and it
  too keeps a gradient when the IoU is 0. Targets beyond the last bin are clipped to it.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from detseg.boxes import iou_ops
from detseg.heads.yolo_decode import (
    DEFAULT_SCALE_XY,
    bin_widths,
    cell_centres,
    cell_grid,
    decode_boxes,
    per_side,
    side_distributions,
    split_raw,
)

__all__ = ["BOX_LOSSES", "DFL_WEIGHT", "LOG_SIZE_WEIGHT", "OBJECTNESS_TARGETS", "yolo_loss_terms"]

BOX_LOSSES = ("yolov3", "ciou", "giou")
OBJECTNESS_TARGETS = ("one", "iou")
# Weight of the log-size squared error added to the IoU losses (see the module doc).
LOG_SIZE_WEIGHT = 0.25
# Weight of the distribution focal loss added to the IoU losses: YOLOv8's ratio of its DFL and
# box gains (1.5 / 7.5).
DFL_WEIGHT = 0.2
# A unit box put where no target is assigned, so masked-out terms stay finite (NaN * 0 = NaN).
_SAFE_BOX = (0.0, 0.0, 1.0, 1.0)


def _bce(target, logits):
    """Elementwise binary cross-entropy from logits, numerically stable."""
    return ops.maximum(logits, 0.0) - logits * target + ops.log1p(ops.exp(-ops.abs(logits)))


def _log_size_error(size_logits, target_box, anchors):
    """Squared error of the size logits against log(size / anchor), per anchor [B, G, G, A]."""
    size = target_box[..., 2:] - target_box[..., :2]
    wh_target = ops.log(size / ops.convert_to_tensor(anchors, "float32"))
    return ops.sum((size_logits - wh_target) ** 2, axis=-1)


def _distribution_focal_loss(box_logits, target_box, anchors, stride: int, box_bins: int):
    """Distribution focal loss per anchor [B, G, G, A], averaged over the four sides."""
    centre = cell_centres(box_logits.shape[1], box_logits.shape[2], stride)
    distance = ops.concatenate([centre - target_box[..., :2], target_box[..., 2:] - centre], -1)
    target = ops.clip(
        distance / ops.convert_to_tensor(bin_widths(anchors, box_bins)), 0.0, box_bins - 1.001
    )
    target = ops.reshape(target, (-1,))
    below = ops.floor(target)
    upper_share = (target - below)[:, None]
    index = ops.cast(below, "int32")
    weights = (
        ops.one_hot(index, box_bins) * (1.0 - upper_share)
        + ops.one_hot(index + 1, box_bins) * upper_share
    )
    log_probs = ops.log_softmax(side_distributions(box_logits, box_bins), axis=-1)
    return -ops.mean(per_side(ops.sum(weights * log_probs, axis=-1), box_logits), axis=-1)


def _yolov3_box_loss(
    box_logits, target_box, anchors, stride: int, input_size: int, scale_xy: float
):
    """YOLOv3's box loss per anchor [B, G, G, A] (target_box already safe where unassigned)."""
    offset_logits, size_logits = ops.split(box_logits, 2, axis=-1)
    centre = (target_box[..., :2] + target_box[..., 2:]) / 2.0 / float(stride)
    offset = centre - cell_grid(box_logits.shape[1], box_logits.shape[2])
    # Invert the decode: sigmoid(t) = (offset + (scale_xy - 1) / 2) / scale_xy.
    xy_target = ops.clip((offset + (scale_xy - 1.0) / 2.0) / scale_xy, 0.0, 1.0)
    size = target_box[..., 2:] - target_box[..., :2]
    small_box_gain = 2.0 - size[..., 0] * size[..., 1] / float(input_size) ** 2
    xy = ops.sum(_bce(xy_target, offset_logits), axis=-1)
    return (xy + _log_size_error(size_logits, target_box, anchors)) * small_box_gain


def yolo_loss_terms(
    targets: dict,
    outputs: dict,
    anchors: dict[str, np.ndarray],
    strides: dict[str, int],
    *,
    num_classes: int,
    input_size: int,
    ignore_thresh: float,
    box_loss: str,
    label_smoothing: float = 0.0,
    scale_xy: float = DEFAULT_SCALE_XY,
    objectness_target: str = "one",
    box_bins: int = 0,
):
    """Per-image (box, objectness, class) loss sums, each [B], unweighted.

    `targets`: the `YoloTargetEncoder` dict; `outputs[level]`: raw logits
    [B, G, G, A, box + 1 + C] (`yolo_decode.split_raw`); `anchors[level]` [A, 2] and
    `strides[level]` of each level; `objectness_target`: one of `OBJECTNESS_TARGETS`;
    `box_bins`: 0, or the bins of a distribution-focal head (IoU box losses only).
    """
    gt_boxes = targets["gt_boxes"]
    gt_real = ops.cast(targets["gt_labels"] >= 0, "float32")[:, None, :]  # [B, 1, M]
    box_sum = obj_sum = cls_sum = 0.0
    for level, raw in outputs.items():
        raw = ops.cast(raw, "float32")
        positive = ops.cast(targets[f"{level}_obj"], "float32")  # [B, G, G, A]
        box_logits, obj_logits, cls_logits = split_raw(raw, box_bins)
        pred_box = decode_boxes(box_logits, anchors[level], strides[level], scale_xy, box_bins)
        target_box = ops.where(
            positive[..., None] > 0, targets[f"{level}_box"], ops.convert_to_tensor(_SAFE_BOX)
        )

        flat_pred = ops.reshape(ops.stop_gradient(pred_box), (-1, math.prod(raw.shape[1:4]), 4))
        best_iou = ops.max(
            iou_ops(flat_pred[:, :, None, :], gt_boxes[:, None, :, :]) * gt_real, axis=-1
        )
        background = ops.reshape(
            ops.cast(best_iou <= ignore_thresh, "float32"), ops.shape(positive)
        )
        obj_weight = positive + (1.0 - positive) * background
        obj_target = positive
        if objectness_target == "iou":
            tightness = ops.clip(ops.stop_gradient(iou_ops(pred_box, target_box)), 0.0, 1.0)
            obj_target = positive * tightness
        obj_sum += ops.sum(_bce(obj_target, obj_logits) * obj_weight, axis=(1, 2, 3))

        one_hot = ops.one_hot(ops.maximum(targets[f"{level}_cls"], 0), num_classes)
        one_hot = one_hot * (1.0 - label_smoothing) + label_smoothing / 2.0
        cls_sum += ops.sum(ops.sum(_bce(one_hot, cls_logits), axis=-1) * positive, axis=(1, 2, 3))

        if box_loss == "yolov3":
            per_anchor = _yolov3_box_loss(
                box_logits, target_box, anchors[level], strides[level], input_size, scale_xy
            )
        else:
            per_anchor = 1.0 - iou_ops(pred_box, target_box, box_loss)
            if box_bins:
                per_anchor += DFL_WEIGHT * _distribution_focal_loss(
                    box_logits, target_box, anchors[level], strides[level], box_bins
                )
            else:
                size_logits = ops.split(box_logits, 2, axis=-1)[1]
                per_anchor += LOG_SIZE_WEIGHT * _log_size_error(
                    size_logits, target_box, anchors[level]
                )
        box_sum += ops.sum(per_anchor * positive, axis=(1, 2, 3))
    return box_sum, obj_sum, cls_sum
