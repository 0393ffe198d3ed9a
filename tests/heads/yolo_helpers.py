"""Shared helpers of the YOLO tests: a stand-in backbone, perfect logits, shapes, a COCO AP50."""

from __future__ import annotations

import contextlib
import io

import cv2
import keras
import numpy as np

from detseg.backbones.pyramid import image_input
from detseg.heads.yolo_decode import box_channels

# Nine priors for a 64 px input, smallest first: P3 gets 4..12, P4 16..32, P5 40..64.
ANCHORS_64 = [[4, 4], [8, 8], [12, 12], [16, 16], [24, 24], [32, 32], [40, 40], [48, 48], [64, 64]]

# Logit large enough that sigmoid(+/-BIG) is 1 / 0 to float32 precision for scores.
BIG = 20.0


def tiny_backbone(size: int = 64, width: int = 8, levels=("P3", "P4", "P5"), name="stand_in"):
    """A stand-in pyramid backbone: strided conv-BN-ReLU blocks returning {"Pk": ...}; it
    takes pixels 0..255 and scales them, as every detseg backbone (`image_input`)."""
    inputs, x = image_input((size, size, 3))
    outputs = {}
    deepest = max(int(level[1:]) for level in levels)
    for k in range(1, deepest + 1):
        x = keras.layers.Conv2D(
            width * min(2 ** (k - 1), 8), 3, strides=2, padding="same", use_bias=False
        )(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        if f"P{k}" in levels:
            outputs[f"P{k}"] = x
    return keras.Model(inputs, outputs, name=name)


def perfect_logits(targets: dict, model) -> dict[str, np.ndarray]:
    """Raw outputs that decode exactly to the encoded boxes: the inverse of the decode.

    Unassigned anchors get objectness and class logits -BIG (score ~ 0); assigned ones get
    objectness +BIG, +BIG for their class, and box logits inverting
    cx = (s * sigmoid(tx) - (s - 1) / 2 + gx) * stride and w = anchor_w * exp(tw), or with
    `model.box_bins` the distribution of each side on the two bins around its distance.
    """
    scale, bins = model.scale_xy, getattr(model, "box_bins", 0)
    box_size = box_channels(bins)
    raw = {}
    for level in model.levels:
        box, obj, cls = (targets[f"{level}_{key}"] for key in ("box", "obj", "cls"))
        out = np.zeros(obj.shape + (box_size + 1 + model.num_classes,), np.float64)
        out[..., box_size:] = -BIG
        b, y, x, a = np.nonzero(obj > 0)
        assigned = box[b, y, x, a].astype(np.float64)
        stride, anchors = model.strides[level], model.level_anchors[level][a]
        if bins:
            out[b, y, x, a, :box_size] = side_logits(assigned, x, y, stride, anchors, bins)
        else:
            offset = (assigned[:, :2] + assigned[:, 2:]) / 2 / stride - np.stack([x, y], -1)
            prob = (offset + (scale - 1) / 2) / scale
            out[b, y, x, a, 0:2] = np.log(prob / (1 - prob))
            out[b, y, x, a, 2:4] = np.log((assigned[:, 2:] - assigned[:, :2]) / anchors)
        out[b, y, x, a, box_size] = BIG
        out[b, y, x, a, box_size + 1 + cls[b, y, x, a]] = BIG
        raw[level] = out.astype(np.float32)
    return raw


def side_distances(boxes, x, y, stride: int, anchors, bins: int) -> np.ndarray:
    """Distances [N, 4] (left, top, right, bottom) of boxes from their cells' centres, in bins
    of 2 anchor sizes / (bins - 1)."""
    centre = (np.stack([x, y], -1) + 0.5) * stride
    distance = np.concatenate([centre - boxes[:, :2], boxes[:, 2:] - centre], -1)
    return distance / (np.tile(anchors, 2) * 2.0 / (bins - 1))


def side_logits(boxes, x, y, stride: int, anchors, bins: int) -> np.ndarray:
    """Logits [N, 4 * bins] putting each side's mass on the two bins around its distance, split
    so that their expectation is the distance (probability ~1e-30 elsewhere)."""
    distance = side_distances(boxes, x, y, stride, anchors, bins)
    assert (distance >= 0).all() and (distance < bins - 1).all(), "box not reachable from its cell"
    below = np.floor(distance).astype(int)
    probs = np.full(distance.shape + (bins,), 1e-30)
    np.put_along_axis(probs, below[..., None], (below + 1 - distance)[..., None] + 1e-30, -1)
    np.put_along_axis(probs, below[..., None] + 1, (distance - below)[..., None] + 1e-30, -1)
    return np.log(probs).reshape(len(boxes), 4 * bins)


COLOURS = [(230, 40, 40), (40, 200, 60), (50, 80, 230)]


def draw_shapes(num_images: int, size: int, seed: int, max_objects: int = 3):
    """Images with filled rectangles (0), circles (1) and triangles (2) on a noisy background.

    Returns RGB uint8 images [N, size, size, 3], boxes (list of [n, 4] xyxy) and labels.
    """
    rng = np.random.default_rng(seed)
    images, boxes, labels = [], [], []
    for _ in range(num_images):
        image = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
        image_boxes, image_labels = [], []
        for _ in range(rng.integers(1, max_objects + 1)):
            side = int(rng.integers(size // 6, size // 2.5))
            x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
            kind = int(rng.integers(0, 3))
            colour = COLOURS[kind]
            if kind == 0:
                cv2.rectangle(image, (x0, y0), (x0 + side - 1, y0 + side - 1), colour, -1)
            elif kind == 1:
                r = side / 2
                cv2.circle(image, (round(x0 + r), round(y0 + r)), round(r), colour, -1)
            else:
                pts = np.array(
                    [[x0, y0 + side - 1], [x0 + side - 1, y0 + side - 1], [x0 + side // 2, y0]]
                )
                cv2.fillPoly(image, [pts.astype(np.int32)], colour)
            image_boxes.append([x0, y0, x0 + side, y0 + side])
            image_labels.append(kind)
        images.append(image)
        boxes.append(np.array(image_boxes, np.float32))
        labels.append(np.array(image_labels, np.int32))
    return np.stack(images), boxes, labels


def coco_ap50(gt_boxes, gt_labels, detections, num_classes: int) -> float:
    """AP at IoU 0.5 from pycocotools (the reference evaluator), boxes xyxy in pixels."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (boxes, labels, found) in enumerate(
        zip(gt_boxes, gt_labels, detections, strict=True)
    ):
        images.append({"id": image_id, "width": 1000, "height": 1000})
        for box, label in zip(boxes, labels, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        for box, score, label in zip(found["boxes"], found["scores"], found["labels"], strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c} for c in range(num_classes)],
        }
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[1])
