"""Detection confusion matrix with a background row and column.

Rows are predicted classes and columns true classes; index `C` (the last) is background:
`[C, j]` counts objects of class j that no detection found, `[i, C]` detections of class i
that found no object. Detections with score >= `score_thr` are matched to objects of any
class in their image at IoU >= `iou_thr`, best IoU first, each detection and each object
at most once. Crowd regions are not objects: they are neither missed nor matched, and a
detection covering one (intersection / detection area >= `iou_thr`) is not counted.
"""

from __future__ import annotations

import numpy as np

from detseg.metrics.tables import DetectionTable, GroundTruthTable, compute_pairs


def detection_confusion_matrix(
    gt: GroundTruthTable,
    dt: DetectionTable,
    *,
    num_images: int,
    num_classes: int,
    iou_thr: float = 0.5,
    score_thr: float = 0.25,
) -> np.ndarray:
    """`[C + 1, C + 1]` int64 counts (rows predicted, columns true, last = background)."""
    confident = np.flatnonzero(dt.scores >= score_thr)
    dt = dt.take(confident)
    pairs = compute_pairs(gt, dt, num_images, "bbox", same_category=False)
    over = pairs.iou >= iou_thr
    on_crowd = over & gt.crowd[pairs.gt]
    candidates = np.flatnonzero(over & ~gt.crowd[pairs.gt])
    # Best IoU first; keep each detection's best object, then each object's best detection.
    candidates = candidates[np.argsort(-pairs.iou[candidates], kind="stable")]
    _, first_dt = np.unique(pairs.dt[candidates], return_index=True)
    candidates = np.sort(candidates[first_dt])
    candidates = candidates[np.argsort(-pairs.iou[candidates], kind="stable")]
    _, first_gt = np.unique(pairs.gt[candidates], return_index=True)
    matched = candidates[first_gt]
    m_dt, m_gt = pairs.dt[matched], pairs.gt[matched]

    background = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    np.add.at(matrix, (dt.category[m_dt], gt.category[m_gt]), 1)
    missed = np.ones(len(gt), dtype=bool)
    missed[m_gt] = False
    missed &= ~gt.crowd
    np.add.at(matrix, (background, gt.category[missed]), 1)
    false = np.ones(len(dt), dtype=bool)
    false[m_dt] = False
    false[pairs.dt[on_crowd]] = False
    np.add.at(matrix, (dt.category[false], background), 1)
    return matrix
