"""`detseg train`: one training job for every model kind, the differences asked of its Task.

The run folder `<out_dir>/<name>/` receives `config.yaml` (resolved: class names, fitted
anchors, ...), `best.keras` (best validation score, the task's `monitor`), `last.keras`,
`history.csv` (with the learning rate, `lr`), `plots/curves.png` (every loss term, validation
metric and the learning rate per epoch), with `train.gallery_every` a gallery of validation
predictions every N epochs (`plots/gallery_epoch<NNN>.png`, drawn by the task, and TensorBoard
images), TensorBoard logs and the task's evaluation report of the best model.
Setup, resume, checkpoints, the training phases (freeze-then-fine-tune), the time limit
and TensorBoard exist here once, and so does data-parallel training (`train.distribution`,
`detseg.distribute`): the model is built, compiled and fitted on the local devices, every
training batch splits evenly over them, validation runs on batches of any size, and the best
model is evaluated on one device.

Crash safety: every run-folder file is written under a temporary name and renamed
(`detseg.atomic`), last.keras before the epoch's history.csv row, so a run killed at any moment
resumes (`train.resume: true`) from its last completed epoch with the optimizer state, and its
history lists every epoch once. Ctrl-C saves last.keras as it is before the CLI exits 130
(with `train.ema`, last.keras keeps the last completed epoch).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from detseg.config import Config, TrainConfig, dump_config
from detseg.data import write_image
from detseg.distribute import Placement, placement
from detseg.engine.precision import set_op_determinism, set_precision
from detseg.engine.runs import (
    best_logged,
    completed_epochs,
    last_logged,
    load_model,
    read_history,
    save_model,
    write_history,
)
from detseg.engine.tensorboard import tensorboard_images
from detseg.errors import DetsegError
from detseg.metrics import EvaluateCallback, plot_training_curves
from detseg.tasks import Task, task_for

__all__ = [
    "Checkpoint",
    "EMAWeights",
    "GalleryLog",
    "HistoryLog",
    "LearningRateLog",
    "TimeBudgetSchedule",
    "fit_verbosity",
    "make_optimizer",
    "set_precision",
    "train",
    "training_phases",
]

log = logging.getLogger("detseg")

SPENT_KEY = "train_minutes"
"""history.csv column of the training minutes spent by the end of each epoch (time-limited runs)."""
MOSAIC_KEY = "mosaic_p"
"""history.csv column of the mosaic probability each epoch trained with (runs with train.augment.mosaic_close)."""


# === Optimisation ===


def make_optimizer(train_cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The configured optimiser with linear warm-up then a constant or cosine learning rate."""
    total = max(1, train_cfg.epochs * steps_per_epoch)
    warmup = min(int(train_cfg.warmup_epochs * steps_per_epoch), total - 1)
    if train_cfg.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else train_cfg.lr,
            decay_steps=total - warmup,
            alpha=0.05,
            warmup_target=train_cfg.lr if warmup else None,
            warmup_steps=warmup,
        )
    elif warmup:
        lr = keras.optimizers.schedules.PiecewiseConstantDecay([warmup], [train_cfg.lr / 10, train_cfg.lr])
    else:
        lr = train_cfg.lr
    ema = {"use_ema": train_cfg.ema, "ema_momentum": train_cfg.ema_decay}
    if train_cfg.optimizer == "sgd":
        return keras.optimizers.SGD(
            lr, momentum=train_cfg.momentum, nesterov=True, weight_decay=train_cfg.weight_decay, **ema
        )
    if train_cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, **ema)
    if train_cfg.optimizer == "nadam":
        return keras.optimizers.Nadam(lr, **ema)
    return keras.optimizers.AdamW(lr, weight_decay=train_cfg.weight_decay, **ema)


