"""Segmentation metrics against hand values and keras.metrics.MeanIoU."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from detseg.errors import DetsegError
from detseg.metrics import SegmentationMetrics


def test_hand_values():
    y_true = np.array([[0, 0, 1], [1, 2, 2]])
    y_pred = np.array([[0, 1, 1], [1, 2, 0]])
    # confusion (rows true): [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU: 1 / (2 + 2 - 1), 2 / (2 + 3 - 2), 1 / (2 + 1 - 1) = 1/3, 2/3, 1/2 -> mean 0.5
    # Dice: 2 / (2 + 2), 4 / (2 + 3), 2 / (2 + 1); accuracy 4 / 6
    # fwIoU: 2/6 * 1/3 + 2/6 * 2/3 + 2/6 * 1/2 = 0.5
    metrics = SegmentationMetrics(3, class_names=["bg", "cell", "edge"])
    metrics.update(y_true, y_pred)
    np.testing.assert_array_equal(metrics.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    result = metrics.result()
    assert result["mIoU"] == pytest.approx(0.5)
    assert result["per_class"]["cell"]["IoU"] == pytest.approx(2 / 3)
    assert result["per_class"]["edge"]["Dice"] == pytest.approx(2 / 3)
    assert result["mDice"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert result["pixel_accuracy"] == pytest.approx(4 / 6)
    assert result["fwIoU"] == pytest.approx(0.5)


def test_agrees_with_keras_mean_iou_over_batches():
    rng = np.random.default_rng(0)
    ours = SegmentationMetrics(5)
    theirs = keras.metrics.MeanIoU(num_classes=5)
    for _ in range(3):
        y_true = rng.integers(0, 4, (2, 16, 16))  # class 4 never occurs in the labels ...
        logits = rng.normal(size=(2, 16, 16, 5))
        logits[..., 4] -= 10  # ... nor in the predictions: left out of the mean by both
        ours.update(y_true, logits)  # scores: argmax over the last axis
        theirs.update_state(y_true, logits.argmax(-1))
    assert ours.result()["mIoU"] == pytest.approx(float(theirs.result()), abs=1e-6)
    assert ours.result()["per_class"]["4"] == {"IoU": -1.0, "Dice": -1.0}


def test_ignore_index_and_errors():
    metrics = SegmentationMetrics(2, ignore_index=255)
    metrics.update(np.array([0, 1, 255, 255]), np.array([0, 1, 1, 0]))
    assert metrics.result()["pixel_accuracy"] == 1.0 and metrics.ignored_pixels == 2
    with pytest.raises(DetsegError, match=r"y_true has class ids outside 0\.\.1: \[7\]"):
        metrics.update(np.array([7]), np.array([0]))
    with pytest.raises(DetsegError, match="same shape"):
        metrics.update(np.zeros((2, 2)), np.zeros((3, 2)))
    metrics.reset()
    assert metrics.confusion.sum() == 0
