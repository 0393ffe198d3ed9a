"""YoloDetector: layout, encode -> decode round trip, NMS paths agree, fit, .keras round trip."""

from __future__ import annotations

import json
import math

import cv2
import keras
import numpy as np
import pytest
from pydantic import ValidationError

from detseg.config import DetectorModelConfig, PredictConfig, YoloConfig
from detseg.data.images import letterbox, unletterbox_boxes
from detseg.errors import DetsegError
from detseg.heads import Detector, YoloDetector, build_yolo, host_nms
from detseg.heads.yolo_decode import decode_level, nms_padded
from tests.heads.yolo_helpers import ANCHORS_64, perfect_logits, tiny_backbone


def small_detector(**kwargs) -> YoloDetector:
    keras.utils.set_random_seed(0)
    return YoloDetector(tiny_backbone(64), 3, ANCHORS_64, width=0.125, **kwargs)


def to_numpy(tree):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, tree)


def test_output_layout_and_bias_priors():
    model = small_detector()
    out = to_numpy(model(np.zeros((2, 64, 64, 3), np.float32)))
    assert {k: v.shape for k, v in out.items()} == {
        "P3": (2, 8, 8, 3, 8),  # 64 / 8 = 8 cells, 3 anchors, 5 + 3 classes
        "P4": (2, 4, 4, 3, 8),
        "P5": (2, 2, 2, 3, 8),
    }
    bias = keras.ops.convert_to_numpy(model.get_layer("P3_pred").bias).reshape(3, 8)
    # Objectness prior: 4 objects over 8 * 8 cells * 3 anchors -> p = 4 / 192, logit(p) = -3.8501.
    np.testing.assert_allclose(bias[:, 4], math.log((4 / 192) / (1 - 4 / 192)), rtol=1e-6)
    # Class prior 1/3 -> logit = log(0.5) = -0.6931.
    np.testing.assert_allclose(bias[:, 5:], math.log(0.5), rtol=1e-6)
    assert model.level_anchors["P5"].tolist() == [[40, 40], [48, 48], [64, 64]]


def test_a_distribution_focal_head_starts_at_its_anchors_on_the_cell_centres():
    # 16 bins over 0..2 anchor sizes; each side starts peaked at half its anchor (bin 3.75):
    # the bias alone decodes to every anchor's own box centred on its cell.
    model = small_detector(box_bins=16)
    out = to_numpy(model(np.zeros((1, 64, 64, 3), np.float32)))
    assert out["P3"].shape == (1, 8, 8, 3, 4 * 16 + 1 + 3)
    bias = keras.ops.convert_to_numpy(model.get_layer("P4_pred").bias).reshape(1, 1, 1, 3, 68)
    boxes = to_numpy(decode_level(np.tile(bias, (1, 4, 4, 1, 1)), model.level_anchors["P4"], 16, box_bins=16))
    for gy, gx, a in [(0, 0, 0), (2, 3, 1), (3, 3, 2)]:
        cx, cy, (w, h) = 16 * gx + 8, 16 * gy + 8, model.level_anchors["P4"][a]
        np.testing.assert_allclose(boxes[0, gy, gx, a], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-2)
    np.testing.assert_allclose(bias[..., 64], math.log((4 / 48) / (1 - 4 / 48)), rtol=1e-6)
    np.testing.assert_allclose(bias[..., 65:], math.log(0.5), rtol=1e-6)


BOXES = [
    np.array(
        [[10, 20, 22, 34], [0, 0, 64, 64], [30.5, 33.25, 47.0, 41.0], [34, 33.25, 50.5, 41]],
        np.float32,
    ),
    np.zeros((0, 4), np.float32),
    np.array([[40, 2, 60, 30], [16, 16, 32, 32]], np.float32),
]
LABELS = [np.array([1, 0, 2, 0]), np.zeros(0, np.int64), np.array([1, 2])]


def sort_detections(boxes, scores, labels):
    order = np.lexsort((boxes[:, 1], boxes[:, 0], labels))
    return boxes[order], scores[order], labels[order]


