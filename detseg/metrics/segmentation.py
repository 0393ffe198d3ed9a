"""Semantic segmentation metrics from one confusion matrix: per-class and mean IoU, Dice,
pixel accuracy and frequency-weighted IoU, behind `reset() / update() / result()`.

The mean IoU counts only classes that occur in the labels or the predictions (a class
absent from both has no IoU), as `keras.metrics.MeanIoU` does; such classes report -1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detseg.errors import DetsegError

ABSENT = -1.0  # per-class value of a class absent from both labels and predictions


class SegmentationMetrics:
    """Accumulates a `[C, C]` confusion matrix (rows true, columns predicted) over batches.

    `update(y_true, y_pred)`: `y_true` holds class ids; `y_pred` holds class ids of the same
    shape, or scores with one more trailing axis of size C (argmax is taken). Pixels whose
    label is `ignore_index` are left out (counted in `ignored_pixels`).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
    ):
        if num_classes < 1:
            raise DetsegError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise DetsegError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = [str(c) for c in class_names or range(num_classes)]
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.ignored_pixels = 0

    def update(self, y_true, y_pred) -> None:
        y_true = np.asarray(y_true)
        y_pred = np.asarray(y_pred)
        if y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == self.num_classes:
            y_pred = y_pred.argmax(axis=-1)
        if y_pred.shape != y_true.shape:
            raise DetsegError(
                f"y_true {y_true.shape} and y_pred {y_pred.shape} must have the same shape "
                f"(or y_pred one more axis of size {self.num_classes})"
            )
        y_true = y_true.reshape(-1).astype(np.int64)
        y_pred = y_pred.reshape(-1).astype(np.int64)
        if self.ignore_index is not None:
            keep = y_true != self.ignore_index
            self.ignored_pixels += int(np.count_nonzero(~keep))
            y_true, y_pred = y_true[keep], y_pred[keep]
        for name, values in (("y_true", y_true), ("y_pred", y_pred)):
            bad = (values < 0) | (values >= self.num_classes)
            if bad.any():
                raise DetsegError(
                    f"{name} has class ids outside 0..{self.num_classes - 1}: "
                    f"{np.unique(values[bad])[:10].tolist()}"
                )
        flat = y_true * self.num_classes + y_pred
        self.confusion += np.bincount(flat, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def result(self) -> dict:
        """`{"mIoU", "mDice", "pixel_accuracy", "fwIoU", "per_class": {name: {"IoU", "Dice"}}}`."""
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        true_total, pred_total = cm.sum(axis=1), cm.sum(axis=0)
        union = true_total + pred_total - tp
        present = union > 0
        iou = np.where(present, tp / np.maximum(union, 1), ABSENT)
        dice = np.where(present, 2 * tp / np.maximum(true_total + pred_total, 1), ABSENT)
        total = cm.sum()
        freq = true_total / max(total, 1)
        return {
            "mIoU": float(iou[present].mean()) if present.any() else 0.0,
            "mDice": float(dice[present].mean()) if present.any() else 0.0,
            "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
            "fwIoU": float(np.sum(freq[present] * iou[present])),
            "per_class": {
                name: {"IoU": float(i), "Dice": float(d)}
                for name, i, d in zip(self.class_names, iou, dice, strict=True)
            },
        }
