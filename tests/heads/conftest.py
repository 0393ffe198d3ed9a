"""One small detector trained once per session on 8 drawn images, shared by the YOLO tests.

Compiling a Keras train step costs ~15 s on a busy 2-core CPU, so the overfit check, the
`.keras` round trip, the host-vs-graph NMS check and the logged loss terms all use this run.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import pytest

from detseg.heads import YoloDetector
from tests.heads.yolo_helpers import draw_shapes, tiny_backbone
from tests.training import compile_built

OVERFIT_SIZE = 96
# Drawn shapes are 16..38 px squares: six square-ish priors over P3 and P4.
OVERFIT_ANCHORS = [[14, 14], [20, 20], [26, 26], [30, 30], [36, 36], [44, 44]]


@dataclass
class OverfitRun:
    model: YoloDetector
    history: dict
    images: np.ndarray
    boxes: list
    labels: list


def train_overfit(**head_options) -> OverfitRun:
    """The small detector (with `head_options`) trained for 25 epochs of the 8 images."""
    images, boxes, labels = draw_shapes(8, OVERFIT_SIZE, seed=0)
    keras.utils.set_random_seed(0)
    model = YoloDetector(
        tiny_backbone(OVERFIT_SIZE, width=8, levels=("P3", "P4")),
        num_classes=3,
        anchors=OVERFIT_ANCHORS,
        levels=("P3", "P4"),
        width=0.25,
        score_thr=0.01,
        iou_thr=0.5,
        max_boxes=4,
        **head_options,
    )
    targets = model.make_target_encoder()(boxes, labels)
    repeat = 8  # 8 steps of the same 8 images per epoch: fewer per-epoch overheads
    x = np.concatenate([images] * repeat)  # uint8 pixels, as the loaders send them
    y = {key: np.concatenate([value] * repeat) for key, value in targets.items()}
    compile_built(model, keras.optimizers.AdamW(3e-3, weight_decay=1e-4), steps_per_execution=repeat)
    history = model.fit(x, y, batch_size=8, epochs=25, verbose=0, shuffle=False).history
    return OverfitRun(model, history, images, boxes, labels)


@pytest.fixture(scope="session")
def overfit_run() -> OverfitRun:
    return train_overfit()


@pytest.fixture(scope="session")
def dfl_overfit_run() -> OverfitRun:
    """The same with a distribution-focal box head of 8 bins."""
    return train_overfit(box_bins=8)
