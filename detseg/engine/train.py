"""`detseg train`: build data, model and priors from a config, fit, keep the best model.

The run folder `<out_dir>/<name>/` receives `config.yaml` (resolved, with fitted anchors),
`best.keras` (best validation mAP), `last.keras`, `history.csv`, TensorBoard logs,
`metrics.json` (the evaluator's schema) and plots.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np

from detseg.anchors import Anchors, fit_anchors
from detseg.config import Config, TrainConfig, dump_config
from detseg.data import DetectionLoader, build_augment, letterbox_params, load_split
from detseg.data.sample import Dataset
from detseg.engine.evaluate import evaluate_detector, write_detection_report
from detseg.errors import DetsegError
from detseg.heads import YoloDetector, build_yolo
from detseg.metrics import EvaluateCallback

log = logging.getLogger("detseg")


# === Priors ===


def letterboxed_box_sizes(dataset: Dataset, input_size: int) -> np.ndarray:
    """Box widths and heights `[N, 2]` as the model sees them after letterboxing."""
    sizes = []
    for sample in dataset.samples:
        if len(sample.boxes):
            params = letterbox_params(sample.width, sample.height, input_size)
            wh = sample.boxes[:, 2:] - sample.boxes[:, :2]
            sizes.append(wh * np.array([params.scale_x, params.scale_y], np.float32))
    return np.concatenate(sizes) if sizes else np.zeros((0, 2), np.float32)


def fit_config_anchors(cfg: Config, k: int | None = None, dataset: Dataset | None = None) -> Anchors:
    """k-means priors (k = levels x anchors_per_level by default) on a config's training boxes."""
    yolo = cfg.model.yolo
    k = k or len(yolo.levels) * yolo.anchors_per_level
    dataset = dataset if dataset is not None else load_split(cfg.data, "train")
    return fit_anchors(letterboxed_box_sizes(dataset, cfg.model.input_size), k, seed=cfg.train.seed)


def describe_anchors(anchors: Anchors) -> str:
    """One readable block: the priors and how well they cover the boxes."""
    pairs = ", ".join(f"[{w:.1f}, {h:.1f}]" for w, h in anchors.wh.tolist())
    return (
        f"anchors: [{pairs}]\n"
        f"avg IoU {anchors.avg_iou:.3f}, best-possible recall {anchors.recall:.3f} "
        f"on {anchors.n_boxes} boxes ({anchors.n_skipped} degenerate skipped)"
    )


def anchor_list(anchors: Anchors) -> list[list[float]]:
    """Priors as the `[[w, h], ...]` list a config holds (2 decimals)."""
    return [[round(float(w), 2), round(float(h), 2)] for w, h in anchors.wh]


def resolve_anchors(cfg: Config, dataset: Dataset) -> Config:
    """Replace `model.yolo.anchors: auto` by fitted priors, so the saved config is explicit."""
    if cfg.model.yolo.anchors != "auto":
        return cfg
    anchors = fit_config_anchors(cfg, dataset=dataset)
    log.info(describe_anchors(anchors))
    yolo = cfg.model.yolo.model_copy(update={"anchors": anchor_list(anchors)})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"yolo": yolo})})


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
    if train_cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=train_cfg.momentum, nesterov=True, weight_decay=train_cfg.weight_decay)
    if train_cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.AdamW(lr, weight_decay=train_cfg.weight_decay)


class TimeLimit(keras.callbacks.Callback):
    """Stop after the epoch that would end past `minutes` (the best checkpoint is kept)."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60.0
        self.start = time.monotonic()
        self.epoch_start = self.start

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        if now + (now - self.epoch_start) > self.start + self.seconds:
            log.info("time limit of %.1f min reached after epoch %d", self.seconds / 60, epoch + 1)
            self.model.stop_training = True


class TimeBudgetSchedule(keras.callbacks.Callback):
    """With `train.time_limit`, the learning-rate schedule spans the time budget, not the epochs.

    A run that stops on time otherwise ends at a high, never-annealed learning rate. Here the
    fraction of the budget spent sets the rate at every batch: linear warm-up over the first
    `warmup` fraction, then cosine (or constant) down to `alpha * lr`; when the time is up the
    current epoch ends early and is still evaluated and checkpointed.
    """

    def __init__(self, minutes: float, lr: float, schedule: str, warmup: float, alpha: float = 0.05):
        super().__init__()
        self.seconds = minutes * 60.0
        self.lr, self.schedule, self.warmup, self.alpha = lr, schedule, warmup, alpha
        self.start = time.monotonic()

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def rate(self, spent: float) -> float:
        """The learning rate after a fraction `spent` (0..1) of the budget."""
        if spent < self.warmup:
            return self.lr * spent / self.warmup
        if self.schedule == "constant":
            return self.lr
        decay = min(1.0, (spent - self.warmup) / max(1e-9, 1.0 - self.warmup))
        return self.lr * (self.alpha + (1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * decay)))

    def on_train_batch_begin(self, batch, logs=None):
        spent = (time.monotonic() - self.start) / self.seconds
        self.model.optimizer.learning_rate.assign(self.rate(min(spent, 1.0)))

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self.start >= self.seconds and not self.model.stop_training:
            log.info("time limit of %.1f min reached", self.seconds / 60)
            self.model.stop_training = True


def completed_epochs(history_csv: Path) -> int:
    """Epochs already logged in a run's history.csv (0 when absent)."""
    if not history_csv.is_file():
        return 0
    with history_csv.open() as f:
        return sum(1 for _ in csv.DictReader(f))


