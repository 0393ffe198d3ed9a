"""The COCO detection protocol, computing exactly what pycocotools' `COCOeval` computes
(evaluate + accumulate + summarize) with vectorised NumPy.

What pycocotools does, and how it is done here:
- Per (image, category), detections are sorted by score (stable, so ties keep file order)
  and only the best 100 are evaluated; ground truth is sorted "not ignored" first. Ignored
  ground truth is crowd, or outside the area range (`area` as written in the annotation).
- Greedy matching, detection by detection: a detection takes the unmatched, not-ignored
  ground truth of highest IoU >= t (the last one on ties); failing that, an ignored one (a
  crowd region may be matched many times, its IoU being intersection / detection area).
  Here the loop runs over the detection *rank* (at most 100 steps) and each step matches
  that rank of every (image, category) group at once, for all 10 IoU thresholds and all 4
  area ranges together; only pairs with IoU >= 0.5 take part, as no other can match.
- Detections matched to ignored ground truth, and unmatched ones outside the area range,
  are ignored. Per category, detections of all images are sorted by score (stable: ties by
  image id, then rank), precision is made monotone, and sampled at 101 recall points.
- Summary: the same 12 means over the same arrays, so the numbers agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detseg.metrics.tables import DetectionTable, GroundTruthTable, Pairs, compute_pairs

# The very parameter arrays of pycocotools' Params.setDetParams (built the same way, so the
# floats are identical: 0.75 must compare equal when the summary picks IoU=.75).
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = ((0**2, 1e5**2), (0**2, 32**2), (32**2, 96**2), (96**2, 1e5**2))
AREA_LABELS = ("all", "small", "medium", "large")
NO_GT = -1.0  # precision/recall/AP of a setting without ground truth, as in pycocotools

# (name, is_ap, iou_thr, area, max_dets) of the 12 summary numbers, in pycocotools order.
SUMMARY = (
    ("AP", True, None, "all", 100),
    ("AP50", True, 0.5, "all", 100),
    ("AP75", True, 0.75, "all", 100),
    ("APs", True, None, "small", 100),
    ("APm", True, None, "medium", 100),
    ("APl", True, None, "large", 100),
    ("AR1", False, None, "all", 1),
    ("AR10", False, None, "all", 10),
    ("AR100", False, None, "all", 100),
    ("ARs", False, None, "small", 100),
    ("ARm", False, None, "medium", 100),
    ("ARl", False, None, "large", 100),
)


@dataclass
class CocoEvaluation:
    """COCO results: the accumulated arrays plus the 12 summary numbers."""

    precision: np.ndarray  # [T, R, K, A, M] (-1 where a category has no ground truth)
    recall: np.ndarray  # [T, K, A, M]
    stats: np.ndarray  # [12] in pycocotools order
    class_names: list[str]
    iou_type: str

    def class_ap(self, iou_index: int | None = None) -> np.ndarray:
        """Per-category AP `[K]` (area all, 100 detections), over all IoU thresholds or at
        one (`iou_index` 0 is IoU=.50); -1 for categories without ground truth."""
        s = self.precision[:, :, :, 0, -1]
        if iou_index is not None:
            s = s[iou_index : iou_index + 1]
        values = [s[:, :, k][s[:, :, k] > -1] for k in range(s.shape[2])]
        return np.array([np.mean(v) if v.size else NO_GT for v in values])

    def pr_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{class name: (recall, precision)} at IoU=.50 (area all, 100 detections) for the
        classes with ground truth, sampled at the 101 COCO recall points."""
        curves = {}
        for k, name in enumerate(self.class_names):
            precision = self.precision[0, :, k, 0, -1]
            if np.all(precision > -1):
                curves[name] = (REC_THRS, precision)
        return curves

    def to_dict(self) -> dict:
        """The metrics-file schema: protocol, iou_type, stats, the 12 named numbers, per_class."""
        ap, ap50 = self.class_ap(), self.class_ap(0)
        return {
            "protocol": "coco",
            "iou_type": self.iou_type,
            "stats": [float(v) for v in self.stats],
            **{name: float(v) for (name, *_), v in zip(SUMMARY, self.stats, strict=True)},
            "per_class": {
                name: {"AP": float(a), "AP50": float(a50)}
                for name, a, a50 in zip(self.class_names, ap, ap50, strict=True)
            },
        }


