"""Sliding-window detection (`model.kind: fcn`): a crop classifier made fully convolutional.

Training is the classifier task's (`ClassifyTask`: the same model, loader, augmentation and
transfer learning) on window crops of any detection dataset: every object as a square
window, plus random background windows that overlap no object (`detseg.data.crops.
window_crops`); the classifier has one more class, "background", last. Validation, evaluation
and prediction convert it with `to_fully_convolutional` and slide it over whole images at
`model.scales` (`SlidingWindowDetector`: one FCN pass per scale, cells above the score
threshold become window boxes, then per-class NMS), scored by the YOLO detector's evaluator
(COCO AP, AP50, VOC AP). `best.keras` (the crop classifier) is chosen by `val_mAP50`: the
fixed, square windows rarely fit a box tightly enough for the stricter COCO AP to rank models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from detseg.config import Config, EvalConfig
from detseg.data import Dataset, load_split, read_image
from detseg.data.crops import Crops, window_crops
from detseg.data.files import write_json
from detseg.errors import DetsegError
from detseg.heads.classifier import ImageClassifier
from detseg.heads.fcn import SlidingWindowDetector
from detseg.metrics import DetectionEvaluator, classification_metrics, format_summary
from detseg.tasks.base import Report, Task
from detseg.tasks.classify import ClassifyTask
from detseg.tasks.detect import coco_results, ground_truth_of
from detseg.tasks.predictors import DetectionPredictor

__all__ = ["FCNTask", "WindowData", "evaluate_sliding_windows"]


@dataclass
class WindowData:
    """A split as the FCN task uses it: the whole images (`dataset`, for detection) and its
    window crops (`crops`, for the classifier; classes + background)."""

    dataset: Dataset
    crops: Crops


def evaluate_sliding_windows(
    detector: SlidingWindowDetector, dataset: Dataset, iou_thr: float
) -> tuple[DetectionEvaluator, list[dict]]:
    """Detect on every image of `dataset` and accumulate the detection metrics (VOC AP at
    `iou_thr`); returns the evaluator and the detections (boxes in original pixels)."""
    detections = [detector([read_image(s.image_path)])[0] for s in dataset.samples]
    evaluator = DetectionEvaluator(dataset.class_names, iou_thr=iou_thr)
    evaluator.update(detections, [ground_truth_of(s) for s in dataset.samples])
    return evaluator, detections


class FCNTask(ClassifyTask):
    """A crop classifier trained as `ClassifyTask` does, used as a sliding-window detector:
    AP50 to choose the best model, boxes on video."""

    kind = "fcn"
    monitor = "val_mAP50"

    def predicted_classes(self, model: ImageClassifier) -> int:
        return int(model.output_shape[-1]) - 1  # the last output is the background

    # === Data ===

    def load_data(self, cfg: Config, split: str) -> WindowData:
        m = cfg.model
        dataset = load_split(cfg.data, split)
        if not len(dataset):
            raise DetsegError(f"the {split} split has no images")
        crops = window_crops(
            dataset,
            cfg.data.crop_padding,
            m.background_per_image,
            [m.input_size / s for s in m.scales],
            max_iou=m.background_iou,
            seed=cfg.train.seed,
        )
        return WindowData(dataset, crops)

    def class_names(self, data: WindowData) -> list[str]:
        return list(data.dataset.class_names)

    def describe_data(self, data: WindowData, split: str) -> str:
        """The images' summary (what was skipped included), then the windows per class."""
        crops = data.crops
        counts = ", ".join(
            f"{count} {name}"
            for name, count in zip(crops.class_names, crops.class_counts(), strict=True)
        )
        return f"{split} split:\n{data.dataset.summary_text()}\nwindows: {len(crops)} ({counts})"

    def check_val_data(self, cfg: Config, data: WindowData) -> None:
        Task.check_val_data(self, cfg, data)

    def gallery_examples(self, data: WindowData, count: int, side: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The whole images and their boxes at their own size: the detector's windows are in
        the image's pixels."""
        return Task.gallery_examples(self, data.dataset, count)

    # === Model and training ===

    def backbone_kwargs(self, cfg: Config) -> dict[str, Any]:
        """The classifier's backbone arguments, plus `model.padding` when "valid" ("same" is
        every builder's default)."""
        kwargs = super().backbone_kwargs(cfg)
        return {**kwargs, "padding": "valid"} if cfg.model.padding == "valid" else kwargs

    def build_model(self, cfg: Config, num_classes: int) -> ImageClassifier:
        """The window classifier: `num_classes` objects + background."""
        return super().build_model(cfg, num_classes + 1)

    def train_loader(
        self, cfg: Config, model: ImageClassifier, train_data: WindowData
    ) -> keras.utils.PyDataset:
        return super().train_loader(cfg, model, train_data.crops)

    def _detector(
        self, cfg: Config, model: ImageClassifier, score_thr: float, iou_thr: float, max_det: int
    ) -> SlidingWindowDetector:
        self.saved_class_names(cfg, model)
        return SlidingWindowDetector(
            model,
            scales=cfg.model.scales,
            score_thr=score_thr,
            iou_thr=iou_thr,
            max_det=max_det,
            background_class=int(model.output_shape[-1]) - 1,
        )

    def _evaluate(
        self, cfg: Config, model: ImageClassifier, data: WindowData, eval_cfg: EvalConfig
    ):
        detector = self._detector(
            cfg, model, eval_cfg.score_thr, eval_cfg.iou_thr, eval_cfg.max_det
        )
        return evaluate_sliding_windows(detector, data.dataset, eval_cfg.voc_iou_thr)

    def validate(
        self, cfg: Config, model: ImageClassifier, val_data: WindowData
    ) -> dict[str, float]:
        """AP50 and AP of the sliding-window detector, and the classifier's window accuracy."""
        coco = self._evaluate(cfg, model, val_data, cfg.eval)[0].result("coco")
        crops = val_data.crops
        probs = model.predict(self._loader(cfg, crops, train=False), verbose=0)
        accuracy = classification_metrics(probs, crops.labels, crops.class_names)["accuracy"]
        return {"val_mAP50": coco["AP50"], "val_mAP": coco["AP"], "val_accuracy": accuracy}

    # === Evaluation, prediction, export ===

    def evaluate(
        self, cfg: Config, model: ImageClassifier, data: WindowData, out_dir: Path
    ) -> Report:
        """COCO and VOC tables of the sliding-window detector: metrics.json (COCO schema),
        metrics_voc.json, detections.json (COCO results) and PR / confusion plots in `out_dir`."""
        evaluator, detections = self._evaluate(cfg, model, data, cfg.eval)
        coco, voc = evaluator.result("coco"), evaluator.result("voc12")
        out = Path(out_dir)
        files = (out / "metrics.json", out / "metrics_voc.json", out / "detections.json")
        for path, content in zip(
            files, (coco, voc, coco_results(data.dataset, detections)), strict=True
        ):
            write_json(content, path, indent=2)
        evaluator.save_plots(out / "plots", "coco")
        text = (
            f"{format_summary(coco)}\n\n{format_summary(voc)}\nmetrics, detections and plots: {out}"
        )
        return Report(coco, text, (*files, out / "plots"))

    def predictor(
        self,
        cfg: Config,
        model: ImageClassifier,
        *,
        score_thr: float | None,
        iou_thr: float | None,
        batch: int,
    ) -> DetectionPredictor:
        post = cfg.predict
        detector = self._detector(
            cfg,
            model,
            post.score_thr if score_thr is None else score_thr,
            post.iou_thr if iou_thr is None else iou_thr,
            post.max_det,
        )
        return DetectionPredictor(detector, self.saved_class_names(cfg, model))

    def serving_model(
        self, cfg: Config, model: ImageClassifier, fmt: str
    ) -> tuple[keras.Model, dict[str, Any]]:
        raise DetsegError(
            f"model.kind fcn is not exported: its detector slides over whole images, not the "
            f"{cfg.model.input_size}-px windows an export takes; predict with the .keras model"
        )

    def exported_predictor(
        self,
        runner,
        metadata: dict[str, Any],
        path: Path,
        *,
        score_thr: float | None,
        iou_thr: float | None,
        batch: int,
    ) -> DetectionPredictor:
        raise DetsegError("model.kind fcn has no exports to run", path)
