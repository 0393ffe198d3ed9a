"""Decoding YOLO outputs into scored candidate boxes, and an in-graph non-maximum suppression.

Raw output of one level: [B, G, G, A, 5 + C] logits laid out as (tx, ty, tw, th, obj, cls...).
A prediction at cell (gx, gy) with anchor (aw, ah) decodes to, in input pixels,

    cx = (scale_xy * sigmoid(tx) - (scale_xy - 1) / 2 + gx) * stride     (same for cy)
    w  = aw * exp(clip(tw, -MAX_LOG_SCALE, MAX_LOG_SCALE))                (same for h)

`scale_xy` > 1 (YOLOv4's grid-sensitivity fix; we use 1.1) lets a centre reach the cell
borders with finite logits, so boxes centred on a border are learnt as easily as others.

With `box_bins` = R > 0 (a distribution-focal box head, as in GFL and YOLOv8) the four box
channels become 4 x R: for each side (left, top, right, bottom) a softmax over R bins whose
expectation is the side's distance from the cell centre, the bins spread evenly over
0..`MAX_SIDE_ANCHORS` anchor widths (left, right) or heights (top, bottom). Binned in anchor
units, each anchor keeps its prior: an anchor predicts boxes of its own scale, with the same
relative precision at every level. The layout is then [B, G, G, A, 4R + 1 + C].
Scores are objectness x class probability, one candidate per (box, class) pair ("multi-label"),
so a box unsure between two classes keeps both for the mAP.

Candidates are the top-k (box, class) pairs by score, boxes clipped to the input square. The
in-graph `nms_padded` (keras.ops, inside `predict_step`) and the host `detseg.boxes.nms`
(OpenCV, the fast path of `Detector`) run the same exact greedy rule on them, so both return
the same detections.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from detseg.boxes import iou_ops

__all__ = [
    "DEFAULT_SCALE_XY",
    "MAX_LOG_SCALE",
    "MAX_SIDE_ANCHORS",
    "bin_widths",
    "box_channels",
    "cell_centres",
    "cell_grid",
    "decode_boxes",
    "decode_candidates",
    "decode_level",
    "nms_padded",
    "per_side",
    "side_distributions",
    "split_raw",
]

# Grid-sensitivity factor of the centre offsets (YOLOv4's scale_x_y).
DEFAULT_SCALE_XY = 1.1
# Size logits are clipped to +/- this before exp: at most e^6 ~ 400x an anchor, never overflow.
MAX_LOG_SCALE = 6.0
# With box_bins, the farthest a side can lie from the cell centre, in anchor sizes.
MAX_SIDE_ANCHORS = 2.0


def cell_grid(grid_h: int, grid_w: int):
    """Cell corner coordinates [G_h, G_w, 1, 2] in (x, y) order, broadcastable over anchors."""
    gx, gy = ops.meshgrid(ops.arange(grid_w, dtype="float32"), ops.arange(grid_h, dtype="float32"))
    return ops.stack([gx, gy], axis=-1)[:, :, None, :]


def cell_centres(grid_h: int, grid_w: int, stride: int):
    """Cell centres [G_h, G_w, 1, 2] (x, y) in input pixels."""
    return (cell_grid(grid_h, grid_w) + 0.5) * float(stride)


def box_channels(box_bins: int) -> int:
    """Box channels of one anchor's output: 4 offsets, or 4 distributions of `box_bins`."""
    return 4 * box_bins if box_bins else 4


def split_raw(raw, box_bins: int = 0):
    """(box logits, objectness logit, class logits) of a raw output [..., box + 1 + C].

    One split rather than three slices: TensorFlow's gradient of each slice is a zero-padded
    copy of the whole output, which made the loss of a 16-bin head about 3x slower.
    """
    n = box_channels(box_bins)
    box, obj, cls = ops.split(raw, [n, n + 1], axis=-1)
    return box, ops.squeeze(obj, axis=-1), cls


def bin_widths(anchors: np.ndarray, box_bins: int) -> np.ndarray:
    """Pixels per bin of each anchor's sides [A, 4] (left, top, right, bottom)."""
    anchors = np.asarray(anchors, np.float32)
    return np.tile(anchors, 2) * (MAX_SIDE_ANCHORS / (box_bins - 1))


def side_distributions(box_logits, box_bins: int):
    """Box logits [B, G, G, A, 4R] -> every side's bin logits [B * G * G * A * 4, R] (flat:
    TensorFlow's softmax takes at most 5 dimensions)."""
    return ops.reshape(box_logits, (-1, box_bins))


def per_side(flat, box_logits):
    """One value per side [B * G * G * A * 4] -> [B, G, G, A, 4], the shape of `box_logits`'s."""
    return ops.reshape(flat, (-1, *box_logits.shape[1:-1], 4))


def decode_level(
    raw, anchors: np.ndarray, stride: int, scale_xy: float = DEFAULT_SCALE_XY, box_bins: int = 0
):
    """Boxes [B, G, G, A, 4] xyxy in input pixels from one level's raw output.

    `anchors` [A, 2] (w, h) in input pixels; `box_bins` as in `split_raw` (module doc).
    """
    return decode_boxes(split_raw(raw, box_bins)[0], anchors, stride, scale_xy, box_bins)


