"""VOC protocols: hand-computed AP (arithmetic in comments), difficult objects, and the
vectorised code against the devkit's loop."""

from __future__ import annotations

import numpy as np
import pytest

from detseg.metrics import DetectionEvaluator, format_voc_summary, voc_ap

A, B = 0, 1


def evaluator_with(images, protocol="voc07", iou_thr=0.5, classes=("a", "b")):
    """images: list of (gts [(box, label, difficult)], dets [(box, label, score)])."""
    evaluator = DetectionEvaluator(list(classes), protocol=protocol, iou_thr=iou_thr)
    for gts, dets in images:
        evaluator.update(
            {"boxes": np.array([d[0] for d in dets], float).reshape(-1, 4),
             "labels": [d[1] for d in dets], "scores": [d[2] for d in dets]},
            {"boxes": np.array([g[0] for g in gts], float).reshape(-1, 4),
             "labels": [g[1] for g in gts], "difficult": [g[2] for g in gts]},
        )
    return evaluator


SQUARE = [0, 0, 10, 10]
# Class a: image 1 has G1 = SQUARE and G2 = [20, 0, 30, 10]; image 2 has G3 = SQUARE and a
# difficult G4 = [30, 30, 40, 40]. Detections by score:
#   d6 0.95 img2 on G4 (difficult)  -> ignored
#   d1 0.90 img1 on G1 (IoU 1)      -> TP
#   d2 0.80 img1 on G1 again        -> FP (duplicate)
#   d3 0.70 img2 far away           -> FP
#   d4 0.60 img2 [0,0,10,9] on G3   -> TP (IoU 90 / 100 = 0.9)
#   d5 0.50 img1 on G2              -> TP
# npos = 3 (G4 is difficult). Counted: tp 1 1 1 2 3, fp 0 1 2 2 2
#   recall    1/3 1/3 1/3 2/3 1     precision 1 1/2 1/3 1/2 3/5
TINY = [
    ([(SQUARE, A, 0), ([20, 0, 30, 10], A, 0)],
     [(SQUARE, A, 0.9), (SQUARE, A, 0.8), ([20, 0, 30, 10], A, 0.5)]),
    ([(SQUARE, A, 0), ([30, 30, 40, 40], A, 1)],
     [([30, 30, 40, 40], A, 0.95), ([50, 50, 60, 60], A, 0.7), ([0, 0, 10, 9], A, 0.6)]),
]


def test_voc07_eleven_point_by_hand():
    # max precision at recall >= t: t = 0, .1, .2, .3 -> 1 (all points qualify);
    # t = .4 ... 1.0 (7 points) -> max(1/2, 3/5) or 3/5 = 0.6.  AP = (4 * 1 + 7 * 0.6) / 11
    result = evaluator_with(TINY, "voc07").result()
    assert result["per_class"]["a"] == pytest.approx((4 + 7 * 0.6) / 11)
    assert result["per_class"]["b"] == -1.0  # no ground truth: -1, left out of the mean
    assert result["mAP"] == pytest.approx((4 + 7 * 0.6) / 11)
    assert result["protocol"] == "voc07" and result["iou_thr"] == 0.5


def test_voc12_all_point_by_hand():
    # envelope of precision: 1, .6, .6, .6, .6 at recall 1/3, 1/3, 1/3, 2/3, 1
    # area = 1/3 * 1 + (2/3 - 1/3) * 0.6 + (1 - 2/3) * 0.6 = 1/3 + 0.2 + 0.2
    result = evaluator_with(TINY, "voc12").result()
    assert result["per_class"]["a"] == pytest.approx(1 / 3 + 0.4)


def test_difficult_counts_when_not_difficult():
    # G4 no longer difficult: npos = 4 and d6 (best score) becomes a TP:
    # tp 1 2 2 2 3 4, fp 0 0 1 2 2 2 -> recall .25 .5 .5 .5 .75 1; precision 1 1 2/3 1/2 3/5 2/3
    # all-point envelope: 1 1 2/3 2/3 2/3 2/3 -> .25 * 1 + .25 * 1 + .25 * 2/3 + .25 * 2/3
    easy = [TINY[0], ([(SQUARE, A, 0), ([30, 30, 40, 40], A, 0)], TINY[1][1])]
    assert evaluator_with(easy, "voc12").result()["per_class"]["a"] == pytest.approx(
        0.5 + 0.5 * 2 / 3
    )


