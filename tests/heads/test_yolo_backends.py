"""The detector on whichever Keras backend runs the suite (TensorFlow, and JAX in the marked run).

Nothing here imports TensorFlow: under KERAS_BACKEND=jax it must not be needed.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from detseg.heads import Detector, YoloDetector
from tests.heads.yolo_helpers import ANCHORS_64, draw_shapes, tiny_backbone
from tests.training import compile_built


@pytest.mark.jax
def test_one_train_step_then_predict_and_detector_agree():
    images, boxes, labels = draw_shapes(4, 64, seed=3)
    keras.utils.set_random_seed(0)
    # A low score threshold: right after initialisation scores sit near the objectness prior.
    model = YoloDetector(tiny_backbone(64), 3, ANCHORS_64, width=0.125, score_thr=0.001, max_boxes=4)
    targets = model.make_target_encoder()(boxes, labels)
    x = images  # uint8 pixels, as the loaders send them

    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    compile_built(model, keras.optimizers.AdamW(1e-3))
    logs = model.train_on_batch(x, targets, return_dict=True)
    assert {"loss", "box_loss", "obj_loss", "cls_loss"} <= set(logs)
    assert np.isfinite(logs["loss"]) and logs["box_loss"] > 0 and logs["obj_loss"] > 0
    np.testing.assert_allclose(
        logs["loss"], logs["box_loss"] + logs["obj_loss"] + logs["cls_loss"], rtol=1e-5
    )
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert all(np.isfinite(w).all() for w in after)
    assert (
        sum(not np.array_equal(b, a) for b, a in zip(before, after, strict=True)) > len(after) // 2
    )

    # predict() (in-graph NMS) and Detector (compiled candidates + host NMS) agree.
    padded = model.predict(x, verbose=0)
    assert padded["boxes"].shape == (4, 100, 4) and padded["labels"].dtype == np.int32
    detected = Detector(model, score_thr=0.001, iou_thr=model.iou_thr, max_det=100)(list(images))
    assert padded["num"].min() > 10
    for i, result in enumerate(detected):
        n = padded["num"][i]
        np.testing.assert_allclose(result["boxes"], padded["boxes"][i, :n], atol=1e-3)
        np.testing.assert_allclose(result["scores"], padded["scores"][i, :n], rtol=1e-5)
        np.testing.assert_array_equal(result["labels"], padded["labels"][i, :n])
