"""EvaluateCallback inside a real (tiny) model.fit: the values reach History, callbacks
placed after it (ModelCheckpoint monitoring val_mAP) and every epoch's logs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from detseg.errors import DetsegError
from detseg.metrics import EvaluateCallback


class RecordLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(dict(logs))


def test_values_reach_history_checkpoint_and_later_callbacks(tmp_path):
    scores = iter([0.30, 0.50, 0.40, 0.45])  # one per evaluation
    calls = []

    def evaluate(model):
        calls.append(model)
        value = next(scores)
        return {"val_mAP": value, "val_mAP50": value + 0.2}

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    checkpoint = keras.callbacks.ModelCheckpoint(
        tmp_path / "best.keras", monitor="val_mAP", mode="max", save_best_only=True
    )
    recorder = RecordLogs()
    callback = EvaluateCallback(evaluate, every=2)
    x, y = np.ones((8, 3), np.float32), np.ones((8, 1), np.float32)
    history = model.fit(x, y, epochs=5, verbose=0, callbacks=[callback, checkpoint, recorder])

    # evaluated after epoch 1 (first), 2 and 4 (every 2), and 5 (last); epoch 3 carries 2's
    assert callback.evaluated_epochs == [0, 1, 3, 4]
    assert all(m is model for m in calls)
    np.testing.assert_allclose(history.history["val_mAP"], [0.30, 0.50, 0.50, 0.40, 0.45])
    np.testing.assert_allclose(history.history["val_mAP50"], [0.50, 0.70, 0.70, 0.60, 0.65])
    assert [logs["val_mAP"] for logs in recorder.seen] == history.history["val_mAP"]
    assert checkpoint.best == pytest.approx(0.50)
    assert (tmp_path / "best.keras").is_file()


def test_bad_arguments_and_results():
    with pytest.raises(DetsegError, match="every must be a positive integer"):
        EvaluateCallback(lambda m: {}, every=0)
    with pytest.raises(DetsegError, match="evaluate_fn must be callable"):
        EvaluateCallback("val_mAP")
    callback = EvaluateCallback(lambda m: [0.5])
    with pytest.raises(DetsegError, match="must return a dict of floats, got list"):
        callback.on_epoch_end(0, {})
