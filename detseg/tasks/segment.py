"""Semantic segmentation (`model.kind: unet`): the U-Net segmenter as a Task.

Data are any dataset with semantic masks: `format: masks` (image + mask PNG pairs, e.g.
`../shared/data/membrane`), the shapes set (background + one class per shape), or COCO
instance polygons / RLE rasterised to semantic masks ("background" + the COCO classes). The
class names are the mask classes. Training batches letterbox image and mask together, with the same
geometric augmentation on both (nearest-neighbour for the mask, IGNORE_INDEX where the
padding has no label). `best.keras` is chosen by `val_mIoU`, measured, as the evaluation is,
on the class maps mapped back to each image's own pixels. The evaluation reports mIoU,
per-class IoU and Dice, pixel accuracy, a confusion matrix PNG and a gallery of image | truth
| prediction overlays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np

from detseg.config import Config
from detseg.data import (
    IGNORE_INDEX,
    Dataset,
    SemanticMaskEncoder,
    load_split,
    read_image,
    read_semantic_mask,
    training_loader,
    write_image,
)
from detseg.data.files import write_json
from detseg.data.semantic import BACKGROUND, with_semantic_masks
from detseg.errors import DetsegError
from detseg.heads.unet import UNetSegmenter, build_unet
from detseg.heads.unet_infer import Segmenter
from detseg.metrics import SegmentationMetrics, plot_class_confusion
from detseg.tasks.base import Report, Task, refuse_thresholds
from detseg.tasks.predictors import SegmentationPredictor
from detseg.viz import draw_semantic, tile_images, untinted_labels

INSTANCE_FORMATS = ("coco",)
"""Formats whose objects carry polygons or RLE, rasterised to semantic masks (`detseg.data.semantic`)."""
REPORTS = "a segmenter labels every pixel"
"""What `detseg predict` gives instead of detections (said when --conf / --iou are passed)."""

__all__ = ["SegmentTask", "ServingSegmenter", "format_segmentation", "score_segmenter"]

GALLERY_IMAGES = 6
"""Validation images shown in the evaluation's gallery.png (image | truth | prediction)."""


def score_segmenter(segmenter: Segmenter, dataset: Dataset) -> tuple[SegmentationMetrics, list[np.ndarray]]:
    """Class maps of every image of `dataset` in its own pixels, scored against its mask
    (pixels whose mask value is not a class are left out); returns the metrics and the maps."""
    names = list(dataset.mask_classes or [])
    metrics = SegmentationMetrics(len(names), class_names=names, ignore_index=IGNORE_INDEX)
    lut = dataset.mask_lut()
    maps: list[np.ndarray] = []
    batch = segmenter.batch_size
    for start in range(0, len(dataset.samples), batch):
        chunk = dataset.samples[start : start + batch]
        found = segmenter([read_image(s.image_path) for s in chunk])
        for sample, class_map in zip(chunk, found, strict=True):
            metrics.update(read_semantic_mask(sample.semantic_mask_path, lut), class_map)
        maps += found
    return metrics, maps


def format_segmentation(result: dict[str, Any]) -> str:
    """The printed report: mIoU, mean Dice and pixel accuracy, then IoU and Dice per class."""
    lines = [
        f"mIoU {result['mIoU']:.4f}  mDice {result['mDice']:.4f}  pixel accuracy "
        f"{result['pixel_accuracy']:.4f}  (pixel error {1 - result['pixel_accuracy']:.4f})"
    ]
    width = max([len(n) for n in result["per_class"]] + [5])
    lines.append(f"{'class':<{width}}     IoU    Dice")
    for name, row in result["per_class"].items():
        iou = "-" if row["IoU"] < 0 else f"{row['IoU']:.4f}"
        dice = "-" if row["Dice"] < 0 else f"{row['Dice']:.4f}"
        lines.append(f"{name:<{width}}  {iou:>6}  {dice:>6}")
    return "\n".join(lines)