def test_threshold_is_strict_and_configurable():
    # IoU of [0,0,10,5] with SQUARE = 50 / 100 = 0.5: not > 0.5 -> FP, AP 0
    images = [([(SQUARE, A, 0)], [([0, 0, 10, 5], A, 0.9)])]
    assert evaluator_with(images, "voc12").result()["per_class"]["a"] == 0.0
    # at iou_thr 0.4 it is a TP: recall 1, precision 1 -> AP 1
    assert evaluator_with(images, "voc12", iou_thr=0.4).result()["per_class"]["a"] == 1.0


def test_class_with_ground_truth_but_no_detections_scores_zero():
    images = [([(SQUARE, A, 0), ([20, 20, 30, 30], B, 0)], [(SQUARE, A, 0.9)])]
    result = evaluator_with(images, "voc07").result()
    assert result["per_class"] == {"a": pytest.approx(1.0), "b": 0.0}  # 11 x (1 / 11)
    assert result["mAP"] == pytest.approx(0.5)


def test_voc_ap_edge_values():
    assert voc_ap(np.array([]), np.array([]), use_07_metric=True) == 0.0
    assert voc_ap(np.array([]), np.array([]), use_07_metric=False) == 0.0
    assert voc_ap(np.array([1.0]), np.array([1.0]), use_07_metric=True) == pytest.approx(1.0)


def devkit_ap(images, cls, iou_thr, use_07):
    """The devkit's voc_eval loop: detection by detection, its best-IoU object."""
    npos = sum(1 for gts, _ in images for g in gts if g[1] == cls and not g[2])
    dets = [(s, i, k, box) for i, (_, ds) in enumerate(images)
            for k, (box, c, s) in enumerate(ds) if c == cls]
    dets.sort(key=lambda d: (-d[0], d[1], d[2]))
    seen = set()
    tp, fp = [], []
    for _, i, _, box in dets:
        gts = [(j, g) for j, g in enumerate(images[i][0]) if g[1] == cls]
        best, best_j = -np.inf, None
        for j, (gbox, _, _) in gts:
            iw = max(0.0, min(box[2], gbox[2]) - max(box[0], gbox[0]))
            ih = max(0.0, min(box[3], gbox[3]) - max(box[1], gbox[1]))
            inter = iw * ih
            union = ((box[2] - box[0]) * (box[3] - box[1])
                     + (gbox[2] - gbox[0]) * (gbox[3] - gbox[1]) - inter)
            if inter / union > best:
                best, best_j = inter / union, j
        if best > iou_thr:
            if images[i][0][best_j][2]:
                continue
            if (i, best_j) in seen:
                tp.append(0)
                fp.append(1)
            else:
                seen.add((i, best_j))
                tp.append(1)
                fp.append(0)
        else:
            tp.append(0)
            fp.append(1)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return voc_ap(tp / npos, tp / np.maximum(tp + fp, np.finfo(float).eps), use_07)


@pytest.mark.parametrize("protocol", ["voc07", "voc12"])
def test_vectorised_equals_devkit_loop(protocol):
    rng = np.random.default_rng(5)
    images = []
    for _ in range(6):
        gts = [([x, y, x + w, y + h], int(c), bool(d)) for x, y, w, h, c, d in zip(
            *rng.integers(0, 30, (2, 6)), *rng.integers(4, 12, (2, 6)),
            rng.integers(0, 2, 6), rng.uniform(size=6) < 0.15, strict=True)]
        dets = [([x, y, x + w, y + h], int(c), float(s)) for x, y, w, h, c, s in zip(
            *rng.integers(0, 30, (2, 15)), *rng.integers(4, 12, (2, 15)),
            rng.integers(0, 2, 15), rng.choice([0.3, 0.6, 0.9], 15), strict=True)]
        images.append((gts, dets))
    result = evaluator_with(images, protocol, iou_thr=0.3).result()
    for cls, name in ((A, "a"), (B, "b")):
        assert result["per_class"][name] == pytest.approx(
            devkit_ap(images, cls, 0.3, protocol == "voc07"), abs=1e-12
        )


def test_voc_summary_table():
    text = format_voc_summary(evaluator_with(TINY, "voc07").result())
    lines = text.splitlines()
    assert lines[0] == "VOC2007 11-point AP @ IoU > 0.50 (bbox)"
    assert lines[2].split() == ["a", f"{(4 + 7 * 0.6) / 11:0.3f}"]
    assert lines[3].split() == ["b", "n/a"]
    assert lines[-1].split() == ["mAP", f"{(4 + 7 * 0.6) / 11:0.3f}"]
