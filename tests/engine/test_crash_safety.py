"""Crash safety of training: checkpoints and history.csv are replaced whole or not at all, Ctrl-C
saves last.keras and exits 130, and a run killed mid-epoch (SIGKILL, slow) resumes from its
last completed epoch with the optimizer state, every epoch logged once."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml

import detseg.engine.train as train_module
from detseg.cli import main
from detseg.data.loader import DetectionLoader
from detseg.engine.runs import read_history, save_model
from detseg.engine.train import Checkpoint, HistoryLog
from detseg.tasks import TASKS
from tests.engine.test_resume import detector_config


def small_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)  # saved with all its slots, as training leaves it
    return model


def epochs_logged(run_dir) -> list[int]:
    with (run_dir / "history.csv").open(newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def iterations(path) -> int:
    return int(keras.ops.convert_to_numpy(keras.saving.load_model(path).optimizer.iterations))


# === Atomic checkpoints and history (default run: no training) ===


def test_a_save_interrupted_mid_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    good, newer = small_model(0), small_model(1)
    path = save_model(good, tmp_path / "last.keras")
    real_save = keras.Model.save

    def dies_mid_write(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)
        with open(filepath, "r+b") as f:  # the zip is half written when the process dies
            f.truncate(os.path.getsize(filepath) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_model(newer, path)
    monkeypatch.undo()
    loaded = keras.saving.load_model(path)
    for kept, before in zip(loaded.get_weights(), good.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.keras"]


def test_best_checkpoint_is_replaced_only_by_a_better_score(tmp_path, monkeypatch):
    saves = []
    monkeypatch.setattr(train_module, "save_model", lambda model, path: saves.append((epoch, path.name)))
    best = Checkpoint(tmp_path / "best.keras", monitor="val_mAP", best=0.5)  # a resumed run's best
    best.set_model(small_model(0))
    for epoch, score in enumerate([0.4, 0.5, 0.6, float("nan"), 0.55, 0.7]):
        best.on_epoch_end(epoch, {"val_mAP": score})
    assert saves == [(2, "best.keras"), (5, "best.keras")]  # 0.6 > 0.5, 0.7 > 0.6; ties, NaN, worse keep it
    assert best.best == 0.7


def test_history_log_rewrites_a_whole_file_that_continues_a_resumed_run(tmp_path):
    first = HistoryLog(tmp_path, append=False)
    first.on_epoch_end(0, {"loss": np.float32(2.5), "val_mAP": 0.125})
    resumed = HistoryLog(tmp_path, append=True)  # a resumed run keeps epoch 0
    resumed.on_epoch_end(1, {"loss": 1.5, "val_mAP": 0.25, "train_minutes": 0.5})
    # a key first logged in epoch 1 gets a column; epoch 0 leaves it empty
    assert (tmp_path / "history.csv").read_text() == (
        "epoch,loss,train_minutes,val_mAP\n0,2.5,,0.125\n1,1.5,0.5,0.25\n"
    )
    assert [row["epoch"] for row in read_history(tmp_path)] == ["0", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


# === Ctrl-C during training (default run: one tiny detector, 2 steps an epoch) ===


class CtrlCOnce(keras.callbacks.Callback):
    """Raise KeyboardInterrupt before batch 1 of epoch 1, as Ctrl-C does, once per test."""

    def __init__(self, fired: list):
        super().__init__()
        self.fired, self.epoch = fired, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == (1, 1) and not self.fired:
            self.fired.append(True)
            raise KeyboardInterrupt


def interrupt_a_tiny_run(tmp_path, monkeypatch, caplog):
    """Train the tiny detector with Ctrl-C before batch 1 of epoch 1; check what it left."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(detector_config(tmp_path)))  # 8 images, batch 4: 2 steps/epoch
    fired: list = []
    task = TASKS["yolov3"]  # validation is scripted: this test is about checkpoints, not scores
    monkeypatch.setattr(type(task), "validate", lambda self, cfg, model, data: {task.monitor: 0.5})
    original = train_module._callbacks
    monkeypatch.setattr(train_module, "_callbacks", lambda *args: [*original(*args), CtrlCOnce(fired)])

    assert main(["-q", "train", str(config)]) == 130
    run_dir = tmp_path / "runs" / "detector"
    assert "interrupted after 1 complete epoch(s)" in caplog.text and "train.resume=true" in caplog.text
    assert epochs_logged(run_dir) == [0]
    assert iterations(run_dir / "last.keras") == 3  # epoch 0's 2 steps + 1 step of epoch 1
    return config, run_dir


