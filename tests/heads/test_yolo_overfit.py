"""A tiny detector overfits 8 drawn images: targets, loss and decode agree (mAP by pycocotools)."""

from __future__ import annotations

import numpy as np
import pytest

from detseg.heads import Detector
from tests.heads.yolo_helpers import coco_ap50


@pytest.mark.parametrize("run", ["overfit_run", "dfl_overfit_run"])
def test_tiny_detector_overfits_eight_images(run, request):
    overfit_run = request.getfixturevalue(run)
    model = overfit_run.model
    found = Detector(model, score_thr=0.01, iou_thr=0.5)(list(overfit_run.images))
    ap50 = coco_ap50(overfit_run.boxes, overfit_run.labels, found, num_classes=3)
    assert ap50 > 0.9, f"AP50 {ap50:.3f} after losses {overfit_run.history['loss'][::5]}"
    # The loss fell by far more than noise.
    assert overfit_run.history["loss"][-1] < 0.2 * overfit_run.history["loss"][0]
    assert np.isfinite(overfit_run.history["loss"]).all()
