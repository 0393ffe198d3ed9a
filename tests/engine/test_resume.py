"""Resume, for every task: the history continues, and best.keras is replaced only by a better
validation score, also on the first epoch after a resume (the checkpoint is seeded from
history.csv)."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

from detseg.config import load_config
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


def history(run_dir, key):
    with (run_dir / "history.csv").open() as f:
        return [(int(row["epoch"]), float(row[key])) for row in csv.DictReader(f)]


def weights(path):
    return [np.asarray(w) for w in keras.saving.load_model(path).get_weights()]


@pytest.mark.parametrize(("kind", "make_config"), [("yolov3", detector_config), ("classifier", classifier_config)])
def test_resume_keeps_the_best_model_and_a_continuous_history(tmp_path, monkeypatch, kind, make_config):
    task = TASKS[kind]
    calls = []

    def scripted(self, cfg, model, val_data):
        calls.append(len(calls))
        return {task.monitor: SCORES[len(calls) - 1]}

    monkeypatch.setattr(type(task), "validate", scripted)
    cfg = load_config(None, make_config(tmp_path))
    run_dir = train(cfg)
    best_before = weights(run_dir / "best.keras")  # epoch 1 (0.5 > 0.2)
    np.testing.assert_array_equal(best_before[0], weights(run_dir / "last.keras")[0])

    resumed = load_config(None, {**make_config(tmp_path), "train": {**make_config(tmp_path)["train"], "epochs": 4, "resume": True}})
    train(resumed)
    assert history(run_dir, task.monitor) == list(enumerate(SCORES))  # epochs 0..3, each once
    # Neither resumed epoch beat epoch 1: best.keras is still epoch 1's model, bit for bit,
    # while last.keras moved on.
    best_after, last_after = weights(run_dir / "best.keras"), weights(run_dir / "last.keras")
    for before, after in zip(best_before, best_after, strict=True):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(a, b) for a, b in zip(best_after, last_after, strict=True))
