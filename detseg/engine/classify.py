"""Classification as a task (`model.kind: classifier`): train, evaluate and predict.

The data are an image folder (`root/<class>/<image>`) or object crops cut from any
detection dataset (`data.crops: true`); see `detseg.data.classification`. Training follows
the transfer-learning recipe: with `train.freeze_backbone_epochs: N` the new head trains on
a frozen backbone for N epochs, then the backbone is unfrozen, the model recompiled with
`train.finetune_lr` (default lr / 10), and training continues to `train.epochs`.

The run folder receives `config.yaml` (with `data.names`), `best.keras` (best validation
accuracy), `last.keras`, `history.csv`, TensorBoard logs, `metrics.json`,
`confusion_matrix.png` and `backbone.weights.h5` (the best model's backbone, which a later
config can start from with `model.weights`).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
from matplotlib.figure import Figure

from detseg.backbones import APPLICATIONS_PREFIX
from detseg.config import Config, TrainConfig, dump_config
from detseg.data import build_augment, letterbox, read_image
from detseg.data.classification import (
    ClassificationLoader,
    check_classes,
    load_classification_split,
)
from detseg.data.crops import Crops
from detseg.engine.predict import class_names_of, load_model
from detseg.engine.sources import ImageFiles, open_source
from detseg.engine.train import TimeLimit, completed_epochs, make_optimizer, set_precision
from detseg.errors import DetsegError
from detseg.heads.classifier import BACKBONE_LAYER, build_classifier, set_backbone_trainable

__all__ = [
    "TOP_K",
    "build_config_classifier",
    "classification_metrics",
    "evaluate_classifier",
    "plot_class_confusion",
    "predict_classifier",
    "train_classifier",
    "training_phases",
]

log = logging.getLogger("detseg")

TOP_K = (1, 2, 3, 5)
"""Top-k accuracies reported (those with k below the number of classes; top-1 always)."""

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
BACKBONE_WEIGHTS_FILE = "backbone.weights.h5"
_PREDICT_BATCH = 16


# === Metrics ===


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, top-k accuracy, per-class accuracy (recall) and confusion matrix.

    `probs` [N, C] class scores, `labels` [N] int in 0..C-1. The confusion matrix has rows
    for the true class and columns for the predicted one; a class without images has
    per-class accuracy None.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    c = len(class_names)
    if probs.ndim != 2 or probs.shape != (len(labels), c):
        raise ValueError(
            f"probs must be [N, {c}] for {len(labels)} labels, got shape {probs.shape}"
        )
    # Stable sort: on ties the lower class index ranks first, as argmax picks it.
    ranked = np.argsort(-probs, axis=1, kind="stable")
    predicted = ranked[:, 0] if len(labels) else labels
    top_k = {
        str(k): float(np.mean((ranked[:, :k] == labels[:, None]).any(axis=1)))
        for k in TOP_K
        if k == 1 or k < c
    }
    matrix = np.bincount(labels * c + predicted, minlength=c * c).reshape(c, c)
    totals = matrix.sum(axis=1)
    return {
        "accuracy": top_k["1"],
        "num_images": len(labels),
        "top_k": top_k,
        "per_class": {
            name: float(matrix[i, i] / totals[i]) if totals[i] else None
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
    }


def plot_class_confusion(matrix: np.ndarray, class_names: list[str], path: str | Path) -> Path:
    """The classification confusion matrix as a PNG: rows true, columns predicted; colour is
    the share of the true class, text the count."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.4 * len(class_names) + 2)
    fig = Figure(figsize=(side, side * 0.85))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 30:
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def format_metrics(metrics: dict) -> str:
    """The printed report: overall and top-k accuracy, then one line per class."""
    overall = [f"accuracy {metrics['accuracy']:.3f}"]
    overall += [f"top-{k} {v:.3f}" for k, v in metrics["top_k"].items() if k != "1"]
    lines = ["  ".join(overall) + f"  ({metrics['num_images']} images)"]
    width = max([len(n) for n in metrics["per_class"]] + [5])
    lines.append(f"{'class':<{width}}  images  accuracy")
    for name, row in zip(metrics["per_class"], metrics["confusion_matrix"], strict=True):
        accuracy = metrics["per_class"][name]
        shown = "-" if accuracy is None else f"{accuracy:.3f}"
        lines.append(f"{name:<{width}}  {sum(row):>6}  {shown:>8}")
    return "\n".join(lines)


