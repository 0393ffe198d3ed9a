"""Classification + localization (`model.kind: localize`): one class and one box per image.

Data are any detection dataset reduced to one object per image (`model.objects`: each
image's largest box, or only the images with exactly one object; the images left out are
counted and reported; see `detseg.data.single_object`). Training batches letterbox the image
and its box together, with the configured augmentation (never one that loses the object).

`best.keras` is chosen by `val_mean_iou`, the mean IoU of the predicted box with the true
one: it grades every epoch (the correct-localization rate, right class and IoU >= 0.5, stays
at 0 for the first epochs and moves in steps of 1/N on a small split, so ties would keep an
early model); accuracy and correct localization are logged beside it. The evaluation scores
boxes mapped back to each image's own pixels and reports accuracy, mean IoU and correct
localization, overall and per true class, the images left out, and the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from detseg.backbones import get_backbone
from detseg.config import Config
from detseg.data import (
    Dataset,
    build_augment,
    letterbox,
    letterbox_params,
    load_split,
    unletterbox_boxes,
)
from detseg.data.files import write_json
from detseg.data.single_object import (
    NO_OBJECT,
    SEVERAL_OBJECTS,
    one_object_per_image,
    single_object_loader,
)
from detseg.errors import DetsegError
from detseg.heads.localization import CORRECT_IOU, Localizer, box_iou_single, decode_box
from detseg.metrics import plot_class_confusion
from detseg.tasks.base import Report, Task, refuse_thresholds
from detseg.tasks.predictors import DetectionPredictor

__all__ = [
    "LocalizationPredictor",
    "LocalizeTask",
    "ServingLocalizer",
    "format_localization",
    "localization_metrics",
]

OUTPUT_NAMES = ("labels", "scores", "boxes")
"""Outputs of an exported localizer: the class [B] int32, its probability [B] and the box
[B, 4] xyxy in letterboxed input pixels."""

REPORTS = "a localizer reports one class and box per image"
"""What `detseg predict` gives instead of detections (said when --conf / --iou are passed)."""


# === Metrics ===


def localization_metrics(
    true_labels: np.ndarray, pred_labels: np.ndarray, iou: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, mean IoU and correct-localization rate (right class and IoU >= CORRECT_IOU),
    overall and per true class (None for a class without images), and the confusion matrix
    (rows true, columns predicted). Inputs are aligned `[N]` arrays."""
    true_labels = np.asarray(true_labels, np.int64)
    pred_labels = np.asarray(pred_labels, np.int64)
    iou = np.asarray(iou, np.float64)
    hit = pred_labels == true_labels
    correct = hit & (iou >= CORRECT_IOU)
    c = len(class_names)
    matrix = np.bincount(true_labels * c + pred_labels, minlength=c * c).reshape(c, c)

    def rates(rows: np.ndarray) -> dict[str, float | None]:
        if not rows.any():
            return {"accuracy": None, "mean_iou": None, "correct_localization": None}
        return {
            "accuracy": float(hit[rows].mean()),
            "mean_iou": float(iou[rows].mean()),
            "correct_localization": float(correct[rows].mean()),
        }

    per_class = {
        name: {"images": int((true_labels == k).sum()), **rates(true_labels == k)}
        for k, name in enumerate(class_names)
    }
    return {
        **rates(np.ones(len(true_labels), bool)),
        "correct_iou": CORRECT_IOU,
        "num_images": len(true_labels),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def format_localization(metrics: dict[str, Any]) -> str:
    """The printed report: the three rates and the images left out, then one line per class."""
    left_out = metrics.get("images_left_out") or {}
    skipped = "".join(f"; {n} left out: {reason}" for reason, n in left_out.items() if n)
    lines = [
        f"accuracy {metrics['accuracy']:.3f}  mean IoU {metrics['mean_iou']:.3f}  correct localization "
        f"(class and IoU >= {metrics['correct_iou']}) {metrics['correct_localization']:.3f}  "
        f"({metrics['num_images']} images{skipped})"
    ]
    width = max([len(n) for n in metrics["per_class"]] + [5])
    lines.append(f"{'class':<{width}}  images  accuracy  mean IoU  correct")
    for name, row in metrics["per_class"].items():
        shown = [
            "-" if row[key] is None else f"{row[key]:.3f}"
            for key in ("accuracy", "mean_iou", "correct_localization")
        ]
        lines.append(
            f"{name:<{width}}  {row['images']:>6}  {shown[0]:>8}  {shown[1]:>8}  {shown[2]:>7}"
        )
    return "\n".join(lines)


def _pixel_outputs(outputs: dict[str, Any], input_size: int) -> dict[str, np.ndarray]:
    """A Localizer's `predict` outputs with the box as xyxy letterboxed pixels (as exported)."""
    return {
        "labels": np.asarray(outputs["labels"], np.int32),
        "scores": np.asarray(outputs["scores"], np.float32),
        "boxes": decode_box(np.asarray(outputs["boxes"]), input_size, input_size),
    }


# === Prediction and export ===


class LocalizationPredictor(DetectionPredictor):
    """A localizer as a stream `Predictor`: one box per frame, drawn, recorded and described
    as a detection (`DetectionPredictor`), in the frame's own pixels.

    `model_fn` takes a uint8 batch [B, S, S, 3] (frames letterboxed to `input_size`, as an
    export takes them) and returns {"labels" [B] int, "scores" [B], "boxes" [B, 4] xyxy
    letterboxed pixels}.
    """

    def __init__(
        self,
        model_fn: Callable[[np.ndarray], dict[str, np.ndarray]],
        class_names: Sequence[str],
        input_size: int,
    ):
        super().__init__(self._localize, class_names)
        self.model_fn = model_fn
        self.input_size = int(input_size)

    def _localize(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        boxed = [letterbox(image, self.input_size) for image in images]
        out = self.model_fn(np.stack([image for image, _ in boxed]))
        return [
            {
                "boxes": unletterbox_boxes(np.asarray(out["boxes"])[i : i + 1], params),
                "scores": np.asarray(out["scores"])[i : i + 1],
                "labels": np.asarray(out["labels"])[i : i + 1],
            }
            for i, (_, params) in enumerate(boxed)
        ]

    def describe(self, result: dict[str, np.ndarray]) -> str:
        """The class, its probability and the box: "circle 0.973 at [12, 30, 58, 77]"."""
        name = self.class_names[int(result["labels"][0])]
        corners = ", ".join(f"{v:.0f}" for v in result["boxes"][0])
        return f"{name} {float(result['scores'][0]):.3f} at [{corners}]"


class ServingLocalizer(keras.Model):
    """uint8 letterboxed images [B, S, S, C] -> {"labels" int32 [B], "scores" [B], "boxes"
    [B, 4] xyxy letterboxed pixels}.

    The class is the top-1 probability (`top_k`, which keeps the lower index on ties as
    argmax does): Keras's TensorFlow argmax handles -0.0 with a Bitcast op that ONNX lacks.
    """

    def __init__(self, localizer: Localizer):
        super().__init__(name=f"{localizer.name}_serving")
        self.localizer = localizer
        self.input_size = int(localizer.input_shape[1])

    def call(self, images):
        out = self.localizer(images, training=False)
        scores, labels = ops.top_k(out["class"], 1)
        boxes = keras.utils.bounding_boxes.convert_format(
            out["box"] * self.input_size, "center_xywh", "xyxy"
        )
        return {"labels": ops.cast(labels[:, 0], "int32"), "scores": scores[:, 0], "boxes": boxes}


# === The task ===


class LocalizeTask(Task):
    """Classification + localization of one object per image: mean IoU to choose the best
    model, one captioned box per frame on video."""

    kind = "localize"
    monitor = "val_mean_iou"
    model_class = Localizer

    def load_data(self, cfg: Config, split: str) -> Dataset:
        dataset = one_object_per_image(load_split(cfg.data, split), cfg.model.objects)
        if not len(dataset):
            wanted = "exactly one object" if cfg.model.objects == "single" else "an object"
            raise DetsegError(
                f"no image of the {split} split has {wanted} (model.objects: {cfg.model.objects})"
            )
        return dataset

    def build_model(self, cfg: Config, num_classes: int) -> Localizer:
        m, side = cfg.model, cfg.model.input_size
        # keras.applications backbones take no width: pass it only when it is set.
        width = {"width": m.backbone_width} if m.backbone_width != 1.0 else {}
        return Localizer(
            get_backbone(m.backbone, (side, side, 3), weights=m.weights, name="backbone", **width),
            num_classes,
            class_weight=m.class_weight,
            box_weight=m.box_weight,
            box_loss=m.box_loss,
            dropout=m.dropout,
        )

    def train_loader(
        self, cfg: Config, model: Localizer, train_data: Dataset
    ) -> keras.utils.PyDataset:
        return single_object_loader(
            train_data,
            cfg.model.input_size,
            cfg.train.batch_size,
            augment=build_augment(cfg.train.augment),
            shuffle=True,
            seed=cfg.train.seed,
            workers=cfg.data.workers,
            use_multiprocessing=cfg.data.use_multiprocessing,
        )

    def _scores(self, cfg: Config, model: Localizer, data: Dataset) -> dict[str, Any]:
        """Localization metrics of `model` on `data`, its boxes mapped back to each image's pixels."""
        names = self.saved_class_names(cfg, model)
        side = cfg.model.input_size
        loader = single_object_loader(
            data,
            side,
            cfg.train.batch_size,
            workers=cfg.data.workers,
            use_multiprocessing=cfg.data.use_multiprocessing,
        )
        out = _pixel_outputs(model.predict(loader, verbose=0), side)
        boxes = np.concatenate(
            [
                unletterbox_boxes(box[None], letterbox_params(s.width, s.height, side))
                for box, s in zip(out["boxes"], data.samples, strict=True)
            ]
        )
        truth = np.concatenate([s.boxes for s in data.samples])
        labels = np.concatenate([s.labels for s in data.samples])
        metrics = localization_metrics(labels, out["labels"], box_iou_single(boxes, truth), names)
        metrics["images_left_out"] = {
            r: int(data.summary.skipped[r]) for r in (NO_OBJECT, SEVERAL_OBJECTS)
        }
        return metrics

    def validate(self, cfg: Config, model: Localizer, val_data: Dataset) -> dict[str, float]:
        metrics = self._scores(cfg, model, val_data)
        return {
            f"val_{key}": metrics[key] for key in ("mean_iou", "accuracy", "correct_localization")
        }

    def evaluate(self, cfg: Config, model: Localizer, data: Dataset, out_dir: Path) -> Report:
        """metrics.json (accuracy, mean IoU, correct localization, per class, images left out,
        confusion matrix) and confusion_matrix.png in `out_dir`."""
        metrics = self._scores(cfg, model, data)
        out = Path(out_dir)
        files = (
            write_json(metrics, out / "metrics.json", indent=2),
            plot_class_confusion(
                np.array(metrics["confusion_matrix"]),
                list(metrics["per_class"]),
                out / "confusion_matrix.png",
            ),
        )
        return Report(
            metrics, f"{format_localization(metrics)}\nmetrics and confusion matrix: {out}", files
        )

    def predictor(
        self,
        cfg: Config,
        model: Localizer,
        *,
        score_thr: float | None,
        iou_thr: float | None,
        batch: int,
    ) -> LocalizationPredictor:
        refuse_thresholds(score_thr, iou_thr, REPORTS)
        side = cfg.model.input_size

        def run(images: np.ndarray) -> dict[str, np.ndarray]:
            return _pixel_outputs(model.predict_on_batch(images), side)

        return LocalizationPredictor(run, self.saved_class_names(cfg, model), side)

    def serving_model(
        self, cfg: Config, model: Localizer, fmt: str
    ) -> tuple[keras.Model, dict[str, Any]]:
        names = self.saved_class_names(cfg, model)
        return ServingLocalizer(model), {"outputs": list(OUTPUT_NAMES), "class_names": names}

    def exported_predictor(
        self,
        runner,
        metadata: dict[str, Any],
        path: Path,
        *,
        score_thr: float | None,
        iou_thr: float | None,
        batch: int,
    ) -> LocalizationPredictor:
        refuse_thresholds(score_thr, iou_thr, REPORTS, path)
        return LocalizationPredictor(
            runner, list(metadata["class_names"]), int(metadata["input_size"])
        )
