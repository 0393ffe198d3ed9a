"""YOLO loss terms: empty images, perfect predictions, the ignore rule, a slow NumPy reference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from detseg.boxes import box_iou
from detseg.heads.yolo_decode import DEFAULT_SCALE_XY, box_channels
from detseg.heads.yolo_loss import _distribution_focal_loss, yolo_loss_terms
from detseg.heads.yolo_targets import YoloTargetEncoder, check_anchors
from tests.heads.yolo_helpers import ANCHORS_64, perfect_logits, side_distances

LEVELS = ("P3", "P4", "P5")
STRIDES = {"P3": 8, "P4": 16, "P5": 32}
NUM_CLASSES = 3
SORTED_ANCHORS = check_anchors(ANCHORS_64, 3, 3)
LEVEL_ANCHORS = {level: SORTED_ANCHORS[3 * i : 3 * i + 3] for i, level in enumerate(LEVELS)}
# What perfect_logits needs to know about a model.
GEOMETRY = SimpleNamespace(
    levels=LEVELS,
    strides=STRIDES,
    level_anchors=LEVEL_ANCHORS,
    num_classes=NUM_CLASSES,
    scale_xy=DEFAULT_SCALE_XY,
)


def encode(boxes, labels, **kwargs):
    enc = YoloTargetEncoder(ANCHORS_64, (8, 16, 32), 64, NUM_CLASSES, max_boxes=8, **kwargs)
    return enc(
        [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes], [np.asarray(c) for c in labels]
    )


def random_logits(batch: int, seed: int, scale: float = 1.0, bins: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    channels = box_channels(bins) + 1 + NUM_CLASSES
    return {
        level: (rng.normal(size=(batch, 64 // s, 64 // s, 3, channels)) * scale).astype(np.float32)
        for level, s in STRIDES.items()
    }


def raw_loss_terms(
    targets,
    outputs,
    box_loss="ciou",
    ignore_thresh=0.5,
    label_smoothing=0.0,
    objectness_target="one",
    box_bins=0,
):
    """(box, obj, cls) per image as backend tensors, for the test model's anchors and strides."""
    return yolo_loss_terms(
        targets,
        outputs,
        LEVEL_ANCHORS,
        STRIDES,
        num_classes=NUM_CLASSES,
        input_size=64,
        ignore_thresh=ignore_thresh,
        box_loss=box_loss,
        label_smoothing=label_smoothing,
        objectness_target=objectness_target,
        box_bins=box_bins,
    )


def loss_terms(targets, outputs, *args, **kwargs):
    """`raw_loss_terms` (same arguments) as NumPy arrays."""
    return [keras.ops.convert_to_numpy(t) for t in raw_loss_terms(targets, outputs, *args, **kwargs)]


@pytest.mark.parametrize("box_loss", ["yolov3", "ciou", "giou"])
def test_no_ground_truth_gives_only_an_objectness_loss(box_loss):
    targets = encode([[], []], [[], []])
    box, obj, cls = loss_terms(targets, random_logits(2, seed=1), box_loss)
    assert np.all(obj > 0)
    np.testing.assert_array_equal(box, [0.0, 0.0])
    np.testing.assert_array_equal(cls, [0.0, 0.0])


BOXES = [[[10, 20, 22, 34], [0, 0, 64, 64], [30, 33, 47, 41]], [[40, 2, 60, 30]]]
LABELS = [[1, 0, 2], [1]]


@pytest.mark.parametrize("box_loss", ["ciou", "giou"])
def test_perfect_prediction_has_near_zero_iou_box_loss(box_loss):
    targets = encode(BOXES, LABELS)
    box, obj, cls = loss_terms(targets, perfect_logits(targets, GEOMETRY), box_loss)
    np.testing.assert_allclose(box, 0.0, atol=1e-5)
    # Every logit is +/-20 on the right side: BCE log(1 + e^-20) ~ 2e-9 each.
    np.testing.assert_allclose(obj, 0.0, atol=1e-4)
    np.testing.assert_allclose(cls, 0.0, atol=1e-4)