class TimeBudgetSchedule(keras.callbacks.Callback):
    """With `train.time_limit`, the learning-rate schedule spans the run's budget: the time limit
    or the epochs, whichever runs out first.

    A run that stops on time otherwise ends at a high, never-annealed learning rate, and one that
    runs out of epochs before its time (a faster machine) would too if the schedule followed the
    clock alone. Here the share of the budget spent, the larger of the time share and the epoch
    share, sets the rate at every batch: cosine (or constant) down to `alpha * peak`, times a
    linear warm-up over the first `warmup_epochs` epochs (epochs, as the config says, whatever the
    budget). When the time is up the current epoch ends early and is still evaluated and
    checkpointed. `peak` is the current phase's learning rate (the engine lowers it for
    fine-tuning). Every epoch logs the minutes spent (`train_minutes`), so a resumed run
    continues the budget where it stopped (`spent_minutes`); Keras's epoch index continues the
    epochs.
    """

    def __init__(
        self,
        minutes: float,
        epochs: int,
        lr: float,
        schedule: str,
        warmup_epochs: float,
        alpha: float = 0.05,
        spent_minutes: float = 0.0,
    ):
        super().__init__()
        self.seconds, self.epochs = minutes * 60.0, epochs
        self.peak, self.schedule, self.warmup_epochs, self.alpha = lr, schedule, warmup_epochs, alpha
        self.offset = spent_minutes * 60.0
        self.start: float | None = None
        self.epochs_done = 0.0
        self._epoch = 0

    @property
    def spent_seconds(self) -> float:
        """Training seconds spent, earlier runs of a resumed run included."""
        return self.offset + (0.0 if self.start is None else time.monotonic() - self.start)

    @property
    def spent_fraction(self) -> float:
        """The share of the budget spent, 0..1: the larger of the time and the epoch shares."""
        return min(max(self.spent_seconds / self.seconds, self.epochs_done / self.epochs), 1.0)

    @property
    def exhausted(self) -> bool:
        return self.spent_seconds >= self.seconds

    def on_train_begin(self, logs=None):
        if self.start is None:  # the budget runs across the phases of one run
            self.start = time.monotonic()

    def rate(self, spent: float, epochs_done: float) -> float:
        """The learning rate after a share `spent` (0..1) of the budget and `epochs_done` epochs."""
        warm = min(1.0, epochs_done / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0
        if self.schedule == "constant":
            return self.peak * warm
        return warm * self.peak * (self.alpha + (1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * spent)))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps") if self.params else None
        self.epochs_done = self._epoch + (batch / steps if steps else 0.0)
        self.model.optimizer.learning_rate.assign(self.rate(self.spent_fraction, self.epochs_done))

    def on_train_batch_end(self, batch, logs=None):
        if self.exhausted and not self.model.stop_training:
            log.info("time limit of %.1f min reached", self.seconds / 60)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[SPENT_KEY] = round(self.spent_seconds / 60.0, 4)


class MosaicClose(keras.callbacks.Callback):
    """With `train.augment.mosaic_close`: the training loader's mosaic is turned off for the last
    `share` of training (of the epochs, or of the time budget when that runs out first), so the
    model ends on whole images as it will see them at test time (Ultralytics' close_mosaic).

    Checked at the start of each epoch: Keras calls the callbacks before it starts that epoch's
    loader workers, which then get the loader as it is. Each epoch logs the mosaic probability
    it trained with (`mosaic_p` in history.csv).
    """

    def __init__(self, loader: Any, share: float, epochs: int, budget: TimeBudgetSchedule | None):
        super().__init__()
        self.loader, self.open_until, self.epochs, self.budget = loader, 1.0 - share, epochs, budget

    def done(self, epoch: int) -> float:
        """The share of training done before `epoch` starts: of the epochs, or of the time budget
        when there is one and more of it is spent."""
        time_share = self.budget.spent_fraction if self.budget is not None else 0.0
        return max(epoch / self.epochs, time_share)

    def on_epoch_begin(self, epoch, logs=None):
        if self.loader.mosaic_p and self.done(epoch) >= self.open_until:
            log.info("mosaic off from epoch %d on (the last %.0f%% of training)", epoch + 1, 100 * (1 - self.open_until))
            self.loader.mosaic_p = 0.0

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[MOSAIC_KEY] = self.loader.mosaic_p