def decode_boxes(
    box_logits,
    anchors: np.ndarray,
    stride: int,
    scale_xy: float = DEFAULT_SCALE_XY,
    box_bins: int = 0,
):
    """`decode_level` of the box logits [B, G, G, A, box] alone (`split_raw`'s first part)."""
    grid_h, grid_w = box_logits.shape[1], box_logits.shape[2]
    if box_bins:
        bins = ops.arange(box_bins, dtype="float32")
        probs = ops.softmax(side_distributions(box_logits, box_bins))
        expected = per_side(ops.sum(probs * bins, axis=-1), box_logits)
        sides = expected * ops.convert_to_tensor(bin_widths(anchors, box_bins))
        near, far = ops.split(sides, 2, axis=-1)
        centre = cell_centres(grid_h, grid_w, stride)
        return ops.concatenate([centre - near, centre + far], axis=-1)
    offset_logits, size_logits = ops.split(box_logits, 2, axis=-1)
    centre = (
        ops.sigmoid(offset_logits) * scale_xy - (scale_xy - 1.0) / 2.0 + cell_grid(grid_h, grid_w)
    ) * float(stride)
    size = ops.convert_to_tensor(anchors, "float32") * ops.exp(
        ops.clip(size_logits, -MAX_LOG_SCALE, MAX_LOG_SCALE)
    )
    return ops.concatenate([centre - size / 2.0, centre + size / 2.0], axis=-1)


def decode_candidates(
    outputs: dict,
    anchors: dict,
    strides: dict,
    *,
    num_classes: int,
    input_size: int,
    topk: int,
    scale_xy: float = DEFAULT_SCALE_XY,
    box_bins: int = 0,
):
    """The `topk` best (box, class) candidates of a batch, sorted by score.

    `outputs[level]` raw logits [B, G, G, A, box + 1 + C] (`split_raw`); `anchors[level]` [A, 2];
    `strides[level]`.
    Returns boxes [B, K, 4] xyxy input pixels clipped to the input square, scores [B, K],
    labels [B, K] int32, with K = min(topk, number of (box, class) pairs).
    """
    boxes, scores = [], []
    for level, raw in outputs.items():
        # Static sizes, so top_k's k is known while tracing whatever the batch size.
        per_image = math.prod(raw.shape[1:4])
        boxes.append(
            ops.reshape(
                decode_level(raw, anchors[level], strides[level], scale_xy, box_bins),
                (-1, per_image, 4),
            )
        )
        _, obj, cls = split_raw(raw, box_bins)
        prob = ops.sigmoid(obj[..., None]) * ops.sigmoid(cls)
        scores.append(ops.reshape(prob, (-1, per_image * num_classes)))
    boxes = ops.concatenate(boxes, axis=1)
    scores = ops.concatenate(scores, axis=1)  # [B, N * C], index = box * C + class
    top_scores, index = ops.top_k(scores, min(topk, scores.shape[1]))
    box_index = index // num_classes
    top_boxes = ops.clip(
        ops.take_along_axis(boxes, box_index[..., None], axis=1), 0.0, float(input_size)
    )
    return top_boxes, top_scores, ops.cast(index % num_classes, "int32")


def nms_padded(
    boxes, scores, labels, score_thr: float, iou_thr: float, max_det: int, agnostic: bool = False
):
    """Exact greedy NMS of sorted candidates in keras.ops, padded to `max_det` detections.

    boxes [B, K, 4], scores [B, K] (descending), labels [B, K]. A candidate survives when its
    score exceeds `score_thr` and no surviving higher-scored candidate (of the same class
    unless `agnostic`) overlaps it with IoU > `iou_thr`. Computed as the fixed point of
    keep = valid & ~any(overlaps & keep) iterated from keep = valid: after i rounds the first
    i entries are final, so it ends at greedy NMS's answer, usually in a few rounds.

    Returns {"boxes" [B, D, 4], "scores" [B, D], "labels" [B, D] (padding -1), "num" [B]}.
    """
    num = boxes.shape[1]
    valid = scores > score_thr
    earlier = ops.triu(ops.ones((num, num), "bool"), k=1)  # earlier[j, i]: j ranks above i
    overlaps = ops.logical_and(
        iou_ops(boxes[:, :, None, :], boxes[:, None, :, :]) > iou_thr, earlier
    )
    if not agnostic:
        overlaps = ops.logical_and(overlaps, labels[:, :, None] == labels[:, None, :])

    def step(keep, _changed):
        suppressed = ops.any(ops.logical_and(overlaps, keep[:, :, None]), axis=1)
        new_keep = ops.logical_and(valid, ops.logical_not(suppressed))
        return new_keep, ops.any(ops.not_equal(new_keep, keep))

    keep, _ = ops.while_loop(
        lambda _keep, changed: changed, step, (valid, ops.array(True)), maximum_iterations=num
    )
    kept_scores, order = ops.top_k(ops.where(keep, scores, -1.0), min(max_det, num))
    kept = kept_scores >= 0.0
    out = {
        "boxes": ops.where(
            kept[..., None], ops.take_along_axis(boxes, order[..., None], axis=1), 0.0
        ),
        "scores": ops.where(kept, kept_scores, 0.0),
        "labels": ops.where(kept, ops.take_along_axis(labels, order, axis=1), -1),
        "num": ops.sum(ops.cast(kept, "int32"), axis=1),
    }
    pad = max_det - min(max_det, num)
    if pad:
        out["boxes"] = ops.pad(out["boxes"], ((0, 0), (0, pad), (0, 0)))
        out["scores"] = ops.pad(out["scores"], ((0, 0), (0, pad)))
        out["labels"] = ops.pad(out["labels"], ((0, 0), (0, pad)), constant_values=-1)
    out["labels"] = ops.cast(out["labels"], "int32")
    return out
