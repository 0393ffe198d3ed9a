"""Exports (SavedModel, TFLite, ONNX) give the Keras detector's detections, and run without it.

The model is a small untrained YOLO detector at 64 px whose BatchNorm statistics are set from
one batch and whose output layer is scaled up, so its scores spread over 0..1 and NMS has
real work to do (the tests check that it suppresses boxes and that some images keep several
classes). The references are the Keras paths: `model.predict_step` (decode + in-graph NMS)
and `Detector` (compiled candidates + OpenCV NMS on the host).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from detseg.boxes import box_iou
from detseg.cli import main
from detseg.config import config_from_dict, dump_config
from detseg.data.images import PAD_VALUE
from detseg.engine.export import export
from detseg.engine.exported import open_exported
from detseg.engine.runs import exported_format, metadata_path
from detseg.errors import DetsegError
from detseg.heads.yolo import build_yolo
from detseg.heads.yolo_decode import box_channels
from detseg.heads.yolo_infer import Detector, host_nms
from detseg.tasks.detect import ExportedDetector
from detseg.tasks.detect_serving import detections_graph, per_image_detections_graph
from tests.heads.yolo_helpers import draw_shapes

SIZE = 64
NAMES = ["square", "circle", "triangle"]
SCORE_THR, IOU_THR = 0.3, 0.3
ANCHORS = [[8, 8], [16, 16], [24, 24], [32, 32], [48, 48], [64, 64]]


def tiny_config(agnostic: bool = False, box_bins: int = 0):
    return config_from_dict(
        {
            "data": {"names": NAMES},
            "model": {
                "backbone": "darknet_tiny",
                "backbone_width": 0.25,
                "input_size": SIZE,
                "yolo": {
                    "levels": ["P4", "P5"],
                    "width": 0.25,
                    "anchors": ANCHORS,
                    "box_bins": box_bins,
                    # YOLOv3's centre range (scale_xy 1.1), for which confident_detector's
                    # boxes overlap enough that NMS removes some in every image.
                    "neighbour_cells": False,
                },
            },
            "predict": {"score_thr": SCORE_THR, "iou_thr": IOU_THR, "agnostic_nms": agnostic},
        }
    )


def batch_norms(layer: keras.layers.Layer):
    """Every BatchNormalization inside `layer`, nested models included."""
    if isinstance(layer, keras.layers.BatchNormalization):
        yield layer
    for child in getattr(layer, "layers", []):
        yield from batch_norms(child)


def confident_detector(images: np.ndarray, box_bins: int = 0):
    """An untrained detector whose scores vary strongly with the image.

    A fresh network's features shrink layer after layer (BatchNorm still holds mean 0, var 1),
    so every anchor scores about the same. One training-mode pass with momentum 0 sets each
    BatchNorm's statistics to those of `images`; scaling the score part of the output kernels
    by 3 then spreads the score logits over several units. Box logits are left small: boxes
    stay close to their anchors and none collapses to zero area at the image border (where
    OpenCV's NMS and the graph NMS ops treat identical empty boxes differently).
    """
    keras.utils.set_random_seed(0)
    cfg = tiny_config(box_bins=box_bins)
    model = build_yolo(cfg.model, len(NAMES), ANCHORS, cfg.predict)
    box = box_channels(box_bins)  # objectness then the classes after them
    norms = list(batch_norms(model))
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    model(images, training=True)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    for level in model.levels:
        pred = model.get_layer(f"{level}_pred")
        scale = np.ones((model.anchors_per_level, box + 1 + len(NAMES)), np.float32)
        scale[:, box:] = 3.0  # objectness and classes; boxes stay near their anchors
        pred.kernel.assign(pred.kernel * scale.reshape(-1))
        bias = np.asarray(pred.bias).reshape(model.anchors_per_level, -1)
        bias[:, box], bias[:, box + 1 :] = -2.0, 0.0  # objectness ~0.12 before the image speaks
        pred.bias.assign(bias.reshape(-1))
    return model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return draw_shapes(4, SIZE, seed=1)[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, images):
    """A run folder as `detseg train` leaves it: best.keras and config.yaml."""
    folder = tmp_path_factory.mktemp("run")
    confident_detector(images).save(folder / "best.keras")
    dump_config(tiny_config(), folder / "config.yaml")
    return folder


@pytest.fixture(scope="module")
def model(run_dir):
    return keras.saving.load_model(run_dir / "best.keras")


@pytest.fixture(scope="module")
def reference(model, images):
    """The Keras paths' detections: predict_step's padded dict and the host NMS lists."""
    padded = {
        k: np.asarray(v) for k, v in model.predict_step(images).items()
    }
    candidates = Detector(model).candidates(images)
    host = host_nms(*candidates, SCORE_THR, IOU_THR, model.max_det)
    return padded, host, candidates


ONNX_SKIP = "onnxruntime / tf2onnx not installed (pip install 'detseg[onnx]')"


def needs_onnx(fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason=ONNX_SKIP)
        pytest.importorskip("tf2onnx", reason=ONNX_SKIP)


@pytest.fixture(scope="module")
def exports(run_dir):
    """Artefacts exported on first use, one per format."""
    made = {}

    def get(fmt: str):
        needs_onnx(fmt)
        if fmt not in made:
            made[fmt] = export(run_dir, fmt)
        return made[fmt]

    return get


def run_artefact(path, images: np.ndarray) -> dict[str, np.ndarray]:
    """The artefact's own graph on a letterboxed batch (no detseg pre/post-processing)."""
    return open_exported(path)[0](images)


def exported_detector(path, **thresholds) -> ExportedDetector:
    runner, metadata = open_exported(path)
    return ExportedDetector(runner, metadata, path, **thresholds)


# === The test model is a meaningful one ===


def test_the_test_detector_suppresses_boxes_and_mixes_classes(reference):
    padded, host, (_, scores, _) = reference
    above = (scores > SCORE_THR).sum(axis=1)
    kept = padded["num"]
    assert (kept > 0).all() and (kept < above).all()  # NMS removed some boxes in every image
    assert (kept < 100).all()  # and max_det did not cut the list
    assert max(len(np.unique(found["labels"])) for found in host) >= 2
    np.testing.assert_array_equal(kept, [len(found["boxes"]) for found in host])


# === Export parity ===


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite", "onnx"])
def test_export_parity_with_the_keras_detector(exports, reference, images, fmt):
    padded, host, _ = reference
    got = run_artefact(exports(fmt), images)
    assert got["boxes"].shape == padded["boxes"].shape == (len(images), 100, 4)
    np.testing.assert_array_equal(got["num"], padded["num"])
    np.testing.assert_array_equal(got["labels"], padded["labels"])  # -1 pads included
    np.testing.assert_allclose(got["boxes"], padded["boxes"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got["scores"], padded["scores"], rtol=1e-4, atol=1e-5)
    for i, found in enumerate(host):  # the host NMS path agrees as well
        n = len(found["boxes"])
        np.testing.assert_array_equal(got["labels"][i, :n], found["labels"])
        np.testing.assert_allclose(got["boxes"][i, :n], found["boxes"], rtol=1e-3, atol=1e-3)


def test_onnx_graph_ends_in_onnx_nms(exports):
    onnx = pytest.importorskip("onnx", reason=ONNX_SKIP)
    ops = {node.op_type for node in onnx.load(str(exports("onnx"))).graph.node}
    assert "NonMaxSuppression" in ops


def test_tflite_graph_uses_builtin_nms_and_no_flex_op(exports, capsys):
    capsys.readouterr()
    tf.lite.experimental.Analyzer.analyze(model_path=str(exports("tflite")))
    ops = set(re.findall(r"Op#\d+ (\w+)\(", capsys.readouterr().out))
    assert "NON_MAX_SUPPRESSION_V5" in ops
    assert not [op for op in ops if "Flex" in op or op == "CUSTOM"]


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_agnostic_export_parity(tmp_path, run_dir, model, images, fmt):
    """One NMS over all classes: the TFLite graph without class offsets, the ONNX one with the
    label recovered from the surviving box."""
    needs_onnx(fmt)
    (tmp_path / "best.keras").symlink_to(run_dir / "best.keras")
    dump_config(tiny_config(agnostic=True), tmp_path / "config.yaml")
    got = run_artefact(export(tmp_path, fmt), images)
    candidates = Detector(model).candidates(images)
    host = host_nms(*candidates, SCORE_THR, IOU_THR, 100, agnostic=True)
    per_class = host_nms(*candidates, SCORE_THR, IOU_THR, 100)
    assert sum(map(len, (f["boxes"] for f in host))) < sum(len(f["boxes"]) for f in per_class)
    for i, found in enumerate(host):
        n = len(found["boxes"])
        assert got["num"][i] == n
        np.testing.assert_array_equal(got["labels"][i, :n], found["labels"])
        np.testing.assert_allclose(got["boxes"][i, :n], found["boxes"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_distribution_focal_head_export_parity(tmp_path, images, fmt):
    """A detector whose box sides are softmax distributions (`box_bins`) exports as well."""
    needs_onnx(fmt)
    confident_detector(images, box_bins=8).save(tmp_path / "best.keras")
    dump_config(tiny_config(box_bins=8), tmp_path / "config.yaml")
    model = keras.saving.load_model(tmp_path / "best.keras")
    padded = {k: np.asarray(v) for k, v in model.predict_step(images).items()}
    got = run_artefact(export(tmp_path, fmt), images)
    assert (padded["num"] > 0).all()
    np.testing.assert_array_equal(got["num"], padded["num"])
    np.testing.assert_array_equal(got["labels"], padded["labels"])
    np.testing.assert_allclose(got["boxes"], padded["boxes"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got["scores"], padded["scores"], rtol=1e-4, atol=1e-5)


def test_metadata_records_names_size_and_thresholds(exports):
    path = exports("savedmodel")
    assert exported_format(path) == "savedmodel"
    meta = json.loads(metadata_path(path).read_text())
    assert meta["class_names"] == NAMES
    assert meta["input_size"] == SIZE
    assert (meta["score_thr"], meta["iou_thr"], meta["max_det"]) == (SCORE_THR, IOU_THR, 100)
    assert meta["outputs"] == ["boxes", "scores", "labels", "num"]
    assert meta["input"]["shape"] == [None, SIZE, SIZE, 3] and meta["input"]["dtype"] == "uint8"
    assert meta["input"]["pad_value"] == PAD_VALUE


# === The NMS graphs against the host NMS, by hand and on random candidates ===


def hand_candidates():
    """Three sorted candidates: 0 and 1 same class, IoU 0.6; 2 another class over 0.

    iou(0, 1) = (8 * 10) / (100 + 100 - 80) = 80 / 120 = 0.667 (boxes 10x10 shifted by 2 px).
    """
    boxes = np.array([[[0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 10, 10]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7]], np.float32)
    labels = np.array([[0, 0, 1]], np.int32)
    return boxes, scores, labels


@pytest.mark.parametrize(
    ("agnostic", "expected_labels"),
    [(False, [0, 1]), (True, [0])],  # per class: 1 suppressed by 0; agnostic: 2 as well
)
@pytest.mark.parametrize("graph", ["combined", "per_image"])
def test_nms_graphs_by_hand(graph, agnostic, expected_labels):
    boxes, scores, labels = hand_candidates()
    if graph == "combined":
        out = detections_graph(boxes, scores, labels, 2, 0.5, 0.5, 4, agnostic)
    else:
        out = per_image_detections_graph(boxes, scores, labels, 16, 0.5, 0.5, 4, agnostic)
    n = len(expected_labels)
    assert int(out["num"][0]) == n
    np.testing.assert_array_equal(out["labels"][0], expected_labels + [-1] * (4 - n))
    np.testing.assert_array_equal(out["boxes"][0, n:], 0.0)
    assert box_iou(boxes[0, :1], boxes[0, 1:2])[0, 0] == pytest.approx(80 / 120)


@pytest.mark.parametrize("graph", ["combined", "per_image"])
def test_nms_graphs_with_nothing_above_the_threshold(graph):
    boxes, scores, labels = hand_candidates()
    fn = detections_graph if graph == "combined" else per_image_detections_graph
    out = fn(boxes, scores * 0.1, labels, 2 if graph == "combined" else 16, 0.5, 0.5, 4)
    assert int(out["num"][0]) == 0
    np.testing.assert_array_equal(out["labels"], -1)
    np.testing.assert_array_equal(out["scores"], 0.0)


@pytest.mark.parametrize("agnostic", [False, True])
def test_nms_graphs_match_host_nms_on_random_candidates(agnostic):
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 32, (1, 200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 32, (1, 200, 2))], -1).astype(np.float32)
    scores = np.sort(rng.uniform(0, 1, (1, 200)).astype(np.float32))[:, ::-1].copy()
    labels = rng.integers(0, 4, (1, 200)).astype(np.int32)
    expected = host_nms(boxes, scores, labels, 0.2, 0.4, 100, agnostic)[0]
    combined = detections_graph(boxes, scores, labels, 4, 0.2, 0.4, 100, agnostic)
    per_image = per_image_detections_graph(boxes, scores, labels, 64, 0.2, 0.4, 100, agnostic)
    n = len(expected["boxes"])
    assert 0 < n < 100
    for out in (combined, per_image):
        assert int(out["num"][0]) == n
        np.testing.assert_array_equal(np.asarray(out["labels"])[0, :n], expected["labels"])
        np.testing.assert_array_equal(np.asarray(out["boxes"])[0, :n], expected["boxes"])


# === Errors ===


def test_export_errors_are_one_line_detseg_errors(tmp_path, run_dir, monkeypatch):
    with pytest.raises(DetsegError, match="model file not found"):
        export(tmp_path / "missing.keras", "onnx")
    with pytest.raises(DetsegError, match="unknown export format 'pb'"):
        export(run_dir, "pb")
    with pytest.raises(DetsegError, match="onnx exports are .onnx files"):
        export(run_dir, "onnx", out=tmp_path / "model.tflite")
    with pytest.raises(DetsegError, match="exists and is not a SavedModel"):
        export(run_dir, "savedmodel", out=tmp_path)  # never delete a folder that is not ours
    assert tmp_path.is_dir()
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name: None if name == "tf2onnx" else real_find_spec(name)
    )
    with pytest.raises(DetsegError, match=r"needs tf2onnx: pip install 'detseg\[onnx\]'"):
        export(run_dir, "onnx")


def test_export_rejects_a_model_that_is_not_a_detector(tmp_path):
    inputs = keras.Input((8,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "best.keras")
    dump_config(tiny_config(), tmp_path / "config.yaml")
    with pytest.raises(DetsegError, match="this is a Functional, not a YoloDetector"):
        export(tmp_path, "savedmodel")


def test_exported_detector_rejects_thresholds_the_graph_cannot_honour(exports):
    path = exports("savedmodel")
    with pytest.raises(DetsegError, match="keeps scores above 0.3; 0.1 needs a new export"):
        exported_detector(path, score_thr=0.1)
    with pytest.raises(DetsegError, match="IoU threshold is fixed at 0.3"):
        exported_detector(path, iou_thr=0.5)
    metadata_path(path).rename(metadata_path(path).with_suffix(".bak"))
    try:
        with pytest.raises(DetsegError, match="no metadata beside the exported model"):
            exported_detector(path)
    finally:
        metadata_path(path).with_suffix(".bak").rename(metadata_path(path))


# === The command line ===


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "detseg", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )


def test_cli_export_writes_the_artefact(run_dir, tmp_path):
    out = tmp_path / "exported_saved_model"
    res = run_cli("export", str(run_dir), "--format", "savedmodel", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert f"exported: {out}" in res.stdout
    assert (out / "saved_model.pb").is_file() and metadata_path(out).is_file()


def test_cli_export_of_a_missing_model_exits_2_with_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.keras"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"detseg: error: {tmp_path / 'nope.keras'}: model file not found (give a run folder or a .keras file)"
    ]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_cli_predict_runs_an_export_like_the_keras_detector(exports, model, tmp_path, fmt):
    """A 128 x 96 image is letterboxed (scale 0.5, 8 px bands) by detseg around the export;
    the JSONL boxes are in the image's pixels and equal the Keras Detector's."""
    image = cv2.resize(draw_shapes(1, SIZE, seed=7)[0][0], (128, 96))
    cv2.imwrite(str(tmp_path / "frame.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    jsonl = tmp_path / "detections.jsonl"
    code = main(
        [
            "predict",
            str(exports(fmt)),
            "--source",
            str(tmp_path / "frame.png"),
            "--jsonl",
            str(jsonl),
        ]
    )
    assert code == 0
    (record,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    (expected,) = Detector(model, score_thr=SCORE_THR, iou_thr=IOU_THR)([image])
    assert len(expected["boxes"]) > 0
    assert record["labels"] == expected["labels"].tolist()
    assert record["classes"] == [NAMES[i] for i in expected["labels"]]
    np.testing.assert_allclose(record["boxes"], expected["boxes"], atol=0.01)