def training_phases(train_cfg: TrainConfig) -> list[tuple[int, int, bool, TrainConfig]]:
    """`(first_epoch, end_epoch, backbone_frozen, phase_config)` for each phase of training.

    With `freeze_backbone_epochs: N` (0 < N < epochs): epochs [0, N) with the backbone
    frozen at `lr`, then [N, epochs) with everything trainable at `finetune_lr` (lr / 10 by
    default). Each phase config holds its own epoch count, so its schedule spans the phase.
    """
    freeze = min(train_cfg.freeze_backbone_epochs, train_cfg.epochs)
    phases = []
    if freeze:
        phases.append((0, freeze, True, train_cfg.model_copy(update={"epochs": freeze})))
    if freeze < train_cfg.epochs:
        lr = (train_cfg.finetune_lr or train_cfg.lr / 10) if freeze else train_cfg.lr
        rest = train_cfg.model_copy(update={"epochs": train_cfg.epochs - freeze, "lr": lr})
        phases.append((freeze, train_cfg.epochs, False, rest))
    return phases


# === Run-folder callbacks ===


class EMAWeights(keras.callbacks.SwapEMAWeights):
    """With `train.ema`: from the end of every epoch to the start of the next the model holds the
    optimizer's moving average of its weights and the optimizer the raw weights (Keras's
    `SwapEMAWeights(swap_on_epoch=True)`), so the callbacks after this one (validation,
    best.keras, last.keras, the gallery) see the averaged weights and training goes on with the
    raw ones. A saved file therefore holds the average as the model's weights (what predict and
    export use) and the raw weights in its optimizer state. After the last epoch of a `fit` both
    hold the average: a following phase starts from it with a fresh average.

    `start_phase` says, before each `fit`, whether the model holds the average at its start:
    a phase resumed part-way from last.keras with its optimizer (swapped back at the first epoch).
    """

    def __init__(self):
        super().__init__(swap_on_epoch=True)

    def start_phase(self, resumed_from_file: bool) -> None:
        """Before a `fit`: `resumed_from_file` when the model and its optimizer come from a saved
        file part-way through this phase; else the optimizer is new and its average starts at
        the model's weights."""
        self._ema_weights_in_model = resumed_from_file

    def _backend_finalize_ema_values(self, optimizer: keras.optimizers.Optimizer) -> None:
        """After the last epoch, the averages take the model's values (Keras's, with copies:
        Keras assigns the weights' own arrays, which a later JAX `predict` donates and deletes,
        the averages with them)."""
        for weights, average in zip(
            optimizer._trainable_variables, optimizer._model_variables_moving_average, strict=True
        ):
            average.assign(keras.ops.convert_to_numpy(weights))


class Checkpoint(keras.callbacks.Callback):
    """Save the model (with its optimizer state) to `path` at the end of every epoch, atomically.

    With `monitor`, only when the epoch's logged value beats `best` (a previous run's best
    score, or None) and every value seen since. Unlike Keras's `ModelCheckpoint`, which writes
    the file in place, a save interrupted by a crash or Ctrl-C leaves the previous file whole.
    """

    def __init__(self, path: Path, monitor: str | None = None, best: float | None = None):
        super().__init__()
        self.path, self.monitor, self.best = Path(path), monitor, best

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None or math.isnan(value) or (self.best is not None and value <= self.best):
                return
            self.best = float(value)
        save_model(self.model, self.path)


