"""Image classification (`model.kind: classifier`) as a Task.

The data are an image folder (`root/<class>/<image>`) or object crops cut from any
detection dataset (`data.crops: true`); see `detseg.data.classification`. `best.keras` is
chosen by `val_accuracy`; the evaluation reports accuracy, top-k, per-class accuracy and the
confusion matrix. After training, the best model's trunk is also saved as
`backbone.weights.h5`, which a later config can start from with `model.weights` (transfer
learning: with `train.freeze_backbone_epochs` the engine trains the new head on the frozen
trunk first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from detseg.backbones import APPLICATIONS_PREFIX
from detseg.config import Config
from detseg.data import build_augment, read_image
from detseg.data.classification import (
    ClassificationLoader,
    check_classes,
    load_classification_split,
)
from detseg.data.crops import Crops, cut_crop
from detseg.data.files import write_json
from detseg.data.images import resize_to_fit
from detseg.heads.classifier import BACKBONE_LAYER, ImageClassifier, build_classifier
from detseg.metrics import classification_metrics, format_classification, plot_class_confusion
from detseg.stream.sinks import draw_text_block
from detseg.tasks.base import Report, Task, refuse_thresholds
from detseg.tasks.predictors import ClassificationPredictor

REPORTS = "a classifier reports its top-k classes"
"""What `detseg predict` gives instead of detections (said when --conf / --iou are passed)."""

__all__ = ["BACKBONE_WEIGHTS_FILE", "ClassifyTask", "ServingClassifier"]

BACKBONE_WEIGHTS_FILE = "backbone.weights.h5"


class ServingClassifier(keras.Model):
    """uint8 letterboxed images [B, S, S, C] -> {"scores": class probabilities [B, K]}."""

    def __init__(self, classifier: keras.Model):
        super().__init__(name=f"{classifier.name}_serving")
        self.classifier = classifier

    def call(self, images):
        return {"scores": self.classifier(images, training=False)}


class ClassifyTask(Task):
    """A backbone + classification top: accuracy to choose the best model, top-k on video."""

    kind = "classifier"
    monitor = "val_accuracy"
    model_class = ImageClassifier

    def predicted_classes(self, model: ImageClassifier) -> int:
        return int(model.output_shape[-1])

    def load_data(self, cfg: Config, split: str) -> Crops:
        crops = load_classification_split(cfg.data, split)
        check_classes(crops, split, None if split == "train" else cfg.data.names)
        return crops

    def describe_data(self, data: Crops, split: str) -> str:
        counts = ", ".join(f"{n} {c}" for n, c in zip(data.class_names, data.class_counts(), strict=True))
        problems = "".join(f"\n  {p}" for p in data.summary.problem_lines())
        return f"{split}: {len(data)} images ({counts}){problems}"

    def check_val_data(self, cfg: Config, data: Crops) -> None:
        """`load_data` already compared the split's classes with the training ones."""

    def backbone_kwargs(self, cfg: Config) -> dict[str, Any]:
        """Builder arguments of the backbone beyond its name, shape and weights."""
        if cfg.model.backbone.startswith(APPLICATIONS_PREFIX) and cfg.model.backbone_width == 1.0:
            return {}  # keras.applications models take no width (any other value is an error)
        return {"width": cfg.model.backbone_width}

    def build_model(self, cfg: Config, num_classes: int) -> ImageClassifier:
        model_cfg = cfg.model
        side = model_cfg.input_size
        return build_classifier(
            model_cfg.backbone,
            (side, side, 3),
            num_classes,
            weights=model_cfg.weights,
            dropout=model_cfg.dropout,
            top=model_cfg.top,
            aux_classifiers=model_cfg.aux_loss_weight is not None,
            aux_loss_weight=model_cfg.aux_loss_weight or 0.0,
            grayscale=model_cfg.grayscale,
            **self.backbone_kwargs(cfg),
        )

    def _loader(self, cfg: Config, crops: Crops, *, train: bool) -> ClassificationLoader:
        return ClassificationLoader(
            crops,
            cfg.model.input_size,
            cfg.train.batch_size,
            augment=build_augment(cfg.train.augment) if train else None,
            shuffle=train,
            seed=cfg.train.seed,
            workers=cfg.data.workers,
            use_multiprocessing=cfg.data.use_multiprocessing,
        )

    def train_loader(self, cfg: Config, model: ImageClassifier, train_data: Crops) -> ClassificationLoader:
        return self._loader(cfg, train_data, train=True)

    def compile(self, model: ImageClassifier, optimizer: keras.optimizers.Optimizer) -> None:
        model.compile(optimizer=optimizer, metrics=["accuracy"])

    def backbone(self, model: ImageClassifier) -> keras.Model:
        return model.get_layer(BACKBONE_LAYER)

    def _scores(self, cfg: Config, model: ImageClassifier, crops: Crops) -> tuple[dict[str, Any], np.ndarray]:
        """The metrics of `model` on `crops` and its probabilities [N, C]."""
        self.saved_class_names(cfg, model)  # the saved names must match the model
        probs = model.predict(self._loader(cfg, crops, train=False), verbose=0)
        return classification_metrics(probs, crops.labels, crops.class_names), probs

    def validate(self, cfg: Config, model: ImageClassifier, val_data: Crops) -> dict[str, float]:
        metrics, probs = self._scores(cfg, model, val_data)
        picked = np.asarray(probs, np.float64)[np.arange(len(val_data.labels)), val_data.labels]
        return {"val_accuracy": metrics["accuracy"], "val_loss": float(-np.log(np.maximum(picked, 1e-7)).mean())}

    def evaluate(self, cfg: Config, model: ImageClassifier, data: Crops, out_dir: Path) -> Report:
        """Accuracy, top-k and per-class accuracy: metrics.json and confusion_matrix.png in `out_dir`."""
        metrics = self._scores(cfg, model, data)[0]
        out = Path(out_dir)
        files = (
            write_json(metrics, out / "metrics.json", indent=2),
            plot_class_confusion(
                np.array(metrics["confusion_matrix"]), list(metrics["per_class"]), out / "confusion_matrix.png"
            ),
        )
        return Report(metrics, f"{format_classification(metrics)}\nmetrics and confusion matrix: {out}", files)

    def gallery_examples(self, data: Crops, count: int, side: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The first `count` crops (resized to fit `side` when given) and each with its true
        class written in its top-left corner."""
        examples = []
        for path, box, label in zip(data.paths[:count], data.boxes[:count], data.labels[:count], strict=True):
            image = cut_crop(read_image(path), box)
            image = resize_to_fit(image, side) if side else image
            examples.append((image, draw_text_block(image.copy(), [data.class_names[int(label)]])))
        return examples

    def after_training(self, cfg: Config, best: ImageClassifier, run_dir: Path) -> None:
        """The trained trunk alone, for `model.weights` of a later run (transfer learning)."""
        best.get_layer(BACKBONE_LAYER).save_weights(run_dir / BACKBONE_WEIGHTS_FILE)

    def predictor(
        self, cfg: Config, model: ImageClassifier, *, score_thr: float | None, iou_thr: float | None, batch: int
    ) -> ClassificationPredictor:
        refuse_thresholds(score_thr, iou_thr, REPORTS)
        names = self.saved_class_names(cfg, model)
        return ClassificationPredictor(model.predict_on_batch, names, cfg.model.input_size)

    def exported_predictor(
        self, runner, metadata: dict[str, Any], path: Path, *, score_thr: float | None, iou_thr: float | None, batch: int
    ) -> ClassificationPredictor:
        refuse_thresholds(score_thr, iou_thr, REPORTS)
        return ClassificationPredictor(
            lambda images: runner(images)["scores"], list(metadata["class_names"]), int(metadata["input_size"])
        )

    def serving_model(self, cfg: Config, model: ImageClassifier, fmt: str) -> tuple[keras.Model, dict[str, Any]]:
        names = self.saved_class_names(cfg, model)
        return ServingClassifier(model), {"outputs": ["scores"], "class_names": names}