def _area_ignore(area: np.ndarray) -> np.ndarray:
    """`[A, N]` True where an area is outside each range (bounds inclusive, as pycocotools)."""
    lo = np.array([r[0] for r in AREA_RANGES], dtype=np.float64)[:, None]
    hi = np.array([r[1] for r in AREA_RANGES], dtype=np.float64)[:, None]
    return (area[None, :] < lo) | (area[None, :] > hi)


def _rank_detections(dt: DetectionTable, num_images: int) -> tuple[DetectionTable, np.ndarray]:
    """Sort detections by (category, image, -score, input order) and return them with their
    rank inside their (image, category) group, keeping only the best `MAX_DETS[-1]`."""
    key = dt.category * max(num_images, 1) + dt.image
    order = np.lexsort((-dt.scores, key))  # stable: ties keep input order
    dt, key = dt.take(order), key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(dt) else np.zeros(0, int)
    lengths = np.diff(np.r_[starts, len(dt)])
    rank = np.arange(len(dt)) - np.repeat(starts, lengths)
    keep = rank < MAX_DETS[-1]
    return dt.take(np.flatnonzero(keep)), rank[keep]


def _pick(mask: np.ndarray, iou: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment of pairs (one detection each) and per leading index, the position of the
    highest-IoU pair where `mask` holds, the last one on ties; -1 where none holds."""
    value = np.where(mask, iou, -1.0)
    best = np.maximum.reduceat(value, starts, axis=-1)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, value.shape[-1]]))
    is_best = mask & (value == best[..., seg])
    position = np.where(is_best, np.arange(value.shape[-1]), -1)
    return np.maximum.reduceat(position, starts, axis=-1)


@dataclass
class _Matches:
    """The matches of the greedy matching, one row per (area range, threshold, detection)
    that matched: sparse, as most detections match nothing."""

    area: np.ndarray  # [N] area-range index
    thr: np.ndarray  # [N] IoU-threshold index
    dt: np.ndarray  # [N] detection index
    gt: np.ndarray  # [N] ground-truth index


def _match(pairs: Pairs, rank: np.ndarray, gt: GroundTruthTable, gt_ignore: np.ndarray):
    """Greedy COCO matching for every IoU threshold and area range at once (see the module
    docstring); the Python loop runs over detection ranks only."""
    n_area, n_thr = gt_ignore.shape[0], len(IOU_THRS)
    taken = np.zeros((n_area, n_thr, len(gt)), dtype=bool)
    relevant = np.flatnonzero(pairs.iou >= IOU_THRS[0])
    # Stable sort by rank keeps pairs detection-major, ground truth in table order.
    relevant = relevant[np.argsort(rank[pairs.dt[relevant]], kind="stable")]
    pair_dt, pair_gt, pair_iou = pairs.dt[relevant], pairs.gt[relevant], pairs.iou[relevant]
    bounds = np.searchsorted(rank[pair_dt], np.arange(MAX_DETS[-1] + 1))
    thrs = IOU_THRS[:, None]
    found = []
    for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
        if begin == end:
            continue
        d, g, v = pair_dt[begin:end], pair_gt[begin:end], pair_iou[begin:end]
        starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        ok = (~taken[:, :, g] | gt.crowd[g]) & (v >= thrs)  # [A, T, P]
        ignored = gt_ignore[:, g][:, None, :]  # [A, 1, P]
        chosen = _pick(ok & ~ignored, v, starts)
        chosen = np.where(chosen >= 0, chosen, _pick(ok & ignored, v, starts))
        a_idx, t_idx, s_idx = np.nonzero(chosen >= 0)
        matched_gt = g[chosen[a_idx, t_idx, s_idx]]
        taken[a_idx, t_idx, matched_gt] = True
        found.append((a_idx, t_idx, d[starts[s_idx]], matched_gt))
    if not found:
        return _Matches(*(np.zeros(0, dtype=np.int64),) * 4)
    return _Matches(*(np.concatenate(column) for column in zip(*found, strict=True)))


def _first_reaching(npig: np.ndarray) -> np.ndarray:
    """`[K, A, R]` smallest true-positive count j with `j / npig >= recall threshold`, in
    floating point exactly as pycocotools compares `tp / npig` with `recThrs`."""
    n = np.maximum(npig, 1)[..., None].astype(np.float64)
    j = np.ceil(REC_THRS * n)
    j -= ((j - 1) / n >= REC_THRS) & (j > 0)  # correct a ceil pushed up by rounding
    j += j / n < REC_THRS  # or pushed down
    return j.astype(np.int64)


def _group_starts(group: np.ndarray) -> np.ndarray:
    """For each element of a sorted `group` array, the index where its group begins."""
    begins = np.r_[True, group[1:] != group[:-1]] if len(group) else np.zeros(0, bool)
    return np.maximum.accumulate(np.where(begins, np.arange(len(group)), 0))


def _cumsum_within(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sums restarting at each group (`group` sorted)."""
    total = np.cumsum(values)
    first = _group_starts(group)
    return total - np.where(first > 0, total[first - 1], 0)


def _envelope_at(values: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """`max(values[begin[..., r] : end])` for increasing `begin` along the last axis, by one
    `reduceat` over the pieces between query points and a reverse running max over r (exact,
    no sorting). Rows with `begin == end` (nothing left) give -1."""
    flat = np.minimum(begin, end[..., None]).reshape(-1)
    padded = np.r_[values, -1.0]  # reduceat needs every index < len
    pieces = np.maximum.reduceat(padded, flat).reshape(begin.shape)
    pieces = np.where(begin < end[..., None], pieces, -1.0)
    return np.maximum.accumulate(pieces[..., ::-1], axis=-1)[..., ::-1]


def _accumulate(
    dt: DetectionTable,
    rank: np.ndarray,
    matches: _Matches,
    gt: GroundTruthTable,
    gt_ignore: np.ndarray,
    npig: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision `[T, R, K, A, M]` and recall `[T, K, A, M]` as `COCOeval.accumulate`.

    Only true positives are visited: between two of them precision only falls, so the
    envelope and its samples at the recall thresholds are read at true positives, with the
    false-positive count there = (detections in range so far) - (matched ones that are not
    false positives). All categories, ranges and thresholds are computed at once."""
    n_cat, n_area = npig.shape
    n_thr, n_rec, n_max = len(IOU_THRS), len(REC_THRS), len(MAX_DETS)
    precision = np.full((n_thr, n_rec, n_cat, n_area, n_max), NO_GT)
    recall = np.full((n_thr, n_cat, n_area, n_max), NO_GT)
    dt_out = _area_ignore(dt.area)  # [A, D]

    # What each match counts as. pycocotools stores the matched gt *id* and reads 0 as "no
    # match"; a detection on an ignored gt is ignored, so is an unmatched one out of range.
    counted = ~gt.zero_id[matches.gt]
    out = dt_out[matches.area, matches.dt]
    ignored = gt_ignore[matches.area, matches.gt] | (~counted & out)
    is_tp = counted & ~ignored
    not_fp = ~out & (counted | ignored)  # in range, yet not a false positive

    # Per category, detections of all images by score; ties by image, then rank (`dt` is
    # sorted by category, image, rank already, and lexsort is stable).
    order = np.lexsort((-dt.scores, dt.category))
    position = np.empty(len(dt), dtype=np.int64)
    position[order] = np.arange(len(dt))
    group = (dt.category[matches.dt] * n_area + matches.area) * n_thr + matches.thr
    by_group = np.argsort(group * max(len(dt), 1) + position[matches.dt])
    m_dt, m_area, m_group = matches.dt[by_group], matches.area[by_group], group[by_group]
    is_tp, not_fp = is_tp[by_group], not_fp[by_group]

    reach = _first_reaching(npig)  # [K, A, R]
    has_gt = npig > 0
    n_groups = n_cat * n_area * n_thr
    for m, max_det in enumerate(MAX_DETS):
        in_m = rank[order] < max_det
        subset_pos = np.cumsum(in_m) - 1  # full sorted position -> position in the subset
        sel = order[in_m]
        cat_start = np.searchsorted(dt.category[sel], np.arange(n_cat))
        in_range = np.zeros((n_area, len(sel) + 1), dtype=np.int64)
        np.cumsum(~dt_out[:, sel], axis=1, out=in_range[:, 1:])

        keep = np.flatnonzero(rank[m_dt] < max_det)
        group = m_group[keep]
        tp_count = _cumsum_within(is_tp[keep], group)
        not_fp_count = _cumsum_within(not_fp[keep], group)
        # At each true positive: tp and fp counts so far in its group, precision, envelope.
        at = np.flatnonzero(is_tp[keep])
        g, a, d = group[at], m_area[keep][at], m_dt[keep][at]
        p = subset_pos[position[d]]
        tp_sum = tp_count[at].astype(np.float64)
        fp_sum = (in_range[a, p + 1] - in_range[a, cat_start[dt.category[d]]]
                  - not_fp_count[at]).astype(np.float64)
        precisions = tp_sum / (fp_sum + tp_sum + np.spacing(1))

        n_tp = np.bincount(g, minlength=n_groups).reshape(n_cat, n_area, n_thr)
        tp_start = np.searchsorted(g, np.arange(n_groups)).reshape(n_cat, n_area, n_thr)
        rc_final = n_tp / np.maximum(npig, 1)[..., None]
        recall[:, :, :, m] = np.where(has_gt[..., None], rc_final, NO_GT).transpose(2, 0, 1)
        # Precision at each recall threshold: the envelope (best precision from there on) at
        # the first true positive reaching it (j = 0, recall 0, reads the first one); 0 if
        # recall never gets there.
        j = np.maximum(reach[:, :, None, :], 1)  # [K, A, 1, R]
        begin = tp_start[..., None] + j - 1
        q = np.maximum(_envelope_at(precisions, begin, tp_start + n_tp), 0.0)
        q = np.where(has_gt[:, :, None, None], q, NO_GT)  # [K, A, T, R]
        precision[:, :, :, :, m] = q.transpose(2, 3, 0, 1)
    return precision, recall


def _summarize(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """The 12 numbers of `COCOeval.summarize`, with its very indexing and mean."""
    stats = np.zeros(len(SUMMARY))
    for i, (_, is_ap, iou_thr, area, max_dets) in enumerate(SUMMARY):
        aind = [AREA_LABELS.index(area)]
        mind = [MAX_DETS.index(max_dets)]
        s = precision if is_ap else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRS)[0]]
        s = s[:, :, :, aind, mind] if is_ap else s[:, :, aind, mind]
        stats[i] = np.mean(s[s > -1]) if np.any(s > -1) else NO_GT
    return stats


def evaluate_coco(
    gt: GroundTruthTable,
    dt: DetectionTable,
    *,
    num_images: int,
    class_names: list[str],
    iou_type: str = "bbox",
) -> CocoEvaluation:
    """Run the COCO protocol on tables whose image and category indices are in sorted-id
    order (as pycocotools orders `imgIds` and `catIds`); `iou_type` is "bbox" or "segm"."""
    dt, rank = _rank_detections(dt, num_images)
    gt_ignore = gt.crowd[None, :] | _area_ignore(gt.area)  # [A, G]
    matches = _match(compute_pairs(gt, dt, num_images, iou_type), rank, gt, gt_ignore)
    npig = np.zeros((len(class_names), len(AREA_RANGES)), dtype=np.int64)
    for a in range(len(AREA_RANGES)):
        npig[:, a] = np.bincount(gt.category[~gt_ignore[a]], minlength=len(class_names))
    precision, recall = _accumulate(dt, rank, matches, gt, gt_ignore, npig)
    return CocoEvaluation(
        precision=precision,
        recall=recall,
        stats=_summarize(precision, recall),
        class_names=list(class_names),
        iou_type=iou_type,
    )
