"""The Pascal VOC protocol: per-class AP at one IoU threshold, 11-point (VOC2007) or
all-point (VOC2010 and later, "voc12"), as the VOC devkit's `voc_eval` computes it.

Per class, detections are taken by descending score (ties in input order). Each one looks
at the ground truth of its image and class with the highest IoU (the first on ties); if that
IoU exceeds the threshold (strictly), a `difficult` object makes the detection ignored (it
is neither right nor wrong), a not-yet-detected object makes it a true positive, and an
already-detected one a false positive (a duplicate). Lower IoU: false positive. Crowd
regions count as difficult. IoU is continuous (no "+1 pixel", unlike the 2007 devkit).
Vectorised: the first claim on each object is found with one `np.unique`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detseg.metrics.tables import DetectionTable, GroundTruthTable, compute_pairs

VOC_PROTOCOLS = ("voc07", "voc12")
NO_GT = -1.0  # AP of a class without (non-difficult) ground truth; left out of the mean
_VOC07_RECALLS = np.arange(0.0, 1.1, 0.1)  # the devkit's 11 points, built as it builds them


@dataclass
class VocEvaluation:
    """VOC results: per-class AP and precision/recall curves."""

    protocol: str
    iou_thr: float
    iou_type: str
    ap: np.ndarray  # [K], NO_GT for classes without ground truth
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (recall, precision)
    class_names: list[str]

    @property
    def mean_ap(self) -> float:
        """Mean AP over the classes with ground truth (0 if there are none)."""
        valid = self.ap[self.ap > NO_GT]
        return float(valid.mean()) if valid.size else 0.0

    def pr_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{class name: (recall, precision)} for the classes with ground truth."""
        return self.curves

    def to_dict(self) -> dict:
        """The metrics-file schema: protocol, iou_thr, mAP, per_class {name: AP}."""
        return {
            "protocol": self.protocol,
            "iou_type": self.iou_type,
            "iou_thr": float(self.iou_thr),
            "mAP": self.mean_ap,
            "per_class": {
                name: float(ap) for name, ap in zip(self.class_names, self.ap, strict=True)
            },
        }


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Area under one precision/recall curve, as the devkit's `voc_ap`."""
    if use_07_metric:
        return float(sum(
            (np.max(precision[recall >= t]) if np.any(recall >= t) else 0.0) / 11
            for t in _VOC07_RECALLS
        ))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _first_best(pair_dt: np.ndarray, pair_iou: np.ndarray, n_dt: int):
    """Per detection, the highest IoU over its pairs (-inf without pairs) and the position of
    the first pair reaching it (-1 without pairs). Pairs are detection-major."""
    best_iou = np.full(n_dt, -np.inf)
    best_pair = np.full(n_dt, -1)
    if len(pair_dt) == 0:
        return best_iou, best_pair
    starts = np.flatnonzero(np.r_[True, pair_dt[1:] != pair_dt[:-1]])
    seg_max = np.maximum.reduceat(pair_iou, starts)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(pair_dt)]))
    position = np.where(pair_iou == seg_max[seg], np.arange(len(pair_dt)), len(pair_dt))
    best_iou[pair_dt[starts]] = seg_max
    best_pair[pair_dt[starts]] = np.minimum.reduceat(position, starts)
    return best_iou, best_pair


def evaluate_voc(
    gt: GroundTruthTable,
    dt: DetectionTable,
    *,
    num_images: int,
    class_names: list[str],
    protocol: str = "voc07",
    iou_thr: float = 0.5,
    iou_type: str = "bbox",
) -> VocEvaluation:
    """Run the VOC protocol ("voc07": 11-point AP, "voc12": all-point AP) at `iou_thr`."""
    if protocol not in VOC_PROTOCOLS:
        raise ValueError(f"VOC protocol must be one of {VOC_PROTOCOLS}, not {protocol!r}")
    pairs = compute_pairs(gt, dt, num_images, iou_type, crowd_regions=False)
    best_iou, best_pair = _first_best(pairs.dt, pairs.iou, len(dt))
    best_gt = np.where(best_pair >= 0, pairs.gt[np.maximum(best_pair, 0)], -1)
    ignored_gt = gt.difficult | gt.crowd
    hit = best_iou > iou_thr
    ignored = hit & ignored_gt[np.maximum(best_gt, 0)]
    claims = hit & ~ignored
    order = np.lexsort((np.arange(len(dt)), -dt.scores, dt.category))
    claiming = order[claims[order]]
    _, first = np.unique(best_gt[claiming], return_index=True)
    tp = np.zeros(len(dt), dtype=bool)
    tp[claiming[first]] = True
    fp = ~tp & ~ignored

    npos = np.bincount(gt.category[~ignored_gt], minlength=len(class_names))
    counted = order[~ignored[order]]
    bounds = np.searchsorted(dt.category[counted], np.arange(len(class_names) + 1))
    ap = np.full(len(class_names), NO_GT)
    curves = {}
    for k, name in enumerate(class_names):
        if npos[k] == 0:
            continue
        sel = counted[bounds[k] : bounds[k + 1]]
        tp_sum = np.cumsum(tp[sel]).astype(np.float64)
        fp_sum = np.cumsum(fp[sel]).astype(np.float64)
        recall = tp_sum / npos[k]
        precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
        ap[k] = voc_ap(recall, precision, use_07_metric=protocol == "voc07")
        curves[name] = (recall, precision)
    return VocEvaluation(protocol, iou_thr, iou_type, ap, curves, list(class_names))