def test_ctrl_c_saves_last_keras_and_exits_130(tmp_path, monkeypatch, caplog):
    interrupt_a_tiny_run(tmp_path, monkeypatch, caplog)


@pytest.mark.jax
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="only JAX detaches the weights while a step runs")
def test_ctrl_c_in_the_first_step_of_a_resumed_run_keeps_last_keras(tmp_path, monkeypatch, caplog):
    # Under JAX the first step of a `fit` starts with no state to reattach to the model: Ctrl-C
    # while it loads its batch leaves the weights empty, and last.keras (what the run resumed
    # from) already holds the model as it is.
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(detector_config(tmp_path)))  # 8 images, batch 4: 2 steps/epoch
    task = TASKS["yolov3"]  # validation is scripted: this test is about checkpoints, not scores
    monkeypatch.setattr(type(task), "validate", lambda self, cfg, model, data: {task.monitor: 0.5})
    original = train_module._callbacks
    fired: list = []  # Ctrl-C before batch 1 of epoch 1: last.keras after 3 steps
    monkeypatch.setattr(train_module, "_callbacks", lambda *args: [*original(*args), CtrlCOnce(fired)])
    assert main(["-q", "train", str(config)]) == 130
    run_dir = tmp_path / "runs" / "detector"
    saved = (run_dir / "last.keras").read_bytes()

    def interrupted_load(self, index):  # the resumed run's first batch
        raise KeyboardInterrupt

    monkeypatch.setattr(DetectionLoader, "__getitem__", interrupted_load)
    caplog.clear()
    assert main(["-q", "train", str(config), "--set", "train.resume=true"]) == 130
    assert "interrupted after 1 complete epoch(s)" in caplog.text and "holds the model as it is" in caplog.text
    assert (run_dir / "last.keras").read_bytes() == saved and iterations(run_dir / "last.keras") == 3
    assert epochs_logged(run_dir) == [0]


@pytest.mark.jax
@pytest.mark.slow
def test_a_run_stopped_by_ctrl_c_resumes_with_the_optimizer_state(tmp_path, monkeypatch, caplog):
    config, run_dir = interrupt_a_tiny_run(tmp_path, monkeypatch, caplog)
    assert main(["-q", "train", str(config), "--set", "train.resume=true"]) == 0
    assert epochs_logged(run_dir) == [0, 1]  # every epoch once
    assert iterations(run_dir / "last.keras") == 5  # the optimizer continued: 3 + epoch 1's 2 steps


# === SIGKILL mid-epoch, then resume (slow: a real process, three real epochs) ===


@pytest.mark.jax
@pytest.mark.slow  # under JAX too (`KERAS_BACKEND=jax pytest -m "jax and slow"`): the command inherits the backend
def test_a_run_killed_mid_epoch_resumes_from_its_last_epoch_with_the_optimizer(tmp_path):
    cfg = detector_config(tmp_path)
    cfg["data"]["shapes"]["num_train"] = 96
    cfg["train"].update(epochs=3, batch_size=2)  # 48 steps an epoch, to land in the middle of one
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "detector"
    history = run_dir / "history.csv"
    env = {**os.environ, "DETSEG_ALLOCATOR": "system"}  # no re-exec (it would keep the pid anyway)
    command = [sys.executable, "-m", "detseg", "-q", "train", str(config)]

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (history.is_file() and len(read_history(run_dir)) >= 1):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no epoch completed in 4 minutes"
            time.sleep(0.05)
        epoch_done = time.monotonic()
        time.sleep(0.5)  # into epoch 1's 48 steps
        assert len(read_history(run_dir)) == 1, "epoch 1 ended before the kill: make epochs longer"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - epoch_done < 30
    assert epochs_logged(run_dir) == [0]
    steps = iterations(run_dir / "last.keras")  # whole: written under a temporary name
    assert steps == 48  # epoch 0's: epoch 1 had not ended

    res = subprocess.run([*command, "--set", "train.resume=true"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert epochs_logged(run_dir) == [0, 1, 2]  # every epoch once
    assert iterations(run_dir / "last.keras") == 3 * steps  # a fresh optimizer would say 2 * steps
    assert not list(run_dir.glob("*.partial.*"))