def _gallery(examples: list[tuple[np.ndarray, np.ndarray]], maps: list[np.ndarray], skip: list[int], path: Path) -> Path:
    """image | truth | prediction for the `examples` (`SegmentTask.gallery_examples`) and the
    class maps of their images, each row scaled to one height."""
    rows = []
    for (image, truth), predicted in zip(examples, maps[: len(examples)], strict=True):
        panels = [image, truth, draw_semantic(image, predicted, skip=skip)]
        scale = 160 / image.shape[0]
        rows += [cv2.resize(p, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for p in panels]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return write_image(tile_images(rows, 3), path)


class ServingSegmenter(keras.Model):
    """uint8 letterboxed images [B, S, S, C] -> {"classes": class map int32 [B, S, S]}.

    The class is the top-1 of the logits (`top_k`, which keeps the lower index on ties as
    argmax does): Keras's TensorFlow argmax handles -0.0 with a Bitcast op that ONNX lacks.
    """

    def __init__(self, segmenter: UNetSegmenter):
        super().__init__(name=f"{segmenter.name}_serving")
        self.segmenter = segmenter

    def call(self, images):
        logits = self.segmenter(images, training=False)
        if self.segmenter.num_classes == 1:
            return {"classes": keras.ops.cast(logits[..., 0] > 0, "int32")}
        return {"classes": keras.ops.cast(keras.ops.top_k(logits, 1)[1][..., 0], "int32")}


class SegmentTask(Task):
    """The U-Net: mIoU to choose the best model, tinted class maps on video."""

    kind = "unet"
    monitor = "val_mIoU"
    model_class = UNetSegmenter

    def predicted_classes(self, model: UNetSegmenter) -> int:
        return max(2, model.num_classes)  # one logit: background and foreground

    def load_data(self, cfg: Config, split: str) -> Dataset:
        data = cfg.data
        instances = data.builtin is None and data.format in INSTANCE_FORMATS
        names = data.names
        if instances and names and names[0] == BACKGROUND:  # as a run saves them: mask classes
            data = data.model_copy(update={"names": names[1:]})
        dataset = load_split(data, split)
        if instances:
            return with_semantic_masks(dataset, data.cache_dir, getattr(data, split).annotations)
        if not dataset.mask_classes:
            raise DetsegError(
                f"a segmenter needs semantic masks; the {split} split has none (use data.format: "
                "masks with data.names and data.mask_values, coco with polygons or RLE, or data.builtin: shapes)"
            )
        return dataset

    def class_names(self, data: Dataset) -> list[str]:
        return list(data.mask_classes)

    def build_model(self, cfg: Config, num_classes: int) -> UNetSegmenter:
        m, side = cfg.model, cfg.model.input_size
        encoder = {"depth": m.unet.depth} if m.backbone == "unet" else {}
        return build_unet(
            num_classes,
            m.backbone,
            (side, side, 3),
            width=m.backbone_width,
            weights=m.weights,
            decoder_filters=m.unet.decoder_filters,
            upsampling=m.unet.upsampling,
            dropout=m.unet.dropout,
            loss=m.unet.loss,
            class_weights=m.unet.class_weights,
            ignore_index=IGNORE_INDEX,
            **encoder,
        )

    def train_loader(self, cfg: Config, model: UNetSegmenter, train_data: Dataset) -> keras.utils.PyDataset:
        return training_loader(cfg, train_data, SemanticMaskEncoder())

    def backbone(self, model: UNetSegmenter) -> keras.Model:
        return model.encoder

    def _segmenter(self, cfg: Config, model: UNetSegmenter) -> Segmenter:
        return Segmenter.from_model(model, cfg.train.batch_size)

    def validate(self, cfg: Config, model: UNetSegmenter, val_data: Dataset) -> dict[str, float]:
        result = score_segmenter(self._segmenter(cfg, model), val_data)[0].result()
        return {"val_mIoU": result["mIoU"], "val_pixel_accuracy": result["pixel_accuracy"]}

    def gallery_examples(self, data: Dataset, count: int, side: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The first `count` images and each with its true class map tinted ("background" not),
        at their own size: tiled prediction (`predict.tile`) works in the image's pixels, and
        tints and legend scale with the image."""
        lut, skip = data.mask_lut(), untinted_labels(self.class_names(data))
        examples = []
        for sample in data.samples[:count]:
            image = read_image(sample.image_path)
            truth = read_semantic_mask(sample.semantic_mask_path, lut)
            examples.append((image, draw_semantic(image, truth, skip=skip)))
        return examples

    def evaluate(self, cfg: Config, model: UNetSegmenter, data: Dataset, out_dir: Path) -> Report:
        """metrics.json (mIoU, per-class IoU and Dice, pixel accuracy, confusion matrix),
        confusion_matrix.png and gallery.png (image | truth | prediction) in `out_dir`."""
        self.saved_class_names(cfg, model)
        metrics, maps = score_segmenter(self._segmenter(cfg, model), data)
        result = {**metrics.result(), "confusion_matrix": metrics.confusion.tolist(), "num_images": len(data)}
        out = Path(out_dir)
        names = self.class_names(data)
        skip = untinted_labels(names)
        files = (
            write_json(result, out / "metrics.json", indent=2),
            plot_class_confusion(metrics.confusion, names, out / "confusion_matrix.png"),
            _gallery(self.gallery_examples(data, GALLERY_IMAGES), maps, skip, out / "gallery.png"),
        )
        return Report(result, f"{format_segmentation(result)}\nmetrics, confusion matrix and gallery: {out}", files)

    def predictor(
        self, cfg: Config, model: UNetSegmenter, *, score_thr: float | None, iou_thr: float | None, batch: int
    ) -> SegmentationPredictor:
        refuse_thresholds(score_thr, iou_thr, REPORTS)
        segmenter = Segmenter.from_model(model, batch, tile=cfg.predict.tile, tile_overlap=cfg.predict.tile_overlap)
        names = self.saved_class_names(cfg, model)
        return SegmentationPredictor(segmenter, names, rle=cfg.predict.rle)

    def serving_model(self, cfg: Config, model: UNetSegmenter, fmt: str) -> tuple[keras.Model, dict[str, Any]]:
        names = self.saved_class_names(cfg, model)
        return ServingSegmenter(model), {"outputs": ["classes"], "class_names": names}

    def exported_predictor(
        self, runner, metadata: dict[str, Any], path: Path, *, score_thr: float | None, iou_thr: float | None, batch: int
    ) -> SegmentationPredictor:
        refuse_thresholds(score_thr, iou_thr, REPORTS)
        segmenter = Segmenter(lambda images: runner(images)["classes"], int(metadata["input_size"]), batch)
        return SegmentationPredictor(segmenter, list(metadata["class_names"]))