class LearningRateLog(keras.callbacks.Callback):
    """Log the learning rate at the end of every epoch as `lr` (history.csv, the curves)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _cell(value: Any) -> Any:
    """A log value as history.csv writes it: numbers as Python floats (shortest exact text)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class GalleryLog(keras.callbacks.Callback):
    """Every `every` epochs and after the last (`epochs`, or the epoch a time limit stops), draw
    `draw(model)` (an RGB uint8 image: the task's gallery of validation predictions) into
    `plots/gallery_epoch<NNN>.png` (NNN: the epoch, counted from 1), and pass it to `images`
    (`(image, step)`: TensorBoard, where the step is Keras's epoch index, as for its scalars)."""

    def __init__(self, draw: Callable[[keras.Model], np.ndarray], every: int, epochs: int, run_dir: Path, images=None):
        super().__init__()
        self.draw, self.every, self.epochs, self.images = draw, every, epochs, images
        self.plots = Path(run_dir) / "plots"

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every and epoch + 1 < self.epochs and not self.model.stop_training:
            return
        image = self.draw(self.model)
        write_image(image, self.plots / f"gallery_epoch{epoch + 1:03d}.png")
        if self.images is not None:
            self.images(image, epoch)


class HistoryLog(keras.callbacks.Callback):
    """history.csv, rewritten atomically at the end of every epoch: one row per epoch, the rows
    already in `run_dir` kept when `append` (a later phase, a resumed run). A run killed at any
    moment leaves a whole file that lists exactly the completed epochs (what resume counts)."""

    def __init__(self, run_dir: Path, append: bool):
        super().__init__()
        self.run_dir = run_dir
        self.rows: list[dict[str, Any]] = list(read_history(run_dir)) if append else []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch, **{key: _cell(v) for key, v in (logs or {}).items()}})
        write_history(self.run_dir, self.rows)


# === Training ===


def _resume_or_build(cfg: Config, task: Task, num_classes: int, unsafe: bool) -> tuple[keras.Model, int]:
    """The model to train and the epoch to start at: `last.keras` and the epochs in
    history.csv when resuming, else a new model at epoch 0. A last.keras trained with another
    `train.ema` is refused: with it, the model's weights are the average and the raw ones are in
    its optimizer."""
    run_dir = cfg.run_dir
    if not cfg.train.resume:
        return task.build_model(cfg, num_classes), 0
    last = run_dir / "last.keras"
    if not last.is_file():
        raise DetsegError("train.resume is set but there is no last.keras to resume from", run_dir)
    initial_epoch = completed_epochs(run_dir)
    log.info("resuming from %s at epoch %d", last, initial_epoch + 1)
    model = load_model(last, task, unsafe=unsafe)
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under loss scaling
    if optimizer is not None and optimizer.use_ema != cfg.train.ema:
        raise DetsegError(
            f"train.ema is {str(cfg.train.ema).lower()} but this last.keras was trained with "
            f"train.ema: {str(optimizer.use_ema).lower()}; resume with the setting it was trained with",
            last,
        )
    return model, initial_epoch


def _callbacks(
    cfg: Config,
    task: Task,
    val_data: Any,
    budget: TimeBudgetSchedule | None,
    ema: EMAWeights | None,
    place: Placement,
) -> list[keras.callbacks.Callback]:
    """Evaluation, then the checkpoints that read its numbers; `best.keras` is replaced only by
    a better score than any logged so far, also on the first epoch after a resume. `ema` comes
    first, so that every later callback sees the averaged weights at the end of an epoch."""
    run_dir = cfg.run_dir

    def validate(model: keras.Model) -> dict[str, float]:
        with place.any_batch(model):  # validation batches need not divide by the devices
            return task.validate(cfg, model, val_data)

    callbacks: list[keras.callbacks.Callback] = [
        LearningRateLog(),
        EvaluateCallback(validate, every=cfg.train.eval_every),
        Checkpoint(
            run_dir / "best.keras",
            monitor=task.monitor,
            best=best_logged(run_dir, task.monitor) if cfg.train.resume else None,
        ),
        Checkpoint(run_dir / "last.keras"),
    ]
    tensorboard = bool(importlib.util.find_spec("tensorflow") and importlib.util.find_spec("tensorboard"))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(run_dir / "logs"))
    if cfg.train.gallery_every:
        images = tensorboard_images(run_dir / "logs" / "gallery") if tensorboard else None
        draw = functools.partial(task.gallery, cfg, data=val_data)
        callbacks.append(GalleryLog(draw, cfg.train.gallery_every, cfg.train.epochs, run_dir, images))
    if budget is not None:  # it sets the learning rate before any batch and logs the minutes
        callbacks.insert(0, budget)
    if ema is not None:
        callbacks.insert(0, ema)
    return callbacks


