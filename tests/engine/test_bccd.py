"""Real data end to end: a short from-scratch training on BCCD reaches a non-trivial mAP@0.5."""

from __future__ import annotations

import json

import pytest

from detseg.config import load_config
from detseg.engine.train import train


@pytest.mark.slow
def test_short_bccd_training_learns(tmp_path, shared_data):
    cfg = load_config(
        "configs/bccd_yolov3.yaml",
        {
            "data.root": str(shared_data / "bccd"),
            "out_dir": str(tmp_path / "runs"),
            "model.input_size": 320,
            "train.time_limit": 4,
        },
    )
    run_dir = train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # chance is ~0: three classes, dozens of cells per image; 4 minutes from scratch on 2 cores
    # already find most red cells and the large white cells
    assert metrics["AP50"] > 0.3, metrics["per_class"]