# === Model and training ===


def build_config_classifier(cfg: Config, num_classes: int) -> keras.Model:
    """The classifier `cfg.model` describes (backbone, width, weights, top, dropout) for `num_classes`."""
    model_cfg = cfg.model
    side = model_cfg.input_size
    backbone_kwargs = {"width": model_cfg.backbone_width}
    if model_cfg.backbone.startswith(APPLICATIONS_PREFIX) and model_cfg.backbone_width == 1.0:
        backbone_kwargs = {}  # keras.applications models take no width (any other value is an error)
    return build_classifier(
        model_cfg.backbone,
        (side, side, 3),
        num_classes,
        weights=model_cfg.weights,
        dropout=model_cfg.dropout,
        top=model_cfg.top,
        **backbone_kwargs,
    )


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


def _best_logged(history_csv: Path, key: str = "val_accuracy") -> float | None:
    """The best `key` in a run's history.csv, so a resumed run only replaces best.keras with a better model."""
    if not history_csv.is_file():
        return None
    with history_csv.open() as f:
        values = [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    return max(values) if values else None


def _describe(crops: Crops, split: str) -> str:
    counts = ", ".join(
        f"{n} {c}" for n, c in zip(crops.class_names, crops.class_counts(), strict=True)
    )
    problems = crops.summary.problem_lines()
    return f"{split}: {len(crops)} images ({counts})" + "".join(f"\n  {p}" for p in problems)


def train_classifier(cfg: Config, *, callbacks: Sequence[keras.callbacks.Callback] = ()) -> Path:
    """Train the classifier of `cfg` (see the module docstring); returns the run folder.

    `callbacks` are added to Keras's fit in every phase (e.g. to watch the frozen phase).
    """
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.train.seed)
    set_precision(cfg)
    train_set = load_classification_split(cfg.data, "train")
    check_classes(train_set, "train")
    val_set = load_classification_split(cfg.data, "val")
    check_classes(val_set, "val", train_set.class_names)
    log.info("%s\n%s", _describe(train_set, "train"), _describe(val_set, "val"))
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"names": list(train_set.class_names)})}
    )
    dump_config(cfg, run_dir / "config.yaml")

    history_csv, last = run_dir / "history.csv", run_dir / "last.keras"
    initial_epoch = completed_epochs(history_csv) if cfg.train.resume else 0
    if cfg.train.resume:
        if not last.is_file():
            raise DetsegError(
                "train.resume is set but there is no last.keras to resume from", run_dir
            )
        model = load_model(last)
        log.info("resuming from %s at epoch %d", last, initial_epoch)
    else:
        model = build_config_classifier(cfg, train_set.num_classes)
    side, batch = cfg.model.input_size, cfg.train.batch_size
    workers = {"workers": cfg.data.workers, "use_multiprocessing": cfg.data.use_multiprocessing}
    train_loader = ClassificationLoader(
        train_set,
        side,
        batch,
        augment=build_augment(cfg.train.augment),
        shuffle=True,
        seed=cfg.train.seed,
        **workers,
    )
    val_loader = ClassificationLoader(val_set, side, batch, **workers)

    best = keras.callbacks.ModelCheckpoint(
        run_dir / "best.keras", monitor="val_accuracy", mode="max", save_best_only=True
    )
    if cfg.train.resume:
        best.best = _best_logged(history_csv)
    shared = [best, keras.callbacks.ModelCheckpoint(last), *callbacks]
    if importlib.util.find_spec("tensorflow") and importlib.util.find_spec("tensorboard"):
        shared.append(keras.callbacks.TensorBoard(run_dir / "logs"))
    if cfg.train.time_limit:
        shared.append(TimeLimit(cfg.train.time_limit))

    for start, end, frozen, phase_cfg in training_phases(cfg.train):
        if end <= initial_epoch:
            continue
        resumed_inside = cfg.train.resume and start < initial_epoch
        if not resumed_inside:  # a phase resumed part-way keeps its loaded optimizer
            set_backbone_trainable(model, not frozen)
            model.compile(
                optimizer=make_optimizer(phase_cfg, len(train_loader)),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
        first = max(start, initial_epoch)
        log.info(
            "epochs %d-%d: backbone %s, lr %g",
            first + 1,
            end,
            "frozen" if frozen else "trainable",
            phase_cfg.lr,
        )
        train_loader.set_epoch(first)
        history = model.fit(
            train_loader,
            validation_data=val_loader,
            epochs=end,
            initial_epoch=first,
            shuffle=False,  # the loader shuffles itself, seeded per epoch
            callbacks=[*shared, keras.callbacks.CSVLogger(history_csv, append=first > 0)],
            verbose=2 if log.isEnabledFor(logging.INFO) else 0,
        )
        if len(history.epoch) < end - first:  # stopped by the time limit
            break
    best_model = load_model(run_dir / "best.keras")
    # The trained trunk alone, for `model.weights` of a later run (transfer learning).
    best_model.get_layer(BACKBONE_LAYER).save_weights(run_dir / BACKBONE_WEIGHTS_FILE)
    print(_write_report(_score(best_model, val_set, cfg), run_dir))
    return run_dir


# === Evaluation and prediction ===


def _score(model: keras.Model, crops: Crops, cfg: Config) -> dict:
    loader = ClassificationLoader(
        crops,
        cfg.model.input_size,
        cfg.train.batch_size,
        workers=cfg.data.workers,
        use_multiprocessing=cfg.data.use_multiprocessing,
    )
    class_names_of(cfg, int(model.output_shape[-1]))  # the saved names must match the model
    probs = model.predict(loader, verbose=0)
    return classification_metrics(probs, crops.labels, crops.class_names)


def _write_report(metrics: dict, out_dir: Path) -> str:
    """metrics.json and confusion_matrix.png in `out_dir`; returns the printed report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    plot_class_confusion(
        np.array(metrics["confusion_matrix"]), list(metrics["per_class"]), out_dir / CONFUSION_FILE
    )
    return f"{format_metrics(metrics)}\nmetrics and confusion matrix: {out_dir}"


def evaluate_classifier(
    model_path: Path, cfg: Config, split: str = "val", *, print_fn: Callable[[str], None] = print
) -> dict:
    """Accuracy, top-k, per-class accuracy and confusion matrix of a classifier on a split.

    Writes metrics.json and confusion_matrix.png beside the model (val split) or in an
    `eval_<split>` folder, prints the report and returns the metrics.
    """
    crops = load_classification_split(cfg.data, split)
    check_classes(crops, split, cfg.data.names)
    metrics = _score(load_model(Path(model_path)), crops, cfg)
    out_dir = (
        Path(model_path).parent if split == "val" else Path(model_path).parent / f"eval_{split}"
    )
    print_fn(_write_report(metrics, out_dir))
    return metrics


def predict_classifier(
    model_path: Path,
    cfg: Config,
    source: str,
    topk: int = 3,
    *,
    print_fn: Callable[[str], None] = print,
) -> list[dict]:
    """Top-k labels of every image of `source` (an image, a folder or a glob).

    Returns `[{"file", "top": [{"label", "score"}, ...]}]` and prints one line per image.
    Images that do not decode are left out, counted and named in a final line.
    """
    opened = open_source(source)
    opened.close()
    if not isinstance(opened, ImageFiles):
        raise DetsegError(
            f"a classifier predicts on an image, a folder or a glob of images, not a {opened.kind}",
            source,
        )
    model = load_model(Path(model_path))
    names = class_names_of(cfg, int(model.output_shape[-1]))
    k = max(1, min(topk, len(names)))
    results: list[dict] = []
    unreadable: list[str] = []
    pairs = list(zip(opened.paths, opened.names, strict=True))
    for start in range(0, len(pairs), _PREDICT_BATCH):
        images, files = [], []
        for path, name in pairs[start : start + _PREDICT_BATCH]:
            try:
                images.append(letterbox(read_image(path), cfg.model.input_size)[0])
                files.append(name)
            except DetsegError:
                unreadable.append(name)
        if not images:
            continue
        probs = np.asarray(model.predict_on_batch(np.stack(images).astype(np.float32) / 255.0))
        for name, p in zip(files, probs, strict=True):
            top = [
                {"label": names[j], "score": float(p[j])} for j in np.argsort(-p, kind="stable")[:k]
            ]
            results.append({"file": name, "top": top})
            print_fn(f"{name}: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in top))
    if opened.skipped:
        print_fn(f"ignored {opened.skipped} entries that are not images")
    if unreadable:
        print_fn(
            f"skipped {len(unreadable)} unreadable image(s): {', '.join(unreadable[:3])}"
            + (" ..." if len(unreadable) > 3 else "")
        )
    if not results:
        raise DetsegError("none of the images could be read", source)
    return results