def _time_budget(cfg: Config) -> TimeBudgetSchedule | None:
    """The clock-driven schedule of a time-limited run, continuing a resumed run's budget."""
    if not cfg.train.time_limit:
        return None
    spent = (last_logged(cfg.run_dir, SPENT_KEY) or 0.0) if cfg.train.resume else 0.0
    return TimeBudgetSchedule(
        cfg.train.time_limit, cfg.train.epochs, cfg.train.lr, cfg.train.schedule, cfg.train.warmup_epochs, spent_minutes=spent
    )


def fit_verbosity() -> int:
    """Keras's `verbose` for `fit`: a live progress bar in a terminal (1), one line per epoch
    when the output is a file or a pipe (2), nothing below INFO logging (0)."""
    if not log.isEnabledFor(logging.INFO):
        return 0
    return 1 if sys.stdout.isatty() else 2


def _fit_phases(
    cfg: Config,
    task: Task,
    model: keras.Model,
    loader: Any,
    initial_epoch: int,
    callbacks: list,
    budget: TimeBudgetSchedule | None,
    ema: EMAWeights | None,
    place: Placement,
) -> None:
    """Fit each training phase from `initial_epoch` on, until the epochs or the time run out,
    compiling and fitting on the devices of `place`."""
    for start, end, frozen, phase_cfg in training_phases(cfg.train):
        if end <= initial_epoch:
            continue
        if budget is not None and budget.exhausted:
            log.info("the time budget of %.1f min is spent", cfg.train.time_limit)
            return
        first = max(start, initial_epoch)
        part_way = cfg.train.resume and start < initial_epoch
        if ema is not None:
            ema.start_phase(resumed_from_file=part_way)
        if not part_way:  # a phase resumed part-way keeps its optimizer
            if cfg.train.freeze_backbone_epochs:
                task.backbone(model).trainable = not frozen
            # Under a time limit the learning rate is set from the clock (TimeBudgetSchedule).
            timed = phase_cfg.model_copy(update={"schedule": "constant", "warmup_epochs": 0})
            with place.building():
                task.compile(model, make_optimizer(timed if budget else phase_cfg, len(loader)))
                # Built here, not in the first traced step: TensorFlow traces a step that creates
                # variables twice, and a second trace of a detector costs seconds.
                model.optimizer.build(model.trainable_variables)
        if budget is not None:
            budget.peak = phase_cfg.lr
        if cfg.train.freeze_backbone_epochs:
            state = "frozen" if frozen else "trainable"
            log.info("epochs %d-%d: backbone %s, lr %g", first + 1, end, state, phase_cfg.lr)
        loader.set_epoch(first)
        with place.fitting():
            history = model.fit(
                loader,
                epochs=end,
                initial_epoch=first,
                shuffle=False,  # the loader shuffles itself, seeded per epoch
                # last: it logs what the callbacks before it added, once last.keras is saved
                callbacks=[*callbacks, HistoryLog(cfg.run_dir, append=first > 0)],
                verbose=fit_verbosity(),
            )
        if len(history.epoch) < end - first:  # stopped by the time limit
            return


