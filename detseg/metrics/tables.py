"""Column tables of ground truth and detections, and the (detection, ground truth) pairs that
share an image and a category: the common input of the COCO, VOC and confusion-matrix code.

Boxes here are `xywh` float64, as in COCO files, because the COCO protocol computes its IoU
from `x + w` exactly as pycocotools does (the in-memory `xyxy` contract ends at the evaluator).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from pycocotools import mask as mask_utils

from detseg.errors import DetsegError


@dataclass
class GroundTruthTable:
    """`G` ground-truth objects as columns."""

    image: np.ndarray  # [G] int64 image index (position in the sorted image ids)
    category: np.ndarray  # [G] int64 category index 0..K-1
    boxes: np.ndarray  # [G, 4] float64 xywh
    area: np.ndarray  # [G] float64, as given by the annotation (COCO "area")
    crowd: np.ndarray  # [G] bool, COCO iscrowd: an ignore region
    difficult: np.ndarray  # [G] bool, VOC difficult: ignored by the VOC protocol
    zero_id: np.ndarray  # [G] bool, annotation id 0: pycocotools reads a match to it as none
    masks: list | None = None  # [G] COCO RLE dicts for iou_type="segm"

    def __len__(self) -> int:
        return len(self.image)


@dataclass
class DetectionTable:
    """`D` detections as columns, in input order (the order pycocotools breaks ties by)."""

    image: np.ndarray  # [D] int64 image index
    category: np.ndarray  # [D] int64 category index 0..K-1
    boxes: np.ndarray  # [D, 4] float64 xywh
    scores: np.ndarray  # [D] float64
    area: np.ndarray  # [D] float64
    masks: list | None = None  # [D] COCO RLE dicts for iou_type="segm"

    def __len__(self) -> int:
        return len(self.image)

    def take(self, index: np.ndarray) -> DetectionTable:
        """The detections at `index`, in that order."""
        return DetectionTable(
            image=self.image[index],
            category=self.category[index],
            boxes=self.boxes[index],
            scores=self.scores[index],
            area=self.area[index],
            masks=None if self.masks is None else [self.masks[i] for i in index],
        )


@dataclass
class Pairs:
    """Every (detection, ground truth) pair with the same image and category, with its IoU.

    Pairs are ordered by detection (in the table's order), then by ground truth (in the
    table's order): the order in which pycocotools scans them.
    """

    dt: np.ndarray  # [P] int64 detection index
    gt: np.ndarray  # [P] int64 ground-truth index
    iou: np.ndarray  # [P] float64


def group_keys(image: np.ndarray, category: np.ndarray, num_images: int) -> np.ndarray:
    """One int64 key per (category, image) group, increasing with category then image."""
    return category.astype(np.int64) * max(num_images, 1) + image.astype(np.int64)


def pair_indices(gt_keys: np.ndarray, dt_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (dt, gt) index pairs with equal keys, detection-major, without a Python loop."""
    gt_order = np.argsort(gt_keys, kind="stable")
    sorted_keys = gt_keys[gt_order]
    start = np.searchsorted(sorted_keys, dt_keys, side="left")
    counts = np.searchsorted(sorted_keys, dt_keys, side="right") - start
    pair_dt = np.repeat(np.arange(len(dt_keys)), counts)
    first_pair = np.cumsum(counts) - counts
    offset = np.arange(len(pair_dt)) - np.repeat(first_pair, counts)
    return pair_dt, gt_order[np.repeat(start, counts) + offset]


def box_iou_pairs(
    dt_boxes: np.ndarray, gt_boxes: np.ndarray, gt_crowd: np.ndarray
) -> np.ndarray:
    """IoU of aligned xywh boxes with pycocotools' arithmetic (its C `bbIou`), so thresholds
    compare bit for bit: for a crowd ground truth the union is the detection's area."""
    dx, dy, dw, dh = dt_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    inter_w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    inter_h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    overlap = (inter_w > 0) & (inter_h > 0)
    inter = np.where(overlap, inter_w * inter_h, 0.0)
    dt_area = dw * dh
    union = np.where(gt_crowd, dt_area, dt_area + gw * gh - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)


def mask_iou_pairs(
    dt_masks: list, gt_masks: list, gt_crowd: np.ndarray, pair_dt: np.ndarray,
    pair_gt: np.ndarray,
) -> np.ndarray:
    """IoU of RLE masks for detection-major pairs, one pycocotools `iou` call per group of
    consecutive pairs that share a detection set and a ground-truth set."""
    iou = np.zeros(len(pair_dt))
    if len(pair_dt) == 0:
        return iou
    # A group starts where the detection changes to one whose ground truths differ.
    new_dt = np.r_[True, pair_dt[1:] != pair_dt[:-1]]
    dt_starts = np.flatnonzero(new_dt)
    first_gt = pair_gt[dt_starts]
    group_start = np.r_[True, first_gt[1:] != first_gt[:-1]]
    bounds = np.r_[dt_starts[group_start], len(pair_dt)]
    for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
        dts = np.unique(pair_dt[begin:end])
        n_gt = (end - begin) // len(dts)
        gts = pair_gt[begin : begin + n_gt]
        dt_rles, gt_rles = [dt_masks[i] for i in dts], [gt_masks[j] for j in gts]
        sizes = {tuple(m["size"]) for m in dt_rles + gt_rles}
        if len(sizes) > 1:
            raise DetsegError(f"masks of one image have different sizes (h, w): {sorted(sizes)}")
        block = mask_utils.iou(dt_rles, gt_rles, [int(c) for c in gt_crowd[gts]])
        iou[begin:end] = np.asarray(block, dtype=np.float64).reshape(-1)
    return iou


def compute_pairs(
    gt: GroundTruthTable,
    dt: DetectionTable,
    num_images: int,
    iou_type: str,
    *,
    crowd_regions: bool = True,
    same_category: bool = True,
) -> Pairs:
    """Pairs of `dt` and `gt` in the same image (and category, unless `same_category` is
    False) with their IoU, "bbox" or "segm". With `crowd_regions` the IoU against a crowd
    ground truth is intersection / detection area (COCO); without, the plain IoU (VOC)."""
    if same_category:
        gt_keys = group_keys(gt.image, gt.category, num_images)
        dt_keys = group_keys(dt.image, dt.category, num_images)
    else:
        gt_keys, dt_keys = gt.image, dt.image
    pair_dt, pair_gt = pair_indices(gt_keys, dt_keys)
    crowd = gt.crowd if crowd_regions else np.zeros(len(gt), dtype=bool)
    if iou_type == "segm":
        iou = mask_iou_pairs(dt.masks, gt.masks, crowd, pair_dt, pair_gt)
    else:
        iou = box_iou_pairs(dt.boxes[pair_dt], gt.boxes[pair_gt], crowd[pair_gt])
    return Pairs(dt=pair_dt, gt=pair_gt, iou=iou)


def empty_ground_truth(with_masks: bool = False) -> GroundTruthTable:
    """A ground-truth table with no rows (typed columns)."""
    ints, flags = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return GroundTruthTable(
        image=ints, category=ints, boxes=np.zeros((0, 4)), area=np.zeros(0), crowd=flags,
        difficult=flags, zero_id=flags, masks=[] if with_masks else None,
    )


def empty_detections(with_masks: bool = False) -> DetectionTable:
    """A detection table with no rows (typed columns)."""
    ints = np.zeros(0, dtype=np.int64)
    return DetectionTable(
        image=ints, category=ints, boxes=np.zeros((0, 4)), scores=np.zeros(0),
        area=np.zeros(0), masks=[] if with_masks else None,
    )


def concat_tables(parts: list):
    """One table from a non-empty list of tables of one type, column by column."""
    columns = {}
    for f in fields(parts[0]):
        values = [getattr(p, f.name) for p in parts]
        if f.name == "masks":
            columns[f.name] = None if any(v is None for v in values) else [m for v in values for m in v]
        else:
            columns[f.name] = np.concatenate(values)
    return type(parts[0])(**columns)
