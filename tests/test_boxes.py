"""Box conversions, IoU family and NMS against hand values, keras' own converter and slow
obvious loops."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from detseg.boxes import (
    BOX_FORMATS,
    box_area,
    box_ciou,
    box_diou,
    box_giou,
    box_iou,
    ciou_ops,
    clip_boxes,
    convert_boxes,
    diou_ops,
    giou_ops,
    iou_ops,
    nms,
)


def random_boxes(rng: np.random.Generator, n: int, size: float = 100.0) -> np.ndarray:
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float64)


# === Conversions ===
def test_convert_hand_values():
    box = np.array([[10.0, 20.0, 30.0, 60.0]])  # x1 y1 x2 y2
    np.testing.assert_allclose(convert_boxes(box, "xyxy", "xywh"), [[10, 20, 20, 40]])
    np.testing.assert_allclose(convert_boxes(box, "xyxy", "center_xywh"), [[20, 40, 20, 40]])
    np.testing.assert_allclose(convert_boxes(box, "xyxy", "yxyx"), [[20, 10, 60, 30]])
    # YOLO txt: centre (20, 40) / (100, 200), size (20, 40) / (100, 200)
    np.testing.assert_allclose(
        convert_boxes(box, "xyxy", "rel_center_xywh", height=200, width=100),
        [[0.2, 0.2, 0.2, 0.2]],
    )
    assert convert_boxes(box, "xyxy", "xywh").dtype == np.float64  # float64 stays float64
    assert convert_boxes(box.astype(int), "xyxy", "xywh").dtype == np.float32  # else float32


@pytest.mark.parametrize("source", BOX_FORMATS)
@pytest.mark.parametrize("target", ["xyxy", "xywh", "center_xywh", "rel_center_xywh", "rel_xyxy"])
def test_convert_agrees_with_keras_convert_format(source, target):
    rng = np.random.default_rng(0)
    xyxy = random_boxes(rng, 8).astype(np.float32)
    height, width = 120, 160
    boxes = convert_boxes(xyxy, "xyxy", source, height=height, width=width)
    ours = convert_boxes(boxes, source, target, height=height, width=width)
    theirs = keras.utils.bounding_boxes.convert_format(
        boxes, source=source, target=target, height=height, width=width
    )
    np.testing.assert_allclose(ours, keras.ops.convert_to_numpy(theirs), rtol=1e-5, atol=1e-4)


def test_convert_round_trip_and_batch_shapes():
    rng = np.random.default_rng(1)
    xyxy = random_boxes(rng, 12).reshape(3, 4, 4)
    for fmt in BOX_FORMATS:
        there = convert_boxes(xyxy, "xyxy", fmt, height=300, width=200)
        assert there.shape == (3, 4, 4)
        back = convert_boxes(there, fmt, "xyxy", height=300, width=200)
        np.testing.assert_allclose(back, xyxy, rtol=1e-12)


def test_convert_errors_name_the_problem():
    with pytest.raises(ValueError, match="Unknown box format 'xyzw'"):
        convert_boxes(np.zeros((1, 4)), "xyzw", "xyxy")
    with pytest.raises(ValueError, match="needs the image height and width"):
        convert_boxes(np.zeros((1, 4)), "xyxy", "rel_xyxy")
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 4\]"):
        convert_boxes(np.zeros((2, 3)), "xyxy", "xywh")


def test_area_and_clip_hand_values():
    boxes = np.array([[0, 0, 10, 5], [5, 5, 3, 9], [-5, -5, 20, 40]], dtype=np.float32)
    # 10 * 5; inverted box counts 0; 25 * 45
    np.testing.assert_allclose(box_area(boxes), [50, 0, 1125])
    np.testing.assert_allclose(
        clip_boxes(boxes, height=30, width=16), [[0, 0, 10, 5], [5, 5, 3, 9], [0, 0, 16, 30]]
    )


# === IoU family ===
def test_iou_hand_values():
    a = np.array([[0.0, 0.0, 100.0, 100.0]])
    b = np.array([[1.0, 1.0, 100.0, 100.0], [50.0, 0.0, 150.0, 100.0], [200.0, 0, 300, 100]])
    # iou = 9801 / (10000 + 9801 - 9801); 5000 / 15000; disjoint 0
    np.testing.assert_allclose(box_iou(a, b), [[0.9801, 1 / 3, 0.0]])


def test_giou_diou_ciou_hand_values():
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    far = np.array([[20.0, 0.0, 30.0, 10.0]])
    # giou = 0 - (enclosing 300 - union 200) / 300
    np.testing.assert_allclose(box_giou(a, far), [[-1 / 3]])
    # diou = 0 - centre distance^2 (20^2 = 400) / enclosing diagonal^2 (30^2 + 10^2 = 1000)
    np.testing.assert_allclose(box_diou(a, far), [[-0.4]])
    # same aspect ratio: the ciou term v is 0
    np.testing.assert_allclose(box_ciou(a, far), [[-0.4]])
    wide = np.array([[0.0, 0.0, 20.0, 10.0]])
    # iou = 100 / 200; rho^2 = 5^2 = 25; c^2 = 20^2 + 10^2 = 500 -> diou = 0.5 - 0.05
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    alpha = v / (1 - 0.5 + v)
    np.testing.assert_allclose(box_diou(a, wide), [[0.45]])
    np.testing.assert_allclose(box_ciou(a, wide), [[0.45 - alpha * v]])


def _slow_iou(a, b, kind):
    """One pair at a time, straight from the definitions."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    iou = inter / union
    cw = max(a[2], b[2]) - min(a[0], b[0])
    ch = max(a[3], b[3]) - min(a[1], b[1])
    if kind == "iou":
        return iou
    if kind == "giou":
        return iou - (cw * ch - union) / (cw * ch)
    rho2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + (
        (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2
    ) ** 2
    diou = iou - rho2 / (cw**2 + ch**2)
    if kind == "diou":
        return diou
    v = (
        4
        / math.pi**2
        * (math.atan((b[2] - b[0]) / (b[3] - b[1])) - math.atan((a[2] - a[0]) / (a[3] - a[1]))) ** 2
    )
    return diou - v / (1 - iou + v) * v


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_pairwise_matches_slow_double_loop(kind):
    rng = np.random.default_rng(2)
    a, b = random_boxes(rng, 7), random_boxes(rng, 9)
    slow = np.array([[_slow_iou(x, y, kind) for y in b] for x in a])
    np.testing.assert_allclose(box_iou(a, b, kind), slow, rtol=1e-12, atol=1e-12)


def test_pairwise_empty_inputs():
    assert box_iou(np.zeros((0, 4)), random_boxes(np.random.default_rng(0), 3)).shape == (0, 3)
    assert box_ciou(np.zeros((2, 4)), np.zeros((0, 4))).shape == (2, 0)


@pytest.mark.jax
def test_ops_versions_match_numpy_elementwise():
    rng = np.random.default_rng(3)
    a, b = random_boxes(rng, 16).astype(np.float32), random_boxes(rng, 16).astype(np.float32)
    a[0] = b[0]  # identical boxes: iou 1
    for fn, kind in ((iou_ops, "iou"), (giou_ops, "giou"), (diou_ops, "diou"), (ciou_ops, "ciou")):
        ours = keras.ops.convert_to_numpy(fn(a.reshape(2, 8, 4), b.reshape(2, 8, 4)))
        expected = np.diagonal(box_iou(a.astype(np.float64), b.astype(np.float64), kind))
        np.testing.assert_allclose(ours.reshape(-1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.jax
def test_ops_degenerate_boxes_give_zero_not_nan():
    zero = np.zeros((3, 4), dtype=np.float32)
    for fn in (iou_ops, giou_ops, diou_ops, ciou_ops):
        assert np.all(keras.ops.convert_to_numpy(fn(zero, zero)) == 0.0)


# === NMS ===
def _slow_nms(boxes, scores, iou_thr, labels=None, score_thr=0.0, max_det=300):
    """Greedy NMS one candidate at a time, best (then earliest) first."""
    order = sorted(
        (i for i in range(len(scores)) if scores[i] > score_thr), key=lambda i: -scores[i]
    )
    keep = []
    for i in order:
        if all(
            (labels is not None and labels[i] != labels[j])
            or _slow_iou(boxes[i], boxes[j], "iou") <= iou_thr
            for j in keep
        ):
            keep.append(i)
    return keep[:max_det]


def clustered(rng, n, n_classes=4):
    centres = rng.uniform(20, 180, (8, 2))
    which = rng.integers(0, 8, n)
    half = rng.uniform(5, 30, (8, 2))[which] * rng.uniform(0.8, 1.2, (n, 2))
    c = centres[which] + rng.normal(0, 3, (n, 2))
    boxes = np.concatenate([c - half, c + half], axis=1)
    scores = np.round(rng.uniform(0, 1, n), 2).astype(np.float32)  # rounded: ties occur
    return boxes, scores, rng.integers(0, n_classes, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_slow_loop(seed):
    rng = np.random.default_rng(seed)
    boxes, scores, labels = clustered(rng, 150)
    for kwargs in ({}, {"labels": labels}, {"labels": labels, "score_thr": 0.3, "max_det": 7}):
        expected = _slow_nms(boxes, scores, 0.45, **kwargs)
        np.testing.assert_array_equal(nms(boxes, scores, 0.45, **kwargs), expected)


def test_nms_hand_cases():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.9], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # iou(0, 1) = 50 / 100 = 0.5: not above 0.5, kept; iou(0, 2) = 49 / 100; iou(1, 2) = 49/50
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0, 1, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.49), [0, 2, 3])  # 0.49 is not > 0.49
    # different classes never suppress each other
    np.testing.assert_array_equal(nms(boxes, scores, 0.3, labels=[0, 1, 1, 0]), [0, 1, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.3, score_thr=0.65), [0])  # 0.6 < 0.65
    np.testing.assert_array_equal(nms(boxes, scores, 0.3, max_det=1), [0])


def test_nms_empty_and_identical_zero_area():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5, labels=np.zeros(0, int)).shape == (0,)
    assert nms(np.ones((3, 4)), np.array([0.1, 0.2, 0.3]), 0.5, score_thr=0.5).shape == (0,)
    # documented: identical zero-area boxes are duplicates
    point = np.array([[5, 5, 5, 5], [5, 5, 5, 5]], float)
    np.testing.assert_array_equal(nms(point, np.array([0.9, 0.8]), 0.5), [0])