# === Training ===


def _callbacks(cfg: Config, run_dir: Path, evaluate_fn, resume: bool) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [
        EvaluateCallback(evaluate_fn, every=cfg.train.eval_every),
        keras.callbacks.ModelCheckpoint(run_dir / "best.keras", monitor="val_mAP", mode="max", save_best_only=True),
        keras.callbacks.ModelCheckpoint(run_dir / "last.keras"),
        keras.callbacks.CSVLogger(run_dir / "history.csv", append=resume),
    ]
    if importlib.util.find_spec("tensorflow") and importlib.util.find_spec("tensorboard"):
        callbacks.append(keras.callbacks.TensorBoard(run_dir / "logs"))
    if cfg.train.time_limit:  # the schedule follows the clock; it goes first, before any batch
        warmup = cfg.train.warmup_epochs / cfg.train.epochs
        callbacks.insert(0, TimeBudgetSchedule(cfg.train.time_limit, cfg.train.lr, cfg.train.schedule, warmup))
    return callbacks


def set_precision(cfg: Config) -> None:
    """Mixed precision when the config asks for it: float16 on a GPU, bfloat16 on a CPU."""
    if cfg.train.mixed_precision:
        on_gpu = any(d.startswith("gpu") for d in keras.distribution.list_devices())
        keras.mixed_precision.set_global_policy("mixed_float16" if on_gpu else "mixed_bfloat16")


def train_detector(cfg: Config) -> Path:
    """Train the YOLOv3-style detector of `cfg`; returns the run folder."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.train.seed)
    set_precision(cfg)
    train_ds = load_split(cfg.data, "train")
    val_ds = load_split(cfg.data, "val")
    log.info("train split:\n%s", train_ds.summary_text())
    cfg = resolve_anchors(cfg, train_ds)
    # The saved config names the classes, so a model file and its config.yaml are self-sufficient.
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"names": list(train_ds.class_names)})})
    dump_config(cfg, run_dir / "config.yaml")

    last = run_dir / "last.keras"
    initial_epoch = completed_epochs(run_dir / "history.csv") if cfg.train.resume else 0
    if cfg.train.resume:
        if not last.is_file():
            raise DetsegError("train.resume is set but there is no last.keras to resume from", run_dir)
        model: YoloDetector = keras.saving.load_model(last)
        log.info("resuming from %s at epoch %d", last, initial_epoch)
    else:
        model = build_yolo(cfg.model, len(train_ds.class_names), cfg.model.yolo.anchors, cfg.eval)
    encoder = model.make_target_encoder(cfg.model.yolo.assign_thresh)
    loader = DetectionLoader(
        train_ds,
        cfg.model.input_size,
        cfg.train.batch_size,
        augment=build_augment(cfg.train.augment),
        encoder=encoder,
        shuffle=True,
        seed=cfg.train.seed,
        workers=cfg.data.workers,
        use_multiprocessing=cfg.data.use_multiprocessing,
        mosaic_p=cfg.train.augment.mosaic_p,
    )
    if cfg.train.resume:
        loader.set_epoch(initial_epoch)
    else:
        # Under a time limit the learning rate is set from the clock (TimeBudgetSchedule).
        timed = cfg.train.model_copy(update={"schedule": "constant", "warmup_epochs": 0})
        model.compile(optimizer=make_optimizer(timed if cfg.train.time_limit else cfg.train, len(loader)))

    def evaluate_fn(current: keras.Model) -> dict[str, float]:
        result = evaluate_detector(current, val_ds, cfg.eval, batch_size=cfg.train.batch_size)[0].result("coco")
        return {"val_mAP": result["AP"], "val_mAP50": result["AP50"]}

    model.fit(
        loader,
        epochs=cfg.train.epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # the loader shuffles itself, seeded per epoch
        callbacks=_callbacks(cfg, run_dir, evaluate_fn, cfg.train.resume),
        verbose=2 if log.isEnabledFor(logging.INFO) else 0,
    )
    best = keras.saving.load_model(run_dir / "best.keras")
    evaluator, detections = evaluate_detector(best, val_ds, cfg.eval, batch_size=cfg.train.batch_size)
    print(write_detection_report(evaluator, val_ds, detections, run_dir))
    return run_dir


def train(cfg: Config) -> Path:
    """Train the model a config describes; returns the run folder."""
    if cfg.model.kind == "classifier":
        from detseg.engine.classify import train_classifier

        return train_classifier(cfg)
    return train_detector(cfg)