@pytest.mark.parametrize(
    "assignment",
    [
        {},
        {"assign_thresh": 0.3},
        {"assign_thresh": 0.3, "neighbour_cells": True, "scale_xy": 2.0},
        {"box_bins": 16},
        {"assign_thresh": 0.3, "box_bins": 5},
    ],
)
def test_encode_then_decode_with_perfect_logits_reproduces_the_boxes(assignment):
    # With assign_thresh 0.3 a box goes to several anchors, with neighbour_cells to up to three
    # cells each (whose centre offsets must reach it): NMS must merge the copies back to one.
    # With box_bins each side is a distribution whose expectation is the side's distance.
    model = small_detector(iou_thr=0.5, **assignment)
    targets = model.make_target_encoder()(BOXES, LABELS)
    raw = perfect_logits(targets, model)
    graph = to_numpy(model.postprocess(raw))
    host = host_nms(*to_numpy(model.candidates(raw)), model.score_thr, model.iou_thr, model.max_det)
    assert graph["num"].tolist() == [4, 0, 2]
    for i, (want_boxes, want_labels) in enumerate(zip(BOXES, LABELS, strict=True)):
        n = graph["num"][i]
        assert np.all(graph["labels"][i, n:] == -1) and np.all(graph["scores"][i, n:] == 0)
        for boxes, labels in [
            (graph["boxes"][i, :n], graph["labels"][i, :n]),
            (host[i]["boxes"], host[i]["labels"]),
        ]:
            got_boxes, _, got_labels = sort_detections(boxes, np.zeros(n), labels)
            ref_boxes, _, ref_labels = sort_detections(want_boxes, np.zeros(n), want_labels)
            np.testing.assert_allclose(got_boxes, ref_boxes, atol=1e-3)
            np.testing.assert_array_equal(got_labels, ref_labels)