def _holds_its_state(model: keras.Model) -> bool:
    """Whether the model's weights and optimizer variables hold values. JAX detaches them from
    the model while a step runs and reattaches its newest state afterwards; interrupted in the
    first step of a `fit` (or the first after a `predict`), it has no state to reattach yet."""
    variables = [*model.weights, *(model.optimizer.variables if model.optimizer else [])]
    # Keras's JAX trainer empties `_value` (`_purge_model_variables`); reading `.value` then
    # fails inside Keras, so the attribute itself is what tells.
    return all(v._value is not None for v in variables)


def _save_interrupted(model: keras.Model, run_dir: Path, resumed: bool, started: float, ema: bool) -> None:
    """On Ctrl-C, save the model as it is to last.keras. A model without its state (JAX, in a
    first step: `_holds_its_state`) has trained nothing since last.keras was written, by this
    run (after `started`) or by the run it resumes, and last.keras is kept. With `ema` too,
    last.keras of the last completed epoch is kept: JAX's `fit`, interrupted, replaces the raw
    weights by their average (TensorFlow's does not), and a resume needs both."""
    last = run_dir / "last.keras"
    if not ema and _holds_its_state(model):
        save_model(model, last)
        done = "saved"
    elif last.is_file() and (resumed or last.stat().st_mtime >= started):
        done = "holds the last completed epoch" if ema else "holds the model as it is"
    else:
        log.warning("interrupted before a model was saved: nothing to resume")
        return
    log.warning(
        "interrupted after %d complete epoch(s): %s %s; continue with --set train.resume=true",
        completed_epochs(run_dir),
        last,
        done,
    )


def train(cfg: Config, *, callbacks: Sequence[keras.callbacks.Callback] = (), unsafe: bool = False) -> Path:
    """Train the model a config describes (any `model.kind`); returns the run folder.

    `callbacks` are added to Keras's `fit` in every phase (e.g. to watch the frozen phase).
    `unsafe` lets a resumed run load a `last.keras` holding Python code (`load_model`).
    Ctrl-C (KeyboardInterrupt) saves the model as it is to `last.keras` (with `train.ema`, keeps
    the last completed epoch's) and is raised again: `train.resume: true` continues from there,
    with the optimizer state.
    """
    started = time.time()
    task = task_for(cfg)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.train.seed)
    set_op_determinism(cfg.train.deterministic)
    set_precision(cfg.train.mixed_precision)
    place = placement(cfg.train.distribution, cfg.train.batch_size)  # set before the model is built
    train_data = task.load_data(cfg, "train")
    log.info(task.describe_data(train_data, "train"))
    # The saved config is explicit (class names, fitted anchors, ...): a model file and its
    # config.yaml are self-sufficient.
    cfg = task.prepare(cfg, train_data)
    val_data = task.load_data(cfg, "val")
    task.check_val_data(cfg, val_data)
    log.info(task.describe_data(val_data, "val"))
    dump_config(cfg, run_dir / "config.yaml")

    with place.building():
        model, initial_epoch = _resume_or_build(cfg, task, len(cfg.data.names), unsafe)
    loader = task.train_loader(cfg, model, train_data)
    if place.replicas > 1:
        loader.drop_remainder(place.replicas)
    budget = _time_budget(cfg)
    ema = EMAWeights() if cfg.train.ema else None
    fit_callbacks = [*_callbacks(cfg, task, val_data, budget, ema, place), *callbacks]
    if cfg.train.augment.mosaic_close:
        fit_callbacks.insert(0, MosaicClose(loader, cfg.train.augment.mosaic_close, cfg.train.epochs, budget))
    try:
        _fit_phases(cfg, task, model, loader, initial_epoch, fit_callbacks, budget, ema, place)
    except KeyboardInterrupt:
        _save_interrupted(model, run_dir, cfg.train.resume, started, cfg.train.ema)
        raise

    plot_training_curves(read_history(run_dir), run_dir / "plots" / "curves.png")
    best = load_model(run_dir / "best.keras", task, unsafe=unsafe)
    print(task.evaluate(cfg, best, val_data, run_dir).text)
    task.after_training(cfg, best, run_dir)
    return run_dir
