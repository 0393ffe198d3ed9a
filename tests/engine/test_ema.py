"""`train.ema`: validation, best.keras and last.keras hold the moving average of the weights,
computed here by hand from the raw weights of every step (Keras's update: the average starts
at the weights after the first step, then average = d * average + (1 - d) * weights), and a
resumed run continues training the raw weights, as one uninterrupted run does."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from detseg.config import load_config
from detseg.engine.train import train
from detseg.errors import DetsegError
from detseg.tasks import TASKS
from tests.engine.test_resume import detector_config

DECAY = 0.5  # far from 1, so the average differs clearly from the last weights


class RawWeights(keras.callbacks.Callback):
    """The trainable weights after every training step (the raw ones: the model holds the
    average only from an epoch's end to the next epoch's start)."""

    def __init__(self):
        super().__init__()
        self.steps: list[list[np.ndarray]] = []
        self.every_weight: list[list[np.ndarray]] = []  # all the weights, the frozen ones included

    def on_train_batch_end(self, batch, logs=None):
        if hasattr(self.model, "jax_state_sync"):  # JAX keeps the state out of the model in a fit
            self.model.jax_state_sync()
        self.steps.append(trainable(self.model))
        self.every_weight.append(self.model.get_weights())


def ema_config(tmp_path, epochs: int, resume: bool = False, **train_options):
    raw = detector_config(tmp_path)
    train_cfg = {**raw["train"], "epochs": epochs, "schedule": "constant", "optimizer": "sgd", "lr": 0.01}
    options = {"ema": True, "ema_decay": DECAY, "resume": resume, **train_options}
    return load_config(None, {**raw, "train": {**train_cfg, **options}})


def trainable(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]


@pytest.mark.jax
def test_validation_and_saved_models_hold_the_hand_computed_average(tmp_path, monkeypatch):
    task = TASKS["yolov3"]
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    validated = []  # (trainable weights, detections) at each validation

    def scripted(self, cfg, model, val_data):
        validated.append((trainable(model), model.predict(images, verbose=0)))
        return {task.monitor: float(len(validated))}  # every epoch is the best so far

    monkeypatch.setattr(type(task), "validate", scripted)
    raw = RawWeights()
    run_dir = train(ema_config(tmp_path, epochs=2), callbacks=[raw])

    average = raw.steps[0]
    per_epoch = len(raw.steps) // 2
    for step, weights in enumerate(raw.steps[1:], start=1):
        average = [DECAY * a + (1 - DECAY) * w for a, w in zip(average, weights, strict=True)]
        if step == per_epoch - 1:  # the first validation saw the average of the first epoch
            for seen, expected in zip(validated[0][0], average, strict=True):
                np.testing.assert_allclose(seen, expected, rtol=1e-5, atol=1e-6)
    assert not all(np.allclose(a, w) for a, w in zip(average, raw.steps[-1], strict=True))
    for name in ("best.keras", "last.keras"):
        saved = keras.saving.load_model(run_dir / name)
        for got, seen, expected in zip(trainable(saved), validated[-1][0], average, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(got, seen)
        # The saved model predicts what validation saw: the same detections, bit for bit.
        detections = saved.predict(images, verbose=0)
        for key, value in validated[-1][1].items():
            np.testing.assert_array_equal(detections[key], value, err_msg=key)


class Interrupt(keras.callbacks.Callback):
    """Ctrl-C at the start of epoch `epoch`, after its first callbacks ran."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.slow  # 20-25 s; the hand-computed average test stays in the default run
@pytest.mark.jax
def test_a_run_interrupted_and_resumed_trains_as_one_run(tmp_path, monkeypatch):
    # Interrupted when the second epoch's first callback has put the raw weights back in the
    # model: last.keras of the first epoch is kept (the average as its weights, the raw ones in
    # its optimizer state), and the resumed run trains on from the raw weights.
    task = TASKS["yolov3"]
    monkeypatch.setattr(type(task), "validate", lambda self, cfg, model, val_data: {task.monitor: 0.0})
    straight = trainable(keras.saving.load_model(train(ema_config(tmp_path / "a", epochs=3)) / "last.keras"))
    with pytest.raises(KeyboardInterrupt):
        train(ema_config(tmp_path / "b", epochs=3), callbacks=[Interrupt(epoch=1)])
    resumed_dir = train(ema_config(tmp_path / "b", epochs=3, resume=True))
    resumed = trainable(keras.saving.load_model(resumed_dir / "last.keras"))
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "sgd"])
def test_every_optimiser_keeps_the_configured_average(name):
    from detseg.engine.train import make_optimizer

    on = load_config(None, {"train.optimizer": name, "train.ema": True, "train.ema_decay": 0.99})
    optimizer = make_optimizer(on.train, steps_per_epoch=10)
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.99)
    assert not make_optimizer(load_config(None, {"train.optimizer": name}).train, steps_per_epoch=10).use_ema


@pytest.mark.slow  # 20-25 s; the hand-computed average test stays in the default run
@pytest.mark.jax
def test_a_fine_tuning_phase_starts_from_the_average_of_the_frozen_phase(tmp_path, monkeypatch):
    # The frozen phase's last epoch leaves its average in the model; the fine-tuning phase's
    # new optimizer starts its own average there (not at its zero-initialised averages).
    task = TASKS["yolov3"]
    validated = []

    def scripted(self, cfg, model, val_data):
        validated.append(model.get_weights())
        return {task.monitor: 0.0}

    monkeypatch.setattr(type(task), "validate", scripted)
    raw = RawWeights()
    run_dir = train(ema_config(tmp_path, epochs=2, freeze_backbone_epochs=1), callbacks=[raw])
    frozen_average, first_fine_tuned = validated[0], raw.every_weight[len(raw.steps) // 2]
    moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(first_fine_tuned, frozen_average, strict=True)))
    size = np.sqrt(sum(np.sum(a**2) for a in frozen_average))
    assert moved < 0.1 * size  # one step of lr 0.01 away
    for got, seen in zip(keras.saving.load_model(run_dir / "last.keras").get_weights(), validated[1], strict=True):
        np.testing.assert_array_equal(got, seen)


def test_a_run_resumed_with_another_ema_setting_is_refused(tmp_path, monkeypatch):
    task = TASKS["yolov3"]
    monkeypatch.setattr(type(task), "validate", lambda self, cfg, model, val_data: {task.monitor: 0.0})
    train(ema_config(tmp_path, epochs=1))
    without = ema_config(tmp_path, epochs=2, resume=True, ema=False)
    with pytest.raises(DetsegError, match="train.ema is false but this last.keras was trained with train.ema: true"):
        train(without)
