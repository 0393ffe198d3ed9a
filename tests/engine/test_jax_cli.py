"""`detseg train`, `evaluate` and `predict` of the shapes detector as real commands under
`KERAS_BACKEND=jax`, from this (TensorFlow) test process: the run folder, the evaluation of the
saved model against what the run logged, predictions inside the image, and exports refused in
one line (they convert through TensorFlow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import cv2
import pytest
import yaml

from detseg.engine.runs import read_history
from tests.engine.test_resume import detector_config

# The JAX commands are compile-bound on tiny inputs: XLA without its backend optimisations
# compiles several times faster (as tests/conftest.py sets for the JAX test process).
JAX_ENV = {
    **os.environ,
    "KERAS_BACKEND": "jax",
    "XLA_FLAGS": "--xla_backend_optimization_level=0",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}
COCO_AP = re.compile(r"Average Precision +\(AP\) @\[ IoU=0\.50:0\.95 \| area= +all \| maxDets=100 \] = (\S+)")


def detseg(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "detseg", "-q", *args]
    return subprocess.Popen(command, env=JAX_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen, code: int = 0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    return out, err


@pytest.mark.slow  # 60 s; the JAX subset of `make test` trains, resumes and predicts under JAX in process
def test_train_evaluate_predict_the_detector_under_jax(tmp_path):
    cfg = detector_config(tmp_path)
    cfg["train"]["epochs"] = 1
    config = tmp_path / "detector.yaml"
    config.write_text(yaml.safe_dump(cfg))
    _, err = finished(detseg("train", str(config)))
    # TensorFlow, which training uses beside JAX (seeding, TensorBoard), starts quietly too.
    assert "cuda" not in err.lower() and "onednn" not in err.lower()
    run_dir = tmp_path / "runs" / "detector"
    for name in ("config.yaml", "best.keras", "last.keras", "history.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "logs" / "train").glob("events.out.tfevents.*"))  # TensorBoard
    (logged,) = read_history(run_dir)  # one epoch, logged once
    assert logged["epoch"] == "0"

    # Evaluation, prediction and export only read best.keras: run them side by side.
    image = sorted((tmp_path / "cache").glob("shapes_*/val/images/*.jpg"))[0]
    jsonl, saved = tmp_path / "predictions.jsonl", tmp_path / "annotated"
    evaluating = detseg("evaluate", str(run_dir / "best.keras"), "--config", str(run_dir / "config.yaml"))
    predicting = detseg(
        "predict", str(run_dir / "best.keras"), "--source", str(image), "--conf", "0.01",
        "--jsonl", str(jsonl), "--save", str(saved),
    )  # fmt: skip
    exporting = detseg("export", str(run_dir / "best.keras"), "--format", "onnx")
    table, _ = finished(evaluating)
    finished(predicting)
    _, err = finished(exporting, code=2)
    assert err == (
        "detseg: error: exports need the TensorFlow backend, not jax: run it with "
        "KERAS_BACKEND=tensorflow (a .keras model trained under any backend exports there)\n"
    )

    # The saved model scores on the val split what the run's validation logged for its epoch.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(float(logged["val_mAP"]), abs=1e-9)
    assert metrics["AP50"] == pytest.approx(float(logged["val_mAP50"]), abs=1e-9)
    assert float(COCO_AP.search(table).group(1)) == pytest.approx(float(logged["val_mAP"]), abs=5e-4)
    assert re.search(r"^ circle +\d\.\d{3} +\d\.\d{3}$", table, re.MULTILINE)  # the per-class table

    (record,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    height, width = cv2.imread(str(image)).shape[:2]
    assert (record["file"], record["width"], record["height"]) == (image.name, width, height)
    assert record["boxes"] and len(record["boxes"]) == len(record["scores"]) == len(record["classes"])
    for x1, y1, x2, y2 in record["boxes"]:
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
    assert min(record["scores"]) >= 0.01 and set(record["classes"]) <= {"circle", "square", "triangle"}
    assert cv2.imread(str(saved / image.name)).shape[:2] == (height, width)
