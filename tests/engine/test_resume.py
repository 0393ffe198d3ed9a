"""Resume, for every task and under both backends: the history continues at the next epoch
with the optimizer's state, and best.keras is replaced only by a better validation score, also
on the first epoch after a resume (the checkpoint is seeded from history.csv)."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

from detseg.config import load_config
from detseg.engine.evaluate import evaluate_model
from detseg.engine.train import train
from detseg.tasks import TASKS
from tests.engine.test_classify import imagefolder_config

# Validation scores of epochs 0..3, scripted: the first resumed epoch (2) is worse than the
# best so far (epoch 1), and epoch 3 is worse still than epoch 1 but better than epoch 2.
SCORES = [0.2, 0.5, 0.3, 0.4]


def detector_config(tmp_path) -> dict:
    return {
        "name": "detector",
        "out_dir": str(tmp_path / "runs"),
        "data": {
            "builtin": "shapes",
            "cache_dir": str(tmp_path / "cache"),
            "shapes": {"num_train": 8, "num_val": 4, "image_size": 64, "min_size": 12, "max_size": 32},
            "workers": 0,
        },
        "model": {
            "kind": "yolov3",
            "input_size": 64,
            "backbone_width": 0.25,
            "yolo": {"levels": ["P4", "P5"], "width": 0.25},
        },
        "train": {"epochs": 2, "batch_size": 4, "warmup_epochs": 0},
    }


def classifier_config(tmp_path) -> dict:
    return imagefolder_config(tmp_path, epochs=2)


def shapes_config(tmp_path, model: dict, **shapes) -> dict:
    """A tiny shapes run of `model`: 8 training and 4 validation images of 64 px."""
    return {
        "name": model["kind"],
        "out_dir": str(tmp_path / "runs"),
        "data": {
            "builtin": "shapes",
            "cache_dir": str(tmp_path / "cache"),
            "shapes": {"num_train": 8, "num_val": 4, "image_size": 64, "min_size": 14, "max_size": 32, **shapes},
            "workers": 0,
        },
        "model": model,
        "train": {"epochs": 2, "batch_size": 4, "warmup_epochs": 0},
    }


def segmenter_config(tmp_path) -> dict:
    model = {"kind": "unet", "backbone": "unet", "backbone_width": 0.125, "input_size": 64, "unet": {"depth": 2}}
    return shapes_config(tmp_path, model)


def localizer_config(tmp_path) -> dict:
    model = {"kind": "localize", "backbone": "darknet_tiny", "backbone_width": 0.25, "input_size": 32, "objects": "single"}
    return shapes_config(tmp_path, model, min_objects=1, max_objects=1)


def fcn_config(tmp_path) -> dict:
    # LeNet-5 on 32 px windows (the defaults); 8 images x (objects + 1 background window)
    return shapes_config(tmp_path, {"kind": "fcn", "background_per_image": 1}, min_objects=1, max_objects=2)


def history(run_dir, key):
    with (run_dir / "history.csv").open() as f:
        return [(int(row["epoch"]), float(row[key])) for row in csv.DictReader(f)]


def saved(path) -> tuple[list[np.ndarray], int]:
    """A saved model's weights and its optimizer's step count."""
    model = keras.saving.load_model(path)
    return [np.asarray(w) for w in model.get_weights()], int(keras.ops.convert_to_numpy(model.optimizer.iterations))


# The default runs share the work (each resume is 6-20 s, compile-bound): TensorFlow resumes
# the detector and the classifier, JAX the FCN detector; `-m slow` runs every kind, the U-Net
# and the localizer included, under either backend.
ON_JAX = keras.backend.backend() == "jax"
DEFAULT_UNDER_TF = pytest.mark.slow if ON_JAX else pytest.mark.jax
DEFAULT_UNDER_JAX = pytest.mark.jax if ON_JAX else pytest.mark.slow


@pytest.mark.jax
@pytest.mark.parametrize(
    ("kind", "make_config"),
    [
        pytest.param("yolov3", detector_config, marks=pytest.mark.slow),  # 31 s; the classifier is the default case
        pytest.param("classifier", classifier_config, marks=DEFAULT_UNDER_TF),
        pytest.param("unet", segmenter_config, marks=pytest.mark.slow),
        pytest.param("localize", localizer_config, marks=pytest.mark.slow),
        pytest.param("fcn", fcn_config, marks=DEFAULT_UNDER_JAX),
    ],
)
def test_resume_continues_the_optimizer_history_and_best_model(tmp_path, monkeypatch, kind, make_config):
    task = TASKS[kind]
    steps = []  # the optimizer's step count at each validation (the end of each epoch)

    def scripted(self, cfg, model, val_data):
        steps.append(int(keras.ops.convert_to_numpy(model.optimizer.iterations)))
        return {task.monitor: SCORES[len(steps) - 1]}

    monkeypatch.setattr(type(task), "validate", scripted)
    cfg = load_config(None, make_config(tmp_path))
    run_dir = train(cfg)
    best_before, _ = saved(run_dir / "best.keras")  # epoch 1 (0.5 > 0.2)
    last_before, last_steps = saved(run_dir / "last.keras")
    np.testing.assert_array_equal(best_before[0], last_before[0])
    assert last_steps == steps[1]

    resumed = load_config(None, {**make_config(tmp_path), "train": {**make_config(tmp_path)["train"], "epochs": 4, "resume": True}})
    train(resumed)
    assert history(run_dir, task.monitor) == list(enumerate(SCORES))  # epochs 0..3, each once
    # The resumed run validated epochs 2 and 3 only, its optimizer continuing from last.keras
    # (a fresh one would count 1 and 2 epochs' steps again).
    per_epoch = steps[0]
    assert per_epoch > 0 and steps == [per_epoch, 2 * per_epoch, 3 * per_epoch, 4 * per_epoch]
    # Neither resumed epoch beat epoch 1: best.keras is still epoch 1's model, bit for bit,
    # while last.keras moved on.
    (best_after, _), (last_after, last_steps) = saved(run_dir / "best.keras"), saved(run_dir / "last.keras")
    assert last_steps == 4 * per_epoch
    for before, after in zip(best_before, best_after, strict=True):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(a, b) for a, b in zip(best_after, last_after, strict=True))
    # `detseg evaluate` of the run folder reproduces the report the run wrote for best.keras.
    report = (run_dir / "metrics.json").read_text()
    evaluate_model(run_dir, print_fn=lambda text: None)
    assert (run_dir / "metrics.json").read_text() == report