def entropy(p):
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def test_perfect_prediction_reaches_the_minimum_of_the_yolov3_box_loss():
    # The centre BCE is minimised at sigmoid(t) = target, where it equals the target's entropy;
    # the log-size error is 0. Image 0: three boxes; each term is scaled by 2 - w*h / 64^2.
    targets = encode(BOXES, LABELS)
    box, _, _ = loss_terms(targets, perfect_logits(targets, GEOMETRY), "yolov3")
    want = []
    for image_boxes in BOXES:
        total = 0.0
        for x0, y0, x1, y1 in image_boxes:
            w, h = x1 - x0, y1 - y0
            stride = {"P3": 8, "P4": 16, "P5": 32}[level_of(w, h)]
            offsets = np.array([(x0 + x1) / 2 / stride % 1, (y0 + y1) / 2 / stride % 1])
            # Centre (64 / 2) / 32 = 1.0 exactly -> offset 0 in cell 1, as the encoder assigns it.
            target = (offsets + (DEFAULT_SCALE_XY - 1) / 2) / DEFAULT_SCALE_XY
            total += entropy(target).sum() * (2 - w * h / 64**2)
        want.append(total)
    np.testing.assert_allclose(box, want, rtol=1e-4)


def level_of(w, h):
    ious = [
        min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah))
        for aw, ah in SORTED_ANCHORS
    ]
    return LEVELS[int(np.argmax(ious)) // 3]


def test_ignore_rule_drops_the_background_term_of_a_good_unassigned_prediction():
    # One 12x14 box -> P3 cell (y 3, x 2) anchor 2. Make P3 anchor 1 at the same cell predict the
    # very same box with objectness logit z = 1.5: as background it would cost
    # BCE(0, z) = log(1 + e^1.5) = 1.7014; its IoU with the ground truth is 1 > 0.5 -> ignored.
    targets = encode([[[10, 20, 22, 34]]], [[1]])
    outputs = perfect_logits(targets, GEOMETRY)
    outputs["P3"][0, 3, 2, 1] = outputs["P3"][0, 3, 2, 2]
    outputs["P3"][0, 3, 2, 1, 2:4] = np.log(np.array([12.0, 14.0]) / SORTED_ANCHORS[1])
    outputs["P3"][0, 3, 2, 1, 4] = 1.5
    _, obj_ignored, _ = loss_terms(targets, outputs, ignore_thresh=0.5)
    _, obj_counted, _ = loss_terms(targets, outputs, ignore_thresh=1.0)
    np.testing.assert_allclose(obj_counted - obj_ignored, [math.log1p(math.exp(1.5))], rtol=1e-5)


def test_iou_objectness_target_by_hand():
    # One 12x14 box [10, 20, 22, 34] -> P3 cell (y 3, x 2) anchor 2. Its prediction keeps the
    # centre but is 24 px wide: [4, 20, 28, 34], IoU = 12 * 14 / (24 * 14) = 0.5. With the
    # objectness logit z = 0.8 the positive's term is BCE(0.5, z) instead of BCE(1, z):
    # BCE(p, z) = log(1 + e^z) - p z, so the difference is (1 - 0.5) z = 0.4.
    targets = encode([[[10, 20, 22, 34]]], [[1]])
    outputs = perfect_logits(targets, GEOMETRY)
    outputs["P3"][0, 3, 2, 2, 2:4] = np.log(np.array([24.0, 14.0]) / SORTED_ANCHORS[2])
    outputs["P3"][0, 3, 2, 2, 4] = 0.8
    _, obj_one, _ = loss_terms(targets, outputs, objectness_target="one")
    _, obj_iou, _ = loss_terms(targets, outputs, objectness_target="iou")
    pred, truth = np.array([4.0, 20, 28, 34]), np.array([10.0, 20, 22, 34])
    inter = np.prod(np.minimum(pred[2:], truth[2:]) - np.maximum(pred[:2], truth[:2]))
    iou = inter / (np.prod(pred[2:] - pred[:2]) + np.prod(truth[2:] - truth[:2]) - inter)
    assert iou == 0.5
    # Every other anchor's term is the same under both targets.
    np.testing.assert_allclose(obj_iou - obj_one, [bce(iou, 0.8) - bce(1.0, 0.8)], rtol=1e-4)
    np.testing.assert_allclose(obj_iou - obj_one, [0.4], rtol=1e-4)


def test_iou_objectness_target_gives_the_box_no_gradient():
    import tensorflow as tf

    targets = encode(BOXES, LABELS)
    outputs = {k: tf.Variable(v) for k, v in random_logits(2, seed=5).items()}
    with tf.GradientTape() as tape:
        _, obj, _ = raw_loss_terms(targets, outputs, objectness_target="iou")
        total = tf.reduce_sum(obj)
    for grad in tape.gradient(total, list(outputs.values())):
        assert np.all(grad.numpy()[..., :4] == 0) and np.any(grad.numpy()[..., 4] != 0)


def bce(target, logit):
    return max(logit, 0) - logit * target + math.log1p(math.exp(-abs(logit)))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def slow_loss(targets, outputs, box_loss, ignore_thresh, label_smoothing, objectness_target, bins=0):
    """The loss written out one anchor at a time, with detseg.boxes' NumPy IoUs (IoU box losses
    and the "iou" objectness target); with `bins`, the distribution-focal head side by side."""
    batch = targets["gt_boxes"].shape[0]
    box_sum, obj_sum, cls_sum, ignored = np.zeros(batch), np.zeros(batch), np.zeros(batch), 0
    s = DEFAULT_SCALE_XY
    n = box_channels(bins)  # objectness at n, classes after it
    for b in range(batch):
        gts = targets["gt_boxes"][b][targets["gt_labels"][b] >= 0]
        for level in LEVELS:
            raw, stride = outputs[level][b].astype(np.float64), STRIDES[level]
            grid = raw.shape[0]
            for gy in range(grid):
                for gx in range(grid):
                    for a in range(3):
                        t = raw[gy, gx, a]
                        aw, ah = LEVEL_ANCHORS[level][a]
                        if bins:
                            pred, dfl = slow_sides(t[:n], gx, gy, stride, (aw, ah), bins)
                        else:
                            cx = (s * sigmoid(t[0]) - (s - 1) / 2 + gx) * stride
                            cy = (s * sigmoid(t[1]) - (s - 1) / 2 + gy) * stride
                            w = aw * math.exp(min(max(t[2], -6), 6))
                            h = ah * math.exp(min(max(t[3], -6), 6))
                            pred = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                        if targets[f"{level}_obj"][b, gy, gx, a]:
                            target = targets[f"{level}_box"][b, gy, gx, a].astype(np.float64)
                            label = targets[f"{level}_cls"][b, gy, gx, a]
                            tightness = box_iou(pred[None], target[None])[0, 0]
                            obj_sum[b] += bce(tightness if objectness_target == "iou" else 1.0, t[n])
                            for c in range(NUM_CLASSES):
                                want = (1 - label_smoothing) * (c == label) + label_smoothing / 2
                                cls_sum[b] += bce(want, t[n + 1 + c])
                            box_sum[b] += 1 - box_iou(pred[None], target[None], box_loss)[0, 0]
                            if bins:  # + DFL_WEIGHT (0.2) x the distribution focal loss
                                box_sum[b] += 0.2 * dfl(target)
                            else:  # + LOG_SIZE_WEIGHT (0.25) x squared error of the log sizes
                                tw, th = target[2] - target[0], target[3] - target[1]
                                box_sum[b] += 0.25 * (
                                    (t[2] - math.log(tw / aw)) ** 2 + (t[3] - math.log(th / ah)) ** 2
                                )
                        elif len(gts) and box_iou(pred[None], gts).max() > ignore_thresh:
                            ignored += 1
                        else:
                            obj_sum[b] += bce(0.0, t[n])
    return box_sum, obj_sum, cls_sum, ignored


def slow_sides(logits, gx, gy, stride, anchor, bins):
    """A distribution-focal anchor one side at a time: its decoded box, and its DFL as a
    function of the target box. Bins are 2 anchor sizes / (bins - 1) wide."""
    cx, cy = (gx + 0.5) * stride, (gy + 0.5) * stride
    width = [anchor[0] * 2 / (bins - 1), anchor[1] * 2 / (bins - 1)] * 2  # l, t, r, b
    log_probs, sides = [], []
    for side in range(4):
        z = logits[side * bins : (side + 1) * bins]
        log_p = z - z.max() - math.log(sum(math.exp(v - z.max()) for v in z))
        log_probs.append(log_p)
        sides.append(sum(k * math.exp(log_p[k]) for k in range(bins)) * width[side])
    pred = np.array([cx - sides[0], cy - sides[1], cx + sides[2], cy + sides[3]])

    def dfl(target):
        total = 0.0
        distances = [cx - target[0], cy - target[1], target[2] - cx, target[3] - cy]
        for side in range(4):
            y = min(max(distances[side] / width[side], 0.0), bins - 1.001)
            i = int(y)
            total -= (i + 1 - y) * log_probs[side][i] + (y - i) * log_probs[side][i + 1]
        return total / 4

    return pred, dfl


@pytest.mark.parametrize(
    ("box_loss", "objectness_target", "bins"),
    [("ciou", "one", 0), ("giou", "one", 0), ("ciou", "iou", 0), ("ciou", "one", 16), ("giou", "iou", 5)],
)
def test_loss_matches_a_slow_per_anchor_reference(box_loss, objectness_target, bins):
    targets = encode(BOXES, LABELS, assign_thresh=0.3)
    outputs = random_logits(2, seed=3, scale=0.7, bins=bins)
    got = loss_terms(targets, outputs, box_loss, 0.4, 0.1, objectness_target, bins)
    *want, ignored = slow_loss(targets, outputs, box_loss, 0.4, 0.1, objectness_target, bins)
    assert ignored > 0  # the ignore rule is exercised
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4)


