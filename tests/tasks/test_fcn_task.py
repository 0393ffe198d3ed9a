"""The FCN sliding-window detector as a task: window crops (objects squared, background that
overlaps no object), a short training run evaluated as a detector on whole images, prediction
to JSONL, and the config and export errors."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from detseg.boxes import box_iou
from detseg.config import load_config
from detseg.data import Dataset, Sample, load_split, read_image
from detseg.data.crops import BACKGROUND, NO_BACKGROUND, background_crops, window_crops
from detseg.engine.predict import predict
from detseg.errors import DetsegError

# === Window crops ===


def test_window_crops_square_the_objects_inside_the_image(tmp_path):
    sample = Sample(
        tmp_path / "a.png",
        100,
        80,
        [[10, 10, 30, 50], [90, 0, 100, 20], [0, 0, 50, 50]],
        [0, 1, 1],
        iscrowd=[False, False, True],
    )
    crops = window_crops(Dataset([sample], ["a", "b"]), 0.1, 3, [16], max_iou=0.2)
    # box 1: side max(20, 40) * 1.2 = 48 around (20, 30) -> [-4, 6, 44, 54], moved right: [0, 6, 48, 54]
    # box 2: side max(10, 20) * 1.2 = 24 around (95, 10) -> [83, -2, 107, 22], moved in: [76, 0, 100, 24]
    np.testing.assert_allclose(crops.boxes[:2], [[0, 6, 48, 54], [76, 0, 100, 24]])
    assert crops.class_names == ["a", "b", BACKGROUND]
    assert crops.labels.tolist() == [0, 1, 2, 2, 2]
    background = crops.boxes[2:]
    np.testing.assert_allclose(background[:, 2:] - background[:, :2], 16, atol=1e-4)  # the side
    assert (background[:, :2] >= 0).all() and (background[:, 2:] <= [100, 80]).all()
    assert (box_iou(background, sample.boxes) < 0.2).all()  # crowd region included
    assert crops.summary.skipped == {"crowd box (not one object), no crop cut": 1}
    again = window_crops(Dataset([sample], ["a", "b"]), 0.1, 3, [16], max_iou=0.2)
    np.testing.assert_array_equal(again.boxes, crops.boxes)  # same seed, same windows


def test_background_shortfall_is_counted(tmp_path):
    covered = Sample(tmp_path / "full.png", 32, 32, [[0, 0, 32, 32]], [0])
    free = Sample(tmp_path / "free.png", 32, 32)
    # the only 32 px window of the covered image is its box (IoU 1): no background there
    crops = background_crops(Dataset([covered, free], ["a"]), 2, [40], max_iou=0.5, label=1)
    assert [p.name for p in crops.paths] == ["free.png", "free.png"]
    np.testing.assert_array_equal(crops.boxes, [[0, 0, 32, 32]] * 2)  # side capped at 32
    assert crops.summary.skipped == {NO_BACKGROUND: 2}


def test_fcn_config_errors_name_the_key(tmp_path):
    with pytest.raises(DetsegError, match="model.scales: every scale must be > 0"):
        load_config(None, {"model": {"kind": "fcn", "scales": [1.0, 0.0]}})
    with pytest.raises(DetsegError, match="predict.agnostic_nms: not used by model.kind 'fcn'"):
        load_config(None, {"model": {"kind": "fcn"}, "predict": {"agnostic_nms": True}})


# === Training, evaluation, prediction ===

WINDOW = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder and its saved config after a short training on 96 px shapes."""
    from detseg.engine.train import train

    tmp_path = tmp_path_factory.mktemp("fcn")
    cfg = load_config(
        None,
        {
            "name": "fcn",
            "out_dir": str(tmp_path / "runs"),
            "data": {
                "builtin": "shapes",
                "cache_dir": str(tmp_path / "cache"),
                "workers": 0,
                "shapes": {
                    "num_train": 60,
                    "num_val": 12,
                    "image_size": 96,
                    "min_objects": 1,
                    "max_objects": 3,
                    "min_size": 24,
                    "max_size": 32,
                },
            },
            # The defaults: LeNet-5 with "valid" padding on 32 px windows (stride 4).
            "model": {"kind": "fcn", "background_per_image": 3},
            "train": {"epochs": 6, "batch_size": 32, "lr": 0.005, "warmup_epochs": 0},
            "predict": {"score_thr": 0.5},
        },
    )
    run = train(cfg)
    return run, load_config(run / "config.yaml")  # as saved: class names included


def test_training_evaluates_the_classifier_as_a_detector(trained):
    run, cfg = trained
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["AP50"] <= 1 and metrics["AP"] <= metrics["AP50"]
    history = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_mAP50", "val_mAP", "val_accuracy", "accuracy"} <= set(history)
    # The best model is a window classifier with one class more (background, last).
    model = keras.saving.load_model(run / "best.keras")
    assert model.output_shape[-1] == len(cfg.data.names) + 1 and model.input_shape[1:3] == (
        WINDOW,
        WINDOW,
    )
    # Every detection is a 32 px window at a multiple of LeNet-5's stride (4) at scale 1.
    detections = json.loads((run / "detections.json").read_text())
    assert detections
    for found in detections:
        x, y, w, h = found["bbox"]
        assert (w, h) == (WINDOW, WINDOW) and x % 4 == 0 and y % 4 == 0


def test_predict_scores_each_window_as_the_classifier_does(trained, tmp_path):
    run, cfg = trained
    images = [s.image_path for s in load_split(cfg.data, "val").samples[:2]]
    source = tmp_path / "frames"
    source.mkdir()
    for path in images:
        (source / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out.jsonl"
    predict(run, source=str(source), jsonl=str(out), score_thr=0.05, iou_thr=0.2)
    records = sorted(
        (json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["file"]
    )
    # Reference: the classifier itself on the crop of each reported window ("valid" padding:
    # the FCN cell and the crop see the same pixels).
    model = keras.saving.load_model(run / "best.keras")
    names = cfg.data.names
    found = 0
    for record, path in zip(records, sorted(images, key=lambda p: p.name), strict=True):
        image = read_image(source / path.name)
        for box, score, label in zip(
            record["boxes"], record["scores"], record["labels"], strict=True
        ):
            x, y = round(box[0]), round(box[1])
            probs = model.predict(image[None, y : y + WINDOW, x : x + WINDOW], verbose=0)[0]
            assert label == int(probs[: len(names)].argmax())
            assert score == pytest.approx(float(probs[: len(names)].max()), abs=2e-4)
            found += 1
    assert found  # the check above ran on real detections


def test_export_is_refused_with_one_line(trained):
    from detseg.engine.export import export

    with pytest.raises(DetsegError, match="model.kind fcn is not exported"):
        export(trained[0], "tflite")
