"""Object detection (`model.kind: yolov3`): the YOLOv3-style anchor detector as a Task.

Data are a detection `Dataset` (any annotation format, or the shapes set); `prepare` fits
the k-means priors when `model.yolo.anchors: auto`, so the saved config is explicit; the
training loader augments (mosaic included) and encodes targets with the model's own
`make_target_encoder()`; validation and evaluation use the COCO evaluator (pycocotools'
numbers) and also report VOC AP; `best.keras` is chosen by `val_mAP` (COCO AP@[.5:.95]).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from detseg.anchors import Anchors, fit_anchors
from detseg.config import Config, EvalConfig
from detseg.data import (
    Dataset,
    Sample,
    letterbox,
    letterbox_params,
    load_split,
    read_image,
    training_loader,
    unletterbox_boxes,
)
from detseg.data.coco import coco_image_ids
from detseg.data.files import write_json
from detseg.errors import DetsegError
from detseg.heads import Detector, YoloDetector, build_yolo
from detseg.metrics import DetectionEvaluator, format_summary
from detseg.tasks.base import Report, Task
from detseg.tasks.predictors import DetectionPredictor

__all__ = [
    "DetectTask",
    "ExportedDetector",
    "anchor_list",
    "coco_results",
    "describe_anchors",
    "evaluate_detector",
    "fit_config_anchors",
    "ground_truth_of",
]

log = logging.getLogger("detseg")

OUTPUT_NAMES = ("boxes", "scores", "labels", "num")
"""Outputs of an exported detector: padded final detections in letterboxed input pixels."""


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
    if cfg.model.kind != "yolov3":
        raise DetsegError(f"anchors are fitted for model.kind yolov3, not {cfg.model.kind!r}")
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


# === Evaluation ===


def ground_truth_of(sample: Sample) -> dict:
    """A sample's annotations in the evaluator's per-image form (crowd, area, difficult kept)."""
    truth = {"boxes": sample.boxes, "labels": sample.labels}
    for key in ("iscrowd", "area", "difficult"):
        if getattr(sample, key) is not None:
            truth[key] = getattr(sample, key)
    return truth


def evaluate_detector(
    model: keras.Model, dataset: Dataset, eval_cfg: EvalConfig, batch_size: int = 16
) -> tuple[DetectionEvaluator, list[dict]]:
    """Detect on every image of `dataset` with the evaluation post-processing and accumulate
    the metrics; returns the evaluator and the detections (boxes in original pixels)."""
    detector = Detector(
        model, score_thr=eval_cfg.score_thr, iou_thr=eval_cfg.iou_thr, max_det=eval_cfg.max_det, batch_size=batch_size
    )
    detections: list[dict] = []
    for start in range(0, len(dataset.samples), batch_size):
        chunk = dataset.samples[start : start + batch_size]
        detections += detector([read_image(s.image_path) for s in chunk])
    evaluator = DetectionEvaluator(dataset.class_names, iou_thr=eval_cfg.voc_iou_thr)
    evaluator.update(detections, [ground_truth_of(s) for s in dataset.samples])
    return evaluator, detections


def coco_results(dataset: Dataset, detections: list[dict]) -> list[dict]:
    """Detections in COCO results format, with the image and category ids `write_coco` gives
    the dataset (so `detseg convert --to coco` of the split scores them with `--gt/--dt`)."""
    category_ids = dataset.category_ids or list(range(1, len(dataset.class_names) + 1))
    results = []
    for image_id, found in zip(coco_image_ids(dataset), detections, strict=True):
        for (x1, y1, x2, y2), score, label in zip(found["boxes"], found["scores"], found["labels"], strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_ids[int(label)]),
                    "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                    "score": round(float(score), 5),
                }
            )
    return results


# === Exported detectors ===


class ExportedDetector:
    """An exported detector behind the `Detector` contract: RGB uint8 images of any size in,
    per image {"boxes" [n, 4] xyxy original pixels, "scores" [n], "labels" [n] int32} out.

    `runner` maps a letterboxed uint8 batch [B, S, S, 3] to the export's padded outputs
    ("boxes", "scores", "labels", "num"); the NMS thresholds are part of its graph, so
    `score_thr` may raise the baked score threshold (detections at or below it are dropped on
    the host) but not lower it, and `iou_thr` must equal the baked one (None: as exported).
    """

    def __init__(
        self,
        runner,
        metadata: dict[str, Any],
        path: Path,
        score_thr: float | None = None,
        iou_thr: float | None = None,
        batch_size: int = 16,
    ):
        baked_score, baked_iou = float(metadata["score_thr"]), float(metadata["iou_thr"])
        if score_thr is not None and score_thr < baked_score:
            raise DetsegError(
                f"this export keeps scores above {baked_score}; {score_thr} needs a new export "
                f"from a config with predict.score_thr <= {score_thr}",
                path,
            )
        if iou_thr is not None and iou_thr != baked_iou:
            raise DetsegError(
                f"this export's NMS IoU threshold is fixed at {baked_iou}; {iou_thr} needs a new export",
                path,
            )
        if batch_size < 1:
            raise DetsegError(f"batch_size must be >= 1, got {batch_size}")
        self.runner = runner
        self.score_thr = baked_score if score_thr is None else float(score_thr)
        self.input_size = int(metadata["input_size"])
        self.batch_size = batch_size

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        results = []
        for start in range(0, len(images), self.batch_size):
            boxed = [letterbox(image, self.input_size) for image in images[start : start + self.batch_size]]
            out = self.runner(np.stack([image for image, _ in boxed]))
            for i, (_, params) in enumerate(boxed):
                n = int(out["num"][i])
                keep = out["scores"][i, :n] > self.score_thr
                results.append(
                    {
                        "boxes": unletterbox_boxes(out["boxes"][i, :n][keep], params),
                        "scores": out["scores"][i, :n][keep].astype(np.float32),
                        "labels": out["labels"][i, :n][keep].astype(np.int32),
                    }
                )
        return results


# === The task ===


class DetectTask(Task):
    """The YOLOv3-style detector: COCO mAP to choose the best model, boxes on video."""

    kind = "yolov3"
    monitor = "val_mAP"
    runs_on_onnxruntime = True
    model_class = YoloDetector

    def load_data(self, cfg: Config, split: str) -> Dataset:
        return load_split(cfg.data, split)

    def prepare(self, cfg: Config, train_data: Dataset) -> Config:
        """Record the class names and replace `anchors: auto` by priors fitted on the training boxes."""
        cfg = super().prepare(cfg, train_data)
        if cfg.model.yolo.anchors != "auto":
            return cfg
        anchors = fit_config_anchors(cfg, dataset=train_data)
        log.info(describe_anchors(anchors))
        yolo = cfg.model.yolo.model_copy(update={"anchors": anchor_list(anchors)})
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"yolo": yolo})})

    def build_model(self, cfg: Config, num_classes: int) -> YoloDetector:
        return build_yolo(cfg.model, num_classes, cfg.model.yolo.anchors, cfg.eval)

    def train_loader(self, cfg: Config, model: YoloDetector, train_data: Dataset) -> keras.utils.PyDataset:
        return training_loader(cfg, train_data, model.make_target_encoder())

    def validate(self, cfg: Config, model: YoloDetector, val_data: Dataset) -> dict[str, float]:
        result = evaluate_detector(model, val_data, cfg.eval, batch_size=cfg.train.batch_size)[0].result("coco")
        return {"val_mAP": result["AP"], "val_mAP50": result["AP50"]}

    def evaluate(self, cfg: Config, model: YoloDetector, data: Dataset, out_dir: Path) -> Report:
        """COCO and VOC tables: metrics.json (COCO schema), metrics_voc.json, detections.json
        (COCO results) and PR / confusion plots in `out_dir`."""
        evaluator, detections = evaluate_detector(model, data, cfg.eval, batch_size=cfg.train.batch_size)
        coco, voc = evaluator.result("coco"), evaluator.result("voc12")
        out = Path(out_dir)
        files = (out / "metrics.json", out / "metrics_voc.json", out / "detections.json")
        for path, content in zip(files, (coco, voc, coco_results(data, detections)), strict=True):
            write_json(content, path, indent=2)
        evaluator.save_plots(out / "plots", "coco")
        text = f"{format_summary(coco)}\n\n{format_summary(voc)}\nmetrics, detections and plots: {out}"
        return Report(coco, text, (*files, out / "plots"))

    def predictor(
        self, cfg: Config, model: YoloDetector, *, score_thr: float | None, iou_thr: float | None, batch: int
    ) -> DetectionPredictor:
        detector = Detector(
            model,
            score_thr=cfg.predict.score_thr if score_thr is None else score_thr,
            iou_thr=cfg.predict.iou_thr if iou_thr is None else iou_thr,
            max_det=cfg.predict.max_det,
            agnostic=cfg.predict.agnostic_nms,
            batch_size=max(1, batch),
        )
        return DetectionPredictor(detector, self.saved_class_names(cfg, model))

    def exported_predictor(
        self, runner, metadata: dict[str, Any], path: Path, *, score_thr: float | None, iou_thr: float | None, batch: int
    ) -> DetectionPredictor:
        detector = ExportedDetector(runner, metadata, path, score_thr=score_thr, iou_thr=iou_thr, batch_size=batch)
        return DetectionPredictor(detector, list(metadata["class_names"]))

    def serving_model(self, cfg: Config, model: YoloDetector, fmt: str) -> tuple[keras.Model, dict[str, Any]]:
        """Decode + NMS inside the graph with the predict thresholds (see `detect_serving`)."""
        from detseg.tasks.detect_serving import ServingDetector

        post = cfg.predict
        thresholds = {
            "score_thr": post.score_thr,
            "iou_thr": post.iou_thr,
            "max_det": post.max_det,
            "agnostic": post.agnostic_nms,
        }
        serving = ServingDetector(model, thresholds, per_image=fmt == "tflite")
        metadata = {
            "outputs": list(OUTPUT_NAMES),
            "class_names": self.saved_class_names(cfg, model),
            "score_thr": post.score_thr,
            "iou_thr": post.iou_thr,
            "max_det": post.max_det,
            "agnostic_nms": post.agnostic_nms,
        }
        return serving, metadata
