"""Training curves: one panel per loss term, validation metric and the learning rate."""

from __future__ import annotations

import cv2

from detseg.metrics import curve_panels, plot_training_curves


def test_panels_are_the_total_loss_then_terms_then_metrics_then_lr():
    columns = ["epoch", "box_loss", "cls_loss", "loss", "lr", "train_minutes", "val_mAP50", "val_mAP"]
    assert curve_panels(columns) == ["loss", "box_loss", "cls_loss", "val_mAP", "val_mAP50", "lr"]
    assert curve_panels(["epoch", "loss"]) == ["loss"]


def test_curves_png_has_one_panel_per_column_in_a_three_wide_grid(tmp_path):
    # Validation every second epoch: its panel has the logged epochs only.
    rows = [
        {"epoch": str(e), "loss": str(2.0 / (e + 1)), "ce_loss": str(1.0 / (e + 1)), "lr": str(0.01 * (0.5**e)),
         "val_mIoU": str(0.1 * e) if e % 2 else ""}
        for e in range(5)
    ]  # fmt: skip
    path = plot_training_curves(rows, tmp_path / "plots" / "curves.png")
    image = cv2.imread(str(path))
    # 4 panels (loss, ce_loss, val_mIoU, lr) -> 2 rows of 3 panels of 4 x 3 inches at 100 dpi.
    assert image.shape == (600, 1200, 3)
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["curves.png"]  # no temporary left
    without_validation = [{k: v for k, v in row.items() if k != "val_mIoU"} for row in rows]
    image = cv2.imread(str(plot_training_curves(without_validation, tmp_path / "three.png")))
    assert image.shape == (300, 1200, 3)  # 3 panels: one row
