"""k-means anchors: recovery of known sizes and statistics against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from detseg.anchors import anchor_stats, fit_anchors, wh_iou
from detseg.errors import DetsegError

TRUE_SIZES = np.array([[8, 10], [30, 18], [60, 90], [150, 100], [300, 330]], dtype=np.float64)


def sizes_around(rng, centres, n, spread=0.05):
    which = rng.integers(0, len(centres), n)
    return centres[which] * rng.uniform(1 - spread, 1 + spread, (n, 2))


def brute_force_best_iou(wh, anchors):
    best = []
    for w, h in wh:
        ious = []
        for aw, ah in anchors:
            inter = min(w, aw) * min(h, ah)
            ious.append(inter / (w * h + aw * ah - inter))
        best.append(max(ious))
    return np.array(best)


def test_recovers_well_separated_sizes():
    wh = sizes_around(np.random.default_rng(0), TRUE_SIZES, 4000)
    anchors = fit_anchors(wh, k=5, seed=0)
    assert anchors.wh.shape == (5, 2)
    np.testing.assert_allclose(anchors.wh, TRUE_SIZES, rtol=0.02)  # sorted by area
    assert anchors.recall == 1.0 and anchors.avg_iou > 0.9
    assert anchors.n_boxes == 4000 and anchors.n_skipped == 0


def test_avg_iou_and_recall_equal_brute_force():
    rng = np.random.default_rng(1)
    wh = np.exp(rng.normal(3.5, 0.9, (300, 2)))
    anchors = fit_anchors(wh, k=4, seed=3, recall_thr=0.6)
    best = brute_force_best_iou(wh, anchors.wh.astype(np.float64))
    assert anchors.avg_iou == pytest.approx(best.mean(), rel=1e-12)
    assert anchors.recall == pytest.approx(np.mean(best >= 0.6), rel=1e-12)
    stats = anchor_stats(wh, anchors.wh, recall_thr=0.6)
    assert (stats.avg_iou, stats.recall, stats.n_boxes) == (anchors.avg_iou, anchors.recall, 300)


def test_wh_iou_hand_value():
    # (10, 20) vs (20, 10): intersection 10 * 10 = 100, union 200 + 200 - 100 = 300
    np.testing.assert_allclose(wh_iou([[10, 20]], [[20, 10], [10, 20]]), [[1 / 3, 1.0]])


def test_sorted_by_area_deterministic_and_better_than_random():
    rng = np.random.default_rng(2)
    wh = np.exp(rng.normal(3.0, 0.7, (2000, 2)))
    first, second = fit_anchors(wh, k=6, seed=7), fit_anchors(wh, k=6, seed=7)
    np.testing.assert_array_equal(first.wh, second.wh)
    areas = first.wh.prod(axis=1)
    assert np.all(np.diff(areas) >= 0)
    random_pick = anchor_stats(wh, wh[rng.choice(len(wh), 6, replace=False)])
    assert first.avg_iou > random_pick.avg_iou


def test_degenerate_boxes_are_counted_not_used():
    wh = np.vstack(
        [
            sizes_around(np.random.default_rng(3), TRUE_SIZES[:2], 100),
            [[0, 5], [4, -1], [np.nan, 3], [np.inf, 2]],
        ]
    )
    anchors = fit_anchors(wh, k=2)
    assert anchors.n_boxes == 100 and anchors.n_skipped == 4
    np.testing.assert_allclose(anchors.wh, TRUE_SIZES[:2], rtol=0.03)


def test_errors():
    with pytest.raises(DetsegError, match="at least k=3 boxes"):
        fit_anchors([[1, 1], [2, 2], [0, 3]], k=3)
    with pytest.raises(DetsegError, match="k must be >= 1"):
        fit_anchors([[1, 1]], k=0)
    with pytest.raises(DetsegError, match=r"shape \[N, 2\]"):
        fit_anchors(np.ones((4, 3)), k=2)