def random_candidates(seed: int, batch: int = 3, num: int = 300):
    """Clustered boxes (many overlaps), scores sorted descending, 3 classes."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 300, (batch, 12, 2))[:, rng.integers(0, 12, num)] + rng.normal(
        0, 6, (batch, num, 2)
    )
    sizes = rng.uniform(10, 60, (batch, num, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype(np.float32)
    scores = -np.sort(-rng.uniform(0, 1, (batch, num)), axis=1).astype(np.float32)
    labels = rng.integers(0, 3, (batch, num)).astype(np.int32)
    return boxes, scores, labels


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("max_det", [10, 400])
def test_in_graph_nms_matches_opencv_nms(agnostic, max_det):
    boxes, scores, labels = random_candidates(seed=int(agnostic) + max_det)
    graph = to_numpy(nms_padded(boxes, scores, labels, 0.2, 0.45, max_det, agnostic))
    host = host_nms(boxes, scores, labels, 0.2, 0.45, max_det, agnostic)
    assert graph["boxes"].shape == (3, max_det, 4)
    for i, found in enumerate(host):
        n = len(found["scores"])
        assert graph["num"][i] == n > 0
        np.testing.assert_array_equal(graph["boxes"][i, :n], found["boxes"])
        np.testing.assert_array_equal(graph["scores"][i, :n], found["scores"])
        np.testing.assert_array_equal(graph["labels"][i, :n], found["labels"])


def test_fit_logs_the_loss_terms_which_add_up_to_the_loss(overfit_run):
    history = overfit_run.history
    assert {"loss", "box_loss", "obj_loss", "cls_loss"} <= set(history)
    parts = np.add(np.add(history["box_loss"], history["obj_loss"]), history["cls_loss"])
    np.testing.assert_allclose(history["loss"], parts, rtol=1e-5)


def test_detector_host_path_matches_predict_step(overfit_run):
    # Non-square originals: letterbox -> predict (in-graph decode + NMS) -> unletterbox, against
    # Detector (compiled candidates -> OpenCV NMS on the host -> unletterbox).
    model = overfit_run.model
    size = model.input_size
    originals = [
        cv2.resize(image, (size + 40, size - 10))
        if i % 2
        else cv2.resize(image, (size - 30, size + 20))
        for i, image in enumerate(overfit_run.images[:5])
    ]
    boxed = [letterbox(image, size) for image in originals]
    graph = model.predict(np.stack([image for image, _ in boxed]), verbose=0)
    found = Detector(
        model, score_thr=model.score_thr, iou_thr=model.iou_thr, max_det=model.max_det
    )(originals)
    assert sum(len(f["scores"]) for f in found) >= 5
    for i, ((_, params), result) in enumerate(zip(boxed, found, strict=True)):
        n = graph["num"][i]
        assert len(result["scores"]) == n
        np.testing.assert_allclose(
            result["boxes"], unletterbox_boxes(graph["boxes"][i, :n], params), atol=1e-3
        )
        np.testing.assert_allclose(result["scores"], graph["scores"][i, :n], rtol=1e-5)
        np.testing.assert_array_equal(result["labels"], graph["labels"][i, :n])
        height, width = originals[i].shape[:2]
        assert np.all(result["boxes"] >= 0)
        assert np.all(result["boxes"][:, [0, 2]] <= width) and np.all(
            result["boxes"][:, [1, 3]] <= height
        )


@pytest.mark.parametrize("run", ["overfit_run", "dfl_overfit_run"])
def test_keras_round_trip_gives_identical_detections(run, request, tmp_path):
    overfit_run = request.getfixturevalue(run)
    model = overfit_run.model
    x = overfit_run.images
    model.save(tmp_path / "yolo.keras")
    loaded = keras.saving.load_model(tmp_path / "yolo.keras")
    assert isinstance(loaded, YoloDetector)
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(
        model.get_config(), sort_keys=True
    )
    before, after = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    assert before["num"].sum() >= 8
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


def test_build_yolo_from_a_config_on_darknet_tiny():
    cfg = DetectorModelConfig(
        backbone="darknet_tiny",
        backbone_width=0.125,
        input_size=64,
        yolo={"levels": ["P4", "P5"], "width": 0.125, "box_loss": "giou", "ignore_thresh": 0.6},
    )
    anchors = [[6, 6], [10, 12], [14, 10], [20, 20], [30, 40], [50, 50]]
    model = build_yolo(cfg, 2, anchors, PredictConfig(score_thr=0.3, agnostic_nms=True))
    assert model.levels == ("P4", "P5") and model.box_loss == "giou" and model.ignore_thresh == 0.6
    assert (model.score_thr, model.iou_thr, model.agnostic_nms) == (0.3, 0.45, True)
    assert model.level_anchors["P4"].tolist() == [[6, 6], [10, 12], [14, 10]]
    # The defaults: neighbouring cells (centre offsets over 2 cells) and a 16-bin box head,
    # 4 x 16 box channels + objectness + 2 classes per anchor.
    assert (model.neighbour_cells, model.scale_xy, model.box_bins) == (True, 2.0, 16)
    assert model.make_target_encoder().neighbour_cells
    assert YoloDetector.from_config(model.get_config()).neighbour_cells
    out = to_numpy(model(np.zeros((1, 64, 64, 3), np.float32)))
    assert {k: v.shape for k, v in out.items()} == {"P4": (1, 4, 4, 3, 67), "P5": (1, 2, 2, 3, 67)}
    plain = {"neighbour_cells": False, "box_bins": 0}
    cfg = cfg.model_copy(update={"yolo": cfg.yolo.model_copy(update=plain)})
    model = build_yolo(cfg, 2, anchors, backbone=model.backbone)
    assert (model.neighbour_cells, model.scale_xy, model.box_bins) == (False, 1.1, 0)
    assert model(np.zeros((1, 64, 64, 3)))["P5"].shape == (1, 2, 2, 3, 7)
    cfg = cfg.model_copy(update={"yolo": cfg.yolo.model_copy(update={"box_bins": 6})})
    model = build_yolo(cfg, 2, anchors, backbone=model.backbone)
    assert model.box_bins == 6 and model(np.zeros((1, 64, 64, 3)))["P5"].shape == (1, 2, 2, 3, 27)


def test_bad_arguments_name_what_was_received():
    with pytest.raises(DetsegError, match=r"has no level \['P6'\]"):
        YoloDetector(tiny_backbone(64), 3, ANCHORS_64[:3], levels=("P6",))
    with pytest.raises(DetsegError, match="anchors must be 6"):
        YoloDetector(tiny_backbone(64), 3, ANCHORS_64, levels=("P4", "P5"))
    with pytest.raises(DetsegError, match="fixed square input"):
        YoloDetector(tiny_backbone(None), 3, ANCHORS_64)
    with pytest.raises(DetsegError, match="box_loss='iou'"):
        YoloDetector(tiny_backbone(64), 3, ANCHORS_64, box_loss="iou")
    with pytest.raises(DetsegError, match="neighbour_cells needs scale_xy >= 2.*got scale_xy=1.1"):
        YoloDetector(tiny_backbone(64), 3, ANCHORS_64, neighbour_cells=True)
    for bins, loss in [(1, "ciou"), (8, "yolov3")]:
        with pytest.raises(DetsegError, match=f"box_bins={bins}, box_loss='{loss}'"):
            YoloDetector(tiny_backbone(64), 3, ANCHORS_64, box_bins=bins, box_loss=loss)
        with pytest.raises(ValidationError, match=f"box_bins={bins}, box_loss='{loss}'"):
            YoloConfig(box_bins=bins, box_loss=loss)


def test_detector_rejects_what_it_cannot_run(overfit_run):
    with pytest.raises(DetsegError, match="takes 96 px inputs, got input_size=128"):
        Detector(overfit_run.model, input_size=128)
    with pytest.raises(
        DetsegError, match=r"RGB uint8 images \[H, W, 3\], got shape/dtype \(\(20, 30\)"
    ):
        Detector(overfit_run.model)([np.zeros((20, 30), np.uint8)])
    assert Detector(overfit_run.model)([]) == []
