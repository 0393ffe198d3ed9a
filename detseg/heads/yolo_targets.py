"""YOLOv3 target encoding: ground-truth boxes -> dense per-level training targets (NumPy).

The data loader calls one `YoloTargetEncoder` once per batch. Every ground-truth box goes to
the anchor whose shape (w, h, centred) overlaps it best, at that anchor's pyramid level and at
the grid cell holding the box centre; with `assign_thresh > 0` it also goes to every other
anchor whose shape IoU exceeds the threshold. With `neighbour_cells` (YOLOv5's rule) each of
those anchors also trains at the two neighbouring cells nearest the centre, one across the
nearer vertical cell border and one across the nearer horizontal one (where they lie inside
the grid): up to three times the positives, which the model can only fit when its centre
offsets reach into the next cell (`scale_xy` >= 2). With `centre_inside` (for a
distribution-focal head, whose box sides are distances from the cell centre and so cannot reach
a box that misses the centre) an assignment is kept only where the cell's centre lies inside
the box, except each box's best anchor at the cell holding its centre, so that every box keeps
a positive. The work is vectorised over all boxes of the batch: the only Python loop runs over
pyramid levels.

Target layout for a batch of B images, input side S, level `Pk` (stride s = 2**k, grid
G = S / s) with A anchors per level:

- `"Pk_box"`  float32 [B, G, G, A, 4]: the assigned box, xyxy in input pixels (0 elsewhere);
- `"Pk_obj"`  float32 [B, G, G, A]:    1 where a box is assigned, else 0;
- `"Pk_cls"`  int32   [B, G, G, A]:    its class, `NO_OBJECT` (-1) elsewhere;
- `"gt_boxes"`  float32 [B, M, 4] and `"gt_labels"` int32 [B, M]: every box of each image,
  padded to M = `max_boxes` with zeros and `PAD_LABEL` (-1); the loss's ignore rule uses them.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

import numpy as np

from detseg.errors import DetsegError

__all__ = ["NO_OBJECT", "PAD_LABEL", "YoloTargetEncoder", "check_anchors", "level_stride"]

# Label of padding rows in `gt_labels` (and in batches of the data loader).
PAD_LABEL = -1
# Class target of grid cells / anchors that no box is assigned to.
NO_OBJECT = -1


def level_stride(level: str) -> int:
    """Stride of pyramid level `"Pk"`: 2**k."""
    if len(level) < 2 or level[0] != "P" or not level[1:].isdigit():
        raise DetsegError(f"pyramid level names look like 'P3', got {level!r}")
    return 2 ** int(level[1:])


def check_anchors(anchors, num_levels: int, anchors_per_level: int) -> np.ndarray:
    """Validate prior boxes and return them as float32 [K, 2] (w, h) sorted by area.

    Level i (finest first) predicts with anchors[i * A:(i + 1) * A]; sorting by area puts the
    small priors on the fine levels whatever order the user listed them in.
    """
    array = np.asarray(anchors, dtype=np.float32)
    expected = num_levels * anchors_per_level
    if array.ndim != 2 or array.shape != (expected, 2):
        raise DetsegError(
            f"anchors must be {expected} [w, h] pairs ({num_levels} levels x {anchors_per_level} "
            f"per level), got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise DetsegError(f"anchor sizes must be positive and finite, got {array.tolist()}")
    return array[np.argsort(array[:, 0] * array[:, 1], kind="stable")]


def _shape_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of boxes [N, 2] and anchors [K, 2] when both are centred at the same point: [N, K]."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(
        wh[:, None, 1], anchors[None, :, 1]
    )
    union = wh[:, None, 0] * wh[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter
    return inter / union


def _with_neighbour_cells(grids, cell, centre_in_cells):
    """Add, for every assignment, the neighbouring cell across the nearer vertical border and the
    one across the nearer horizontal border, where it lies inside the grid (YOLOv5's rule).

    `centre_in_cells` [N, 2] is the box centre in grid units of the assignment's level. A centre
    exactly mid-cell has no nearer border on that axis and gains no cell there: from either
    neighbour it would sit at the very end of the decodable range. Returns the assignment each
    row extends (the N originals first) and the rows' cells.
    """
    step = np.sign(centre_in_cells - cell - 0.5).astype(np.int64)
    rows, cells = [np.arange(len(cell))], [cell]
    for axis in (0, 1):
        moved = cell.copy()
        moved[:, axis] += step[:, axis]
        inside = (step[:, axis] != 0) & (moved[:, axis] >= 0) & (moved[:, axis] < grids)
        rows.append(np.nonzero(inside)[0])
        cells.append(moved[inside])
    return np.concatenate(rows), np.concatenate(cells)


class YoloTargetEncoder:
    """Encode a batch of ground-truth boxes into dense YOLOv3 targets (see the module doc).

    Args:
        anchors: [K, 2] prior (w, h) in input pixels, K = len(strides) * anchors_per_level.
        strides: stride of each predicted level, finest first (e.g. (8, 16, 32)).
        input_size: side S of the square model input, a multiple of every stride.
        num_classes: labels must lie in 0..num_classes-1 (`PAD_LABEL` rows are skipped).
        anchors_per_level: A, anchors per grid cell.
        assign_thresh: also assign a box to every anchor whose shape IoU exceeds this (0: best only).
        neighbour_cells: also assign each (box, anchor) pair to the two neighbouring cells nearest
            the box centre (see the module doc).
        centre_inside: keep only assignments whose cell centre lies inside the box, besides
            each box's best anchor at its own cell (see the module doc).
        max_boxes: M, rows of `gt_boxes`; boxes beyond it still get targets but are left out
            of the ignore rule (counted in `stats["truncated"]`).

    `stats` counts, over all calls: `boxes` encoded, `degenerate` boxes skipped (zero, negative or
    non-finite size: they cannot be encoded), `truncated` rows left out of `gt_boxes`, and `collisions`
    (two boxes on one cell and anchor: the smaller box keeps it).
    """

    def __init__(
        self,
        anchors,
        strides: Sequence[int],
        input_size: int,
        num_classes: int,
        anchors_per_level: int = 3,
        assign_thresh: float = 0.0,
        max_boxes: int = 100,
        neighbour_cells: bool = False,
        centre_inside: bool = False,
    ):
        self.strides = tuple(int(s) for s in strides)
        if not self.strides or any(s <= 0 or input_size % s for s in self.strides):
            raise DetsegError(
                f"input_size {input_size} must be a multiple of every stride {self.strides}"
            )
        if num_classes < 1 or max_boxes < 1 or not 0.0 <= assign_thresh <= 1.0:
            raise DetsegError(
                f"need num_classes >= 1, max_boxes >= 1 and 0 <= assign_thresh <= 1; got "
                f"num_classes={num_classes}, max_boxes={max_boxes}, assign_thresh={assign_thresh}"
            )
        self.anchors = check_anchors(anchors, len(self.strides), anchors_per_level)
        self.input_size = int(input_size)
        self.num_classes = int(num_classes)
        self.anchors_per_level = int(anchors_per_level)
        self.assign_thresh = float(assign_thresh)
        self.max_boxes = int(max_boxes)
        self.neighbour_cells = bool(neighbour_cells)
        self.centre_inside = bool(centre_inside)
        self.levels = tuple(f"P{s.bit_length() - 1}" for s in self.strides)
        self.stats = {"boxes": 0, "degenerate": 0, "truncated": 0, "collisions": 0}
        self._lock = threading.Lock()

    def __call__(
        self, boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Targets for one batch: `boxes[i]` [Ni, 4] xyxy input pixels, `labels[i]` [Ni] int."""
        if len(boxes) != len(labels):
            raise DetsegError(f"got boxes for {len(boxes)} images but labels for {len(labels)}")
        batch = len(boxes)
        counts = np.array([len(b) for b in boxes], dtype=np.int64)
        xyxy = np.concatenate(
            [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
            or [np.zeros((0, 4), np.float32)]
        )
        cls = np.concatenate(
            [np.asarray(c).reshape(-1) for c in labels] or [np.zeros(0, np.int64)]
        ).astype(np.int64)
        if len(cls) != len(xyxy) or any(len(c) != n for c, n in zip(labels, counts, strict=True)):
            raise DetsegError("every image needs exactly one label per box")
        image = np.repeat(np.arange(batch), counts)

        real = cls != PAD_LABEL
        bad = real & ((cls < 0) | (cls >= self.num_classes))
        if bad.any():
            raise DetsegError(
                f"labels must lie in 0..{self.num_classes - 1}, got {sorted(set(cls[bad].tolist()))}"
            )
        wh = xyxy[:, 2:] - xyxy[:, :2]
        degenerate = real & ~np.all(wh > 0, axis=1)
        keep = real & ~degenerate
        xyxy, wh, cls, image = xyxy[keep], wh[keep], cls[keep], image[keep]

        targets = self._dense_targets(batch, xyxy, wh, cls, image)
        targets.update(self._padded_truth(batch, xyxy, cls, image))
        with self._lock:
            self.stats["boxes"] += int(keep.sum())
            self.stats["degenerate"] += int(degenerate.sum())
        if degenerate.any():
            warnings.warn(
                f"YOLO targets: skipped {int(degenerate.sum())} boxes of zero, negative or non-finite size",
                stacklevel=2,
            )
        return targets

    def _dense_targets(self, batch, xyxy, wh, cls, image) -> dict[str, np.ndarray]:
        """The per-level box / objectness / class arrays."""
        num_anchors = self.anchors_per_level
        iou = _shape_iou(wh, self.anchors)
        chosen = iou > self.assign_thresh if self.assign_thresh > 0 else np.zeros(iou.shape, bool)
        best = np.argmax(iou, axis=1) if len(iou) else np.zeros(0, np.int64)
        chosen[np.arange(len(iou)), best] = True
        box_idx, anchor_idx = np.nonzero(chosen)
        level_idx = anchor_idx // num_anchors

        # One flat key per (level, image, cell, anchor); on a collision the smallest box wins.
        strides = np.asarray(self.strides)[level_idx]
        grids = self.input_size // strides
        centre = (xyxy[box_idx, :2] + xyxy[box_idx, 2:]) / 2
        cell = np.clip(
            np.floor(centre / strides[:, None]).astype(np.int64), 0, (grids - 1)[:, None]
        )
        own = anchor_idx == best[box_idx]  # each box's best anchor at its own cell
        if self.neighbour_cells:
            rows, cell = _with_neighbour_cells(grids, cell, centre / strides[:, None])
            own = own[rows] & (np.arange(len(rows)) < len(box_idx))
            box_idx, anchor_idx, level_idx, grids, strides = (
                a[rows] for a in (box_idx, anchor_idx, level_idx, grids, strides)
            )
        if self.centre_inside:
            cell_centre = (cell + 0.5) * strides[:, None]
            inside = np.all(
                (cell_centre > xyxy[box_idx, :2]) & (cell_centre < xyxy[box_idx, 2:]), axis=1
            )
            rows = np.nonzero(inside | own)[0]
            box_idx, anchor_idx, level_idx, grids, cell = (
                a[rows] for a in (box_idx, anchor_idx, level_idx, grids, cell)
            )
        key = ((level_idx * batch + image[box_idx]) * grids + cell[:, 1]) * grids + cell[:, 0]
        key = key * num_anchors + anchor_idx % num_anchors
        area = wh[box_idx, 0] * wh[box_idx, 1]
        order = np.lexsort((area, key))
        _, first = np.unique(key[order], return_index=True)
        winners = order[first]
        with self._lock:
            self.stats["collisions"] += len(key) - len(winners)

        targets = {}
        for level_no, (level, stride) in enumerate(zip(self.levels, self.strides, strict=True)):
            grid = self.input_size // stride
            sel = winners[level_idx[winners] == level_no]
            where = (image[box_idx[sel]], cell[sel, 1], cell[sel, 0], anchor_idx[sel] % num_anchors)
            box = np.zeros((batch, grid, grid, num_anchors, 4), np.float32)
            obj = np.zeros((batch, grid, grid, num_anchors), np.float32)
            label = np.full((batch, grid, grid, num_anchors), NO_OBJECT, np.int32)
            box[where] = xyxy[box_idx[sel]]
            obj[where] = 1.0
            label[where] = cls[box_idx[sel]]
            targets.update({f"{level}_box": box, f"{level}_obj": obj, f"{level}_cls": label})
        return targets

    def _padded_truth(self, batch, xyxy, cls, image) -> dict[str, np.ndarray]:
        """Every box of each image, padded to `max_boxes` rows, for the ignore rule."""
        counts = np.bincount(image, minlength=batch)
        rank = np.arange(len(image)) - np.repeat(np.cumsum(counts) - counts, counts)
        fits = rank < self.max_boxes
        gt_boxes = np.zeros((batch, self.max_boxes, 4), np.float32)
        gt_labels = np.full((batch, self.max_boxes), PAD_LABEL, np.int32)
        gt_boxes[image[fits], rank[fits]] = xyxy[fits]
        gt_labels[image[fits], rank[fits]] = cls[fits]
        truncated = int((~fits).sum())
        if truncated:
            with self._lock:
                self.stats["truncated"] += truncated
            warnings.warn(
                f"YOLO targets: {truncated} boxes beyond max_boxes={self.max_boxes} left out of the ignore rule",
                stacklevel=3,
            )
        return {"gt_boxes": gt_boxes, "gt_labels": gt_labels}