@pytest.mark.parametrize(("box_loss", "bins"), [("yolov3", 0), ("ciou", 0), ("giou", 0), ("ciou", 16)])
def test_gradients_are_finite_even_for_extreme_logits(box_loss, bins):
    import tensorflow as tf

    # Tiny (1 px), huge and cell-border boxes, an empty image, logits up to +/-60.
    targets = encode([[[1, 1, 2, 2], [0, 0, 64, 64], [8, 8, 24, 24]], []], [[0, 1, 2], []])
    outputs = {
        k: tf.Variable(v) for k, v in random_logits(2, seed=4, scale=30.0, bins=bins).items()
    }
    with tf.GradientTape() as tape:
        terms = raw_loss_terms(targets, outputs, box_loss, box_bins=bins)
        total = tf.reduce_sum(terms[0] + terms[1] + terms[2])
    grads = tape.gradient(total, list(outputs.values()))
    assert np.isfinite(total.numpy())
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy()))
    # Unassigned anchors get no box or class gradient.
    n = box_channels(bins)
    assert np.all(grads[2].numpy()[1, ..., :n] == 0) and np.all(grads[2].numpy()[1, ..., n + 1 :] == 0)


def test_distribution_focal_loss_by_hand():
    # 4 bins over 0..2 anchor sizes: an 8x8 anchor has bins 16/3 px wide. Cell (0, 0) of stride
    # 8 has its centre at (4, 4). Sides at 1.25, 0.5, 2.0 and 3.5 bins (the last beyond the last
    # bin, clipped to 2.999). Every side's softmax is (0.1, 0.2, 0.3, 0.4).
    width = 16 / 3
    target = np.array([4 - 1.25 * width, 4 - 0.5 * width, 4 + 2.0 * width, 4 + 3.5 * width])
    logits = np.tile(np.log([0.1, 0.2, 0.3, 0.4]), 4).reshape(1, 1, 1, 1, 16)
    got = _distribution_focal_loss(
        keras.ops.convert_to_tensor(logits, "float32"),
        keras.ops.convert_to_tensor(target.reshape(1, 1, 1, 1, 4), "float32"),
        np.array([[8.0, 8.0]]),
        8,
        4,
    )
    by_side = [
        -(0.75 * math.log(0.2) + 0.25 * math.log(0.3)),
        -(0.5 * math.log(0.1) + 0.5 * math.log(0.2)),
        -math.log(0.3),
        -(0.001 * math.log(0.3) + 0.999 * math.log(0.4)),
    ]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), [[[[sum(by_side) / 4]]]], rtol=1e-5)


