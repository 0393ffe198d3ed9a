"""`train.distribution: data_parallel` on two virtual CPU devices: one epoch of a tiny demo
detector (and, in the slow set, of a U-Net) gives the same losses as the same epoch on one device.

The device count is fixed when the backend starts, so each backend runs in a fresh process that
trains twice from the same seed (same initial weights, same two batches of 8): data-parallel,
then on one device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# TensorFlow: two logical CPUs, set before TensorFlow starts. MirroredStrategy normalises a
# BatchNormalization over each device's half batch unless the layer is `synchronized` (Keras's
# default is not): forcing it here makes the two runs compute the same function, so what is
# compared is the loss and gradient scaling across replicas (the per-device statistics alone
# move this run's epoch loss by ~2%).
TF_TWO_DEVICES = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
_init = keras.layers.BatchNormalization.__init__
def _synchronized(self, *args, **kwargs):
    _init(self, *args, **{**kwargs, "synchronized": True})
keras.layers.BatchNormalization.__init__ = _synchronized
"""

TRAIN_TWICE = """
import csv, json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
from detseg.config import load_config
from detseg.engine.train import train
root, path, overrides = sys.argv[1], sys.argv[2] or None, json.loads(sys.argv[3])
histories = {}
for distribution in ("data_parallel", "none"):
    cfg = load_config(path, {
        **overrides, "name": distribution, "out_dir": root + "/runs", "data.cache_dir": root + "/cache",
        "train.distribution": distribution,
    })
    with open(train(cfg) / "history.csv") as f:
        histories[distribution] = list(csv.DictReader(f))[0]
print("HISTORIES " + json.dumps(histories))
"""

# One epoch of two batches of 8 of the demo detector, shrunk.
TINY_DETECTOR = {
    "data.shapes": {"num_train": 16, "num_val": 2, "image_size": 64, "min_size": 12, "max_size": 32},
    "data.workers": 0, "model.input_size": 64, "model.backbone_width": 0.25, "model.yolo.width": 0.25,
    "train.epochs": 1, "train.batch_size": 8, "train.time_limit": None,
}
# A U-Net (CE + Dice), two batches of 8; its validation predicts with `predict_on_batch`.
TINY_UNET = {
    "data": {"builtin": "shapes", "shapes": {"num_train": 16, "num_val": 5, "image_size": 64, "min_size": 14, "max_size": 40}, "workers": 0},
    "model": {"kind": "unet", "backbone": "unet", "backbone_width": 0.125, "input_size": 64, "unet": {"depth": 3, "loss": "ce+dice"}},
    "train.epochs": 1, "train.batch_size": 8, "train.warmup_epochs": 0,
}


def train_twice(backend: str, tmp_path, config: str | None, overrides: dict) -> tuple[dict, dict, str]:
    """(data-parallel epoch row, one-device epoch row, log) of a fresh `backend` process."""
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO_ROOT)}
    script = TRAIN_TWICE
    if backend == "jax":  # conftest's XLA flags are kept; the host platform gets two devices
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    else:
        script = TF_TWO_DEVICES + script
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), config or "", json.dumps(overrides)],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO_ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("HISTORIES "))
    rows = json.loads(line.removeprefix("HISTORIES "))
    return rows["data_parallel"], rows["none"], res.stderr


def check_same_epoch(parallel: dict, single: dict, log: str, devices: str, losses: tuple[str, ...]) -> None:
    assert f"data parallel over 2 devices ({devices}): 4 images per device, global batch 8" in log
    # Two steps: the second batch's loss also depends on the first update, so a loss or gradient
    # counted once per replica (x2) would show here.
    for key in ("loss", *losses):
        assert float(parallel[key]) == pytest.approx(float(single[key]), rel=1e-4), key


TF_DEVICES = "/device:CPU:0, /device:CPU:1"
YOLO_LOSSES = ("box_loss", "obj_loss", "cls_loss")


@pytest.mark.slow  # ~45 s; the default run keeps the split-batch loss checks (tests/test_distribute.py)
def test_data_parallel_epoch_matches_one_device_tensorflow(tmp_path):
    parallel, single, log = train_twice("tensorflow", tmp_path, "configs/shapes_yolov3_tiny.yaml", TINY_DETECTOR)
    check_same_epoch(parallel, single, log, TF_DEVICES, YOLO_LOSSES)


@pytest.mark.slow
def test_data_parallel_epoch_matches_one_device_jax(tmp_path):
    parallel, single, log = train_twice("jax", tmp_path, "configs/shapes_yolov3_tiny.yaml", TINY_DETECTOR)
    check_same_epoch(parallel, single, log, "cpu:0, cpu:1", YOLO_LOSSES)


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "devices"), [("tensorflow", TF_DEVICES), ("jax", "cpu:0, cpu:1")])
def test_data_parallel_unet_epoch_matches_one_device(tmp_path, backend, devices):
    parallel, single, log = train_twice(backend, tmp_path, None, TINY_UNET)
    check_same_epoch(parallel, single, log, devices, ("ce_loss", "dice_loss"))
    assert float(parallel["val_mIoU"]) == pytest.approx(float(single["val_mIoU"]), abs=1e-3)
