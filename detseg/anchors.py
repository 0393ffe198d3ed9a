"""Prior (anchor) boxes by k-means on box sizes with the 1 - IoU distance, as YOLOv2 does.

Boxes are compared by width and height only, aligned at a common corner, so the IoU of
`(w1, h1)` and `(w2, h2)` is `min(w1, w2) * min(h1, h2) / (w1 h1 + w2 h2 - intersection)`.
Large boxes then do not dominate the clustering the way they would with Euclidean distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detseg.errors import DetsegError

_RESTART_SAMPLE = 10_000  # boxes used to compare k-means restarts


@dataclass(frozen=True)
class AnchorStats:
    """How well anchors cover a set of boxes."""

    avg_iou: float  # mean over boxes of the IoU with the best-matching anchor
    recall: float  # fraction of boxes whose best anchor IoU is >= the recall threshold
    n_boxes: int  # boxes measured (valid sizes only)


@dataclass(frozen=True)
class Anchors:
    """Anchors fitted by `fit_anchors`: `wh` is `[k, 2]` (width, height), sorted by area."""

    wh: np.ndarray
    avg_iou: float
    recall: float
    n_boxes: int  # boxes used for the fit
    n_skipped: int  # boxes left out because a side was <= 0 or not finite


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Corner-aligned IoU `[N, K]` between box sizes `[N, 2]` and anchor sizes `[K, 2]`."""
    wh = np.asarray(wh, dtype=np.float64)
    return _iou_kn(wh[:, 0], wh[:, 1], np.asarray(anchors, dtype=np.float64)).T


def _iou_kn(w: np.ndarray, h: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Corner-aligned IoU laid out `[K, N]` (anchor-major: contiguous rows, ~3x faster)."""
    aw, ah = anchors[:, 0:1], anchors[:, 1:2]
    iou = np.minimum(w, aw)
    iou *= np.minimum(h, ah)
    union = w * h + aw * ah
    union -= iou
    iou /= union
    return iou


def _valid_sizes(wh: np.ndarray) -> tuple[np.ndarray, int]:
    wh = np.asarray(wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise DetsegError(f"box sizes must have shape [N, 2] (width, height); got {wh.shape}")
    valid = np.all(np.isfinite(wh) & (wh > 0), axis=1)
    return wh[valid], int(np.count_nonzero(~valid))


def anchor_stats(wh: np.ndarray, anchors: np.ndarray, recall_thr: float = 0.5) -> AnchorStats:
    """Average best IoU and best-possible recall (best IoU >= `recall_thr`) of `anchors`
    `[K, 2]` over box sizes `wh` `[N, 2]`; boxes with a side <= 0 are not measured."""
    wh, _ = _valid_sizes(wh)
    if len(wh) == 0:
        return AnchorStats(avg_iou=0.0, recall=0.0, n_boxes=0)
    best = _iou_kn(wh[:, 0], wh[:, 1], np.asarray(anchors, dtype=np.float64)).max(axis=0)
    return AnchorStats(
        avg_iou=float(best.mean()),
        recall=float(np.mean(best >= recall_thr)),
        n_boxes=len(wh),
    )


def _kmeans_plus_plus(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with the 1 - IoU distance: each new centre is drawn with probability
    proportional to the squared distance to the nearest centre chosen so far."""
    centres = [wh[rng.integers(len(wh))]]
    nearest = 1 - wh_iou(wh, centres[0][None])[:, 0]
    for _ in range(1, k):
        weights = nearest**2
        total = weights.sum()
        pick = rng.choice(len(wh), p=weights / total) if total > 0 else rng.integers(len(wh))
        centres.append(wh[pick])
        nearest = np.minimum(nearest, 1 - wh_iou(wh, wh[pick][None])[:, 0])
    return np.array(centres)


def _lloyd(wh: np.ndarray, centres: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Alternate assignment (highest IoU) and update (mean size) until fewer than a fraction
    `tol` of the boxes change cluster or the average IoU stops rising (the mean update does
    not always raise it); return the centres with the best average IoU seen. An emptied
    cluster moves to the box worst covered by the other centres."""
    k = len(centres)
    w, h = wh[:, 0].copy(), wh[:, 1].copy()
    best_centres, best_avg = centres, -1.0
    assign = np.full(len(wh), -1)
    for _ in range(max_iter):
        iou = _iou_kn(w, h, centres)
        new_assign = iou.argmax(axis=0)
        avg = float(iou.max(axis=0).mean())
        improved = avg > best_avg + 1e-7
        if avg > best_avg:
            best_centres, best_avg = centres, avg
        if not improved or np.count_nonzero(new_assign != assign) <= tol * len(wh):
            break
        assign = new_assign
        counts = np.bincount(assign, minlength=k)
        sums = np.stack([np.bincount(assign, weights=v, minlength=k) for v in (w, h)], axis=1)
        centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
        for empty in np.flatnonzero(counts == 0):
            centres[empty] = wh[np.argmin(_iou_kn(w, h, centres).max(axis=0))]
    return best_centres


def fit_anchors(
    wh: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    restarts: int = 5,
    recall_thr: float = 0.5,
    max_iter: int = 100,
    tol: float = 1e-3,
) -> Anchors:
    """Cluster box sizes `wh` `[N, 2]` (pixels) into `k` anchors with 1 - IoU k-means.

    Runs `restarts` k-means++ initialisations from `seed` (on a sample of at most 10,000
    boxes), keeps the one with the highest average IoU and refines it on all boxes. Each run
    stops when fewer than a fraction `tol` of the boxes change cluster (or after `max_iter`
    iterations). Boxes with a side <= 0 or not finite are left out, counted in `n_skipped`.
    """
    if k < 1:
        raise DetsegError(f"the number of anchors k must be >= 1; got {k}")
    if restarts < 1:
        raise DetsegError(f"restarts must be >= 1; got {restarts}")
    sizes, n_skipped = _valid_sizes(wh)
    if len(sizes) < k:
        raise DetsegError(
            f"need at least k={k} boxes with positive width and height to fit anchors; "
            f"got {len(sizes)} ({n_skipped} skipped)"
        )
    rng = np.random.default_rng(seed)
    # Restarts only choose a starting point, so they run on a sample; the winner is then
    # refined on every box. This keeps 50k boxes well under a second.
    sample = sizes
    if len(sizes) > _RESTART_SAMPLE:
        sample = sizes[rng.choice(len(sizes), _RESTART_SAMPLE, replace=False)]
    best_centres, best_avg = None, -1.0
    for _ in range(restarts):
        centres = _lloyd(sample, _kmeans_plus_plus(sample, k, rng), max_iter, tol)
        avg = anchor_stats(sample, centres).avg_iou
        if avg > best_avg:
            best_centres, best_avg = centres, avg
    if sample is not sizes:
        best_centres = _lloyd(sizes, best_centres, max_iter, tol)
    anchors = best_centres[np.argsort(best_centres.prod(axis=1), kind="stable")]
    anchors = anchors.astype(np.float32)
    stats = anchor_stats(sizes, anchors, recall_thr)
    return Anchors(
        wh=anchors,
        avg_iou=stats.avg_iou,
        recall=stats.recall,
        n_boxes=len(sizes),
        n_skipped=n_skipped,
    )