def test_perfect_distributions_reach_the_minimum_of_the_distribution_focal_loss():
    # Mass (i + 1 - y, y - i) on the two bins around each side's distance y decodes to the box
    # exactly (IoU loss 0), and its DFL is the least it can be: that split's entropy.
    geometry = SimpleNamespace(**vars(GEOMETRY), box_bins=16)
    targets = encode(BOXES, LABELS)
    box, obj, cls = loss_terms(targets, perfect_logits(targets, geometry), box_bins=16)
    want = np.zeros(2)
    for level in LEVELS:
        b, y, x, a = np.nonzero(targets[f"{level}_obj"])
        boxes = targets[f"{level}_box"][b, y, x, a].astype(np.float64)
        anchors = LEVEL_ANCHORS[level][a]
        share = side_distances(boxes, x, y, STRIDES[level], anchors, 16) % 1.0
        entropy_by_side = -(share * np.log(np.maximum(share, 1e-12)))
        entropy_by_side -= (1 - share) * np.log(np.maximum(1 - share, 1e-12))
        np.add.at(want, b, 0.2 * entropy_by_side.mean(axis=1))
    assert want.min() > 0.05  # the boxes do not all fall on bin centres
    np.testing.assert_allclose(box, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(obj, 0.0, atol=1e-4)
    np.testing.assert_allclose(cls, 0.0, atol=1e-4)
