"""Detection metrics behind `reset() / update() / result()`: COCO (identical to pycocotools)
and VOC AP, PR curves and a confusion matrix; and the same from COCO files.

    evaluator = DetectionEvaluator(["cat", "dog"])
    for image in images:
        evaluator.update(
            {"boxes": [[10, 10, 50, 60]], "scores": [0.9], "labels": [1]},      # predictions
            {"boxes": [[12, 8, 52, 58]], "labels": [1]},                        # ground truth
        )
    evaluator.result()              # {"protocol": "coco", "stats": [...], "AP": ..., ...}
    evaluator.result("voc07")       # {"protocol": "voc07", "mAP": ..., "per_class": {...}}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from detseg.errors import DetsegError
from detseg.metrics.coco_eval import CocoEvaluation, evaluate_coco
from detseg.metrics.coco_files import (
    IOU_TYPES,
    load_coco_ground_truth,
    load_coco_results,
    mask_areas,
)
from detseg.metrics.confusion import detection_confusion_matrix
from detseg.metrics.plots import plot_confusion_matrix, plot_pr_curves
from detseg.metrics.tables import (
    DetectionTable,
    GroundTruthTable,
    concat_tables,
    empty_detections,
    empty_ground_truth,
)
from detseg.metrics.voc_eval import VOC_PROTOCOLS, VocEvaluation, evaluate_voc

PROTOCOLS = ("coco", *VOC_PROTOCOLS)
PAD_LABEL = -1  # label of padding rows in batched arrays; such rows are not objects


class DetectionEvaluator:
    """Accumulates per-image predictions and ground truth; scores them with the COCO or VOC
    protocol.

    Per image, `predictions` is `{"boxes": [N, 4] xyxy pixels, "scores": [N], "labels": [N]
    int 0..C-1}` and `ground_truth` is `{"boxes": [M, 4], "labels": [M]}` with optional
    `iscrowd`, `area` (default: mask area if masks are given, else box area) and `difficult`
    `[M]`. For `iou_type="segm"` both also carry `masks`: a list of COCO RLE dicts or a
    `[N, H, W]` binary array. Rows labelled `PAD_LABEL` (-1) are padding and skipped.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        iou_type: str = "bbox",
        protocol: str = "coco",
        iou_thr: float = 0.5,
    ):
        if iou_type not in IOU_TYPES:
            raise DetsegError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
        if protocol not in PROTOCOLS:
            raise DetsegError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if not 0 < iou_thr < 1:
            raise DetsegError(f"iou_thr must be between 0 and 1, got {iou_thr}")
        if len(class_names) == 0:
            raise DetsegError("class_names is empty: at least one class is needed")
        self.class_names = [str(name) for name in class_names]
        self.iou_type = iou_type
        self.protocol = protocol
        self.iou_thr = iou_thr
        self.notes: list[str] = []
        self.reset()

    # === Accumulation ===
    def reset(self) -> None:
        """Forget every image seen so far."""
        segm = self.iou_type == "segm"
        self._gt_parts: list[GroundTruthTable] = [empty_ground_truth(segm)]
        self._dt_parts: list[DetectionTable] = [empty_detections(segm)]
        self._num_images = 0
        self._tables: tuple[GroundTruthTable, DetectionTable] | None = None
        self.notes = []

    @property
    def num_images(self) -> int:
        """Images seen since the last reset."""
        return self._num_images

    def update(self, predictions: dict | list[dict], ground_truth: dict | list[dict]) -> None:
        """Add one image (two dicts) or a batch of images (two lists of dicts)."""
        if isinstance(predictions, dict):
            predictions, ground_truth = [predictions], [ground_truth]
        if isinstance(ground_truth, dict) or len(predictions) != len(ground_truth):
            raise DetsegError("update() needs as many prediction dicts as ground-truth dicts")
        first = self._num_images
        tables = [  # all validated before any is kept: a bad image leaves the state as it was
            (self._ground_truth_table(truth, first + i), self._detection_table(pred, first + i))
            for i, (pred, truth) in enumerate(zip(predictions, ground_truth, strict=True))
        ]
        for gt, dt in tables:
            self._gt_parts.append(gt)
            self._dt_parts.append(dt)
        self._num_images += len(tables)
        self._tables = None

    def _columns(self, data: dict, what: str, keys: tuple[str, ...]) -> dict:
        """Validated boxes (as xywh float64), labels and the other per-row `keys`; padding
        rows dropped."""
        if not isinstance(data, dict) or "boxes" not in data or "labels" not in data:
            raise DetsegError(f"{what} must be a dict with 'boxes' and 'labels'")
        boxes = np.asarray(data["boxes"], dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise DetsegError(f"{what}: boxes must be [N, 4] xyxy, got shape {boxes.shape}")
        labels = np.asarray(data["labels"]).reshape(-1)
        if len(labels) != len(boxes):
            raise DetsegError(f"{what}: {len(boxes)} boxes but {len(labels)} labels")
        keep = labels != PAD_LABEL
        columns = {"labels": labels[keep].astype(np.int64), "boxes": boxes[keep]}
        for key in keys:
            if data.get(key) is None:
                continue
            value = data[key]
            if key == "masks":
                value = value if isinstance(value, list) else encode_masks(np.asarray(value))
            else:
                value = np.asarray(value, dtype=np.float64).reshape(-1)
            if len(value) != len(boxes):
                raise DetsegError(f"{what}: {len(boxes)} boxes but {len(value)} {key!r}")
            columns[key] = (
                [m for m, k in zip(value, keep, strict=True) if k] if key == "masks" else value[keep]
            )
        bad = (columns["labels"] < 0) | (columns["labels"] >= len(self.class_names))
        if bad.any():
            raise DetsegError(
                f"{what}: labels must be in 0..{len(self.class_names) - 1} "
                f"(or {PAD_LABEL} for padding); got {np.unique(columns['labels'][bad]).tolist()}"
            )
        for key in ("boxes", "scores", "area"):
            if key in columns and not np.all(np.isfinite(columns[key])):
                raise DetsegError(f"{what}: {key} contain NaN or infinity")
        if self.iou_type == "segm" and "masks" not in columns:
            raise DetsegError(f"{what}: iou_type 'segm' needs 'masks'")
        xyxy = columns["boxes"]
        columns["boxes"] = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        return columns

    def _area(self, columns: dict) -> np.ndarray:
        if "masks" in columns:
            return mask_areas(columns["masks"])
        return columns["boxes"][:, 2] * columns["boxes"][:, 3]

    def _ground_truth_table(self, data: dict, image: int) -> GroundTruthTable:
        c = self._columns(data, "ground_truth", ("iscrowd", "area", "difficult", "masks"))
        n = len(c["labels"])
        return GroundTruthTable(
            image=np.full(n, image, dtype=np.int64),
            category=c["labels"],
            boxes=c["boxes"],
            area=c["area"] if "area" in c else self._area(c),
            crowd=np.asarray(c.get("iscrowd", np.zeros(n)), dtype=bool),
            difficult=np.asarray(c.get("difficult", np.zeros(n)), dtype=bool),
            zero_id=np.zeros(n, dtype=bool),
            masks=c.get("masks") if self.iou_type == "segm" else None,
        )

    def _detection_table(self, data: dict, image: int) -> DetectionTable:
        c = self._columns(data, "predictions", ("scores", "masks"))
        if "scores" not in c:
            raise DetsegError("predictions must have 'scores'")
        n = len(c["labels"])
        return DetectionTable(
            image=np.full(n, image, dtype=np.int64),
            category=c["labels"],
            boxes=c["boxes"],
            scores=c["scores"],
            area=self._area(c),
            masks=c.get("masks") if self.iou_type == "segm" else None,
        )

    def tables(self) -> tuple[GroundTruthTable, DetectionTable]:
        """Everything accumulated, as one ground-truth and one detection table."""
        if self._tables is None:
            self._tables = (concat_tables(self._gt_parts), concat_tables(self._dt_parts))
            self._gt_parts, self._dt_parts = [self._tables[0]], [self._tables[1]]
        return self._tables

    # === Results ===
    def coco_evaluation(self) -> CocoEvaluation:
        """The COCO protocol's arrays (precision, recall) and 12 numbers."""
        gt, dt = self.tables()
        return evaluate_coco(
            gt, dt, num_images=self._num_images, class_names=self.class_names,
            iou_type=self.iou_type,
        )

    def voc_evaluation(self, protocol: str = "voc07", iou_thr: float | None = None) -> VocEvaluation:
        """The VOC protocol's per-class AP and curves ("voc07" or "voc12")."""
        gt, dt = self.tables()
        return evaluate_voc(
            gt, dt, num_images=self._num_images, class_names=self.class_names,
            protocol=protocol, iou_thr=self.iou_thr if iou_thr is None else iou_thr,
            iou_type=self.iou_type,
        )

    def _evaluation(self, protocol: str | None) -> CocoEvaluation | VocEvaluation:
        protocol = protocol or self.protocol
        if protocol not in PROTOCOLS:
            raise DetsegError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        return self.coco_evaluation() if protocol == "coco" else self.voc_evaluation(protocol)

    def result(self, protocol: str | None = None) -> dict:
        """The metrics dict of `protocol` (default: the evaluator's), in the metrics-file
        schema, plus `notes` on anything left out of the evaluation."""
        return {**self._evaluation(protocol).to_dict(), "notes": list(self.notes)}

    def confusion_matrix(self, iou_thr: float = 0.5, score_thr: float = 0.25) -> np.ndarray:
        """`[C + 1, C + 1]` detection confusion matrix (see `detection_confusion_matrix`)."""
        gt, dt = self.tables()
        return detection_confusion_matrix(
            gt, dt, num_images=self._num_images, num_classes=len(self.class_names),
            iou_thr=iou_thr, score_thr=score_thr,
        )

    def save_plots(self, out_dir: str | Path, protocol: str | None = None) -> list[Path]:
        """PR curves (per class and overall) and the confusion matrix as PNGs in `out_dir`."""
        evaluation = self._evaluation(protocol)
        if isinstance(evaluation, CocoEvaluation):
            title = "(COCO, IoU=0.50)"
        else:
            title = f"({evaluation.protocol}, IoU>{evaluation.iou_thr:.2f})"
        paths = plot_pr_curves(evaluation.pr_curves(), out_dir, title)
        matrix = self.confusion_matrix()
        matrix_path = Path(out_dir) / "confusion_matrix.png"
        paths.append(plot_confusion_matrix(matrix, self.class_names, matrix_path))
        return paths

    # === From files ===
    @classmethod
    def from_coco(
        cls,
        gt_json: str | Path | dict,
        dt_json: str | Path | list | dict,
        *,
        iou_type: str = "bbox",
        protocol: str = "coco",
        iou_thr: float = 0.5,
    ) -> DetectionEvaluator:
        """An evaluator holding a COCO ground-truth file and a results file (paths or parsed
        JSON), read with pycocotools' conventions (see `detseg.metrics.coco_files`)."""
        gt = load_coco_ground_truth(gt_json, iou_type=iou_type)
        dt, notes = load_coco_results(dt_json, gt, iou_type=iou_type)
        if not gt.class_names:
            raise DetsegError("the ground truth lists no categories", _source(gt_json))
        evaluator = cls(gt.class_names, iou_type=iou_type, protocol=protocol, iou_thr=iou_thr)
        evaluator._gt_parts, evaluator._dt_parts = [gt.table], [dt]
        evaluator._num_images = len(gt.image_ids)
        evaluator.notes = gt.notes + notes
        return evaluator


def _source(data) -> str | None:
    return str(data) if isinstance(data, (str, Path)) else None


def encode_masks(masks: np.ndarray) -> list:
    """`[N, H, W]` binary masks as COCO RLE dicts."""
    if masks.ndim != 3:
        raise DetsegError(f"masks must be a list of RLE dicts or [N, H, W]; got {masks.shape}")
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(np.moveaxis(masks.astype(np.uint8), 0, -1)))


def evaluate_coco_files(
    gt_json: str | Path | dict,
    dt_json: str | Path | list | dict,
    iou_type: str = "bbox",
    protocol: str = "coco",
    iou_thr: float = 0.5,
) -> dict:
    """Score a COCO results file against a COCO ground-truth file (paths or parsed JSON):
    the metrics dict of `protocol` ("coco", "voc07" or "voc12"), as pycocotools would."""
    evaluator = DetectionEvaluator.from_coco(
        gt_json, dt_json, iou_type=iou_type, protocol=protocol, iou_thr=iou_thr
    )
    return evaluator.result()
