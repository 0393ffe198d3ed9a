"""The one in-memory record of the data layer: `Sample`, `Dataset` and its `Summary`.

Every reader returns a `Dataset`; every writer takes one. Boxes are `[N, 4]` float32 `xyxy`
in absolute pixels (continuous coordinates: a box covering pixels 0..9 is `[0, 0, 10, 10]`),
labels are `[N]` int32 in `0..C-1`. Whatever a reader drops or clips is counted in the
dataset's `Summary` with its reason, never silently.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from detseg.errors import DetsegError

__all__ = ["IGNORE_INDEX", "Dataset", "Sample", "Summary", "sanitize_boxes"]

IGNORE_INDEX = 255
"""Semantic-mask value meaning "no label here" (letterbox padding, unknown mask values)."""

_EXAMPLES_PER_REASON = 3
_CLIP_TOLERANCE = 1e-3  # px: float noise at the border is clipped without being reported


@dataclass
class Sample:
    """One image and its annotations.

    `boxes` [N, 4] float32 xyxy absolute pixels; `labels` [N] int32; the optional per-box
    arrays `iscrowd` [N] bool, `difficult` [N] bool (VOC: ignored by VOC AP), `area` [N]
    float64 (COCO's annotation area, exact for its small/medium/large ranges) and `masks`
    (a list of N COCO segmentations: polygons `[[x1, y1, x2, y2, ...], ...]`, an RLE dict,
    or None) all follow the box order. `semantic_mask_path` names a PNG of per-pixel class values; `image_id` is the id the
    annotation file used (COCO id, VOC stem, ...).
    """

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    iscrowd: np.ndarray | None = None
    difficult: np.ndarray | None = None
    area: np.ndarray | None = None
    masks: list[Any] | None = None
    semantic_mask_path: Path | None = None
    image_id: int | str | None = None

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        if self.semantic_mask_path is not None:
            self.semantic_mask_path = Path(self.semantic_mask_path)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int32).reshape(-1)
        n = len(self.boxes)
        if len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} boxes in {self.image_path}")
        for name, dtype in (("iscrowd", bool), ("difficult", bool), ("area", np.float64)):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype).reshape(-1)
                if len(value) != n:
                    raise ValueError(
                        f"{name} has {len(value)} entries for {n} boxes in {self.image_path}"
                    )
                setattr(self, name, value)
        if self.masks is not None and len(self.masks) != n:
            raise ValueError(f"{len(self.masks)} masks for {n} boxes in {self.image_path}")

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray) -> Sample:
        """A copy keeping only the boxes where the boolean `keep` [N] is true (all per-box fields follow)."""
        keep = np.asarray(keep, bool)
        per_box = {
            name: getattr(self, name)[keep]
            for name in ("boxes", "labels", "iscrowd", "difficult", "area")
            if getattr(self, name) is not None
        }
        if self.masks is not None:
            per_box["masks"] = [m for m, k in zip(self.masks, keep, strict=True) if k]
        return replace(self, **per_box)


@dataclass
class Summary:
    """What a reader dropped (`skipped`) or kept after changing it (`clipped`), by reason.

    `examples` keeps the first few places (file, file:line) of every reason so that a user
    can find them; `notes` counts facts that are not problems (e.g. images without labels).

    `strict` is the loading mode: in strict mode every problem that loses data (a skip not
    marked `strict_ok`, or a clip marked `strict_ok=False`) raises a one-line `DetsegError`
    naming the place instead of being counted. `root` is the folder that relative places
    (`a.xml`, `labels/a.txt:3`, `c.json annotation #2 (id 7)`) are read against in errors.
    """

    skipped: Counter[str] = field(default_factory=Counter)
    clipped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    strict: bool = False
    root: Path | None = None

    def skip(
        self,
        reason: str,
        where: str | Path,
        count: int = 1,
        *,
        strict_ok: bool = False,
        detail: str = "",
    ) -> None:
        """Count `count` items dropped for `reason` at `where`; in strict mode an error unless
        `strict_ok` (a degenerate item whose loss loses nothing). `detail` (e.g. the box)
        goes into the error message only."""
        if count > 0 and self.strict and not strict_ok:
            self.fail(reason + detail, where)
        self._add(self.skipped, reason, where, count)

    def clip(
        self, reason: str, where: str | Path, count: int = 1, *, strict_ok: bool = True, detail: str = ""
    ) -> None:
        """Count `count` items kept after being clipped or partly ignored for `reason`; an error
        in strict mode when not `strict_ok` (the change loses data)."""
        if count > 0 and self.strict and not strict_ok:
            self.fail(reason + detail, where)
        self._add(self.clipped, reason, where, count)

    def reject(self, error: DetsegError, where: str | Path) -> None:
        """An item that cannot be used (typically a whole image): `error` is raised in strict
        mode, else the item at `where` is counted as skipped, under the error's problem with
        its numbers, quoted names and file names generalised (so that 40 images of the wrong
        size make one line, not 40)."""
        if self.strict:
            raise error
        reason = re.sub(r"'[^']*'|\S+\.(?:xml|json|txt)\b", "...", error.problem)
        reason = re.sub(r"\d+", "N", reason)
        self._add(self.skipped, f"image skipped: {reason}", where, 1)

    def fail(self, problem: str, where: str | Path) -> NoReturn:
        """Raise the strict-mode error of a problem at `where` (read against `root`)."""
        path = self.root / where if self.root is not None else Path(where)
        raise DetsegError(f"{problem} (data.strict: false skips and counts it)", path)

    def note(self, fact: str, count: int = 1) -> None:
        """Count a fact worth reporting that is not a problem."""
        if count:
            self.notes[fact] += count

    def _add(self, counter: Counter[str], reason: str, where: str | Path, count: int) -> None:
        if count <= 0:
            return
        counter[reason] += count
        places = self.examples.setdefault(reason, [])
        if len(places) < _EXAMPLES_PER_REASON and str(where) not in places:
            places.append(str(where))

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def num_clipped(self) -> int:
        return sum(self.clipped.values())

    def problem_lines(self) -> list[str]:
        """One line per reason: `skipped 2 x zero-area box (e.g. a.xml, b.xml)`."""
        lines = []
        for verb, counter in (("skipped", self.skipped), ("clipped", self.clipped)):
            for reason, count in sorted(counter.items()):
                where = ", ".join(self.examples.get(reason, []))
                lines.append(f"{verb} {count} x {reason}" + (f" (e.g. {where})" if where else ""))
        return lines

    def warn(self, source: str | Path) -> None:
        """Emit one warning line naming `source` when anything was skipped or clipped."""
        if self.skipped or self.clipped:
            warnings.warn(f"{source}: " + "; ".join(self.problem_lines()), stacklevel=3)


@dataclass
class Dataset:
    """Samples plus what is needed to interpret and write them back.

    `class_names` in label order; `category_ids` the original COCO category id of each label
    (for results files); `image_dir` the folder image paths are relative to when written back;
    `mask_classes`/`mask_values` name the semantic-mask classes (in index order, background
    included where there is one) and the raw PNG pixel value of each.
    """

    samples: list[Sample]
    class_names: list[str]
    summary: Summary = field(default_factory=Summary)
    category_ids: list[int] | None = None
    image_dir: Path | None = None
    mask_classes: list[str] | None = None
    mask_values: list[int] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def mask_lut(self) -> np.ndarray:
        """[65536] uint8 table mapping a raw semantic-mask value to its class index (else IGNORE_INDEX)."""
        lut = np.full(1 << 16, IGNORE_INDEX, np.uint8)
        if self.mask_values is not None:
            lut[np.asarray(self.mask_values, np.int64)] = np.arange(
                len(self.mask_values), dtype=np.uint8
            )
        return lut

    def summary_text(self) -> str:
        """Counts per class, boxes per image, box sizes, image sizes, and everything skipped and why."""
        counts = np.zeros(self.num_classes, np.int64)
        per_image = np.array([s.num_boxes for s in self.samples], np.int64)
        boxes = [s.boxes for s in self.samples if s.num_boxes]
        labels = [s.labels for s in self.samples if s.num_boxes]
        if labels:
            counts = np.bincount(np.concatenate(labels), minlength=self.num_classes)
        lines = [
            f"images: {len(self.samples)}   boxes: {int(per_image.sum())}   classes: {self.num_classes}"
        ]
        width = max([len(n) for n in self.class_names] + [5])
        for name, count in zip(self.class_names, counts, strict=False):
            lines.append(f"  {name:<{width}} {int(count):>8}")
        if len(per_image):
            lines.append(
                f"boxes per image: min {per_image.min()}  mean {per_image.mean():.2f}  max {per_image.max()}"
                f"   images without boxes: {int((per_image == 0).sum())}"
            )
        if boxes:
            lines.append("box size sqrt(w*h) px: " + _size_histogram(np.concatenate(boxes)))
        sizes = Counter((s.width, s.height) for s in self.samples)
        if sizes:
            common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(3))
            more = f" and {len(sizes) - 3} more" if len(sizes) > 3 else ""
            lines.append(f"image sizes: {common}{more}")
        if self.mask_classes:
            pairs = ", ".join(
                f"{name}={value}"
                for name, value in zip(self.mask_classes, self.mask_values or [], strict=False)
            )
            lines.append(f"semantic mask classes (value): {pairs}")
        for fact, count in sorted(self.summary.notes.items()):
            lines.append(f"note: {count} x {fact}")
        problems = self.summary.problem_lines()
        lines.extend(problems if problems else ["nothing skipped or clipped"])
        return "\n".join(lines)


_SIZE_EDGES = np.array([0, 8, 16, 32, 64, 128, 256, np.inf])


def _size_histogram(boxes: np.ndarray) -> str:
    """Counts of boxes per sqrt(area) bin, e.g. `0-8: 0 | 8-16: 3 | ...` (COCO calls < 32 small, >= 96 large)."""
    side = np.sqrt(
        np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    )
    hist, _ = np.histogram(side, bins=_SIZE_EDGES)
    names = [
        f"{int(a)}-{int(b)}" if np.isfinite(b) else f">={int(a)}"
        for a, b in zip(_SIZE_EDGES[:-1], _SIZE_EDGES[1:], strict=True)
    ]
    return " | ".join(f"{n}: {int(c)}" for n, c in zip(names, hist, strict=True))


def sanitize_boxes(
    boxes: np.ndarray, width: int, height: int, summary: Summary, where: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """Clip `[N, 4]` xyxy boxes to the image and find the ones to drop, counting both in `summary`.

    Returns `(clipped_boxes, keep)` with `keep` [N] bool. Dropped: non-finite coordinates,
    inverted boxes (x2 < x1 or y2 < y1), boxes entirely outside the image (all three errors
    in strict mode, naming the first such box), and zero-width or zero-height boxes (a
    degenerate click that carries nothing: dropped and counted in both modes). Boxes
    reaching past the border by more than 1e-3 px are clipped and counted in both modes.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    safe = np.where(finite[:, None], boxes, 0.0)
    inverted = finite & ((safe[:, 2] < safe[:, 0]) | (safe[:, 3] < safe[:, 1]))
    nonempty = finite & (safe[:, 2] > safe[:, 0]) & (safe[:, 3] > safe[:, 1])
    limits = np.array([width, height, width, height], np.float32)
    clipped = np.clip(safe, 0.0, limits)
    inside = nonempty & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    moved = inside & (np.abs(clipped - safe).max(axis=1) > _CLIP_TOLERANCE)
    outside = nonempty & ~inside
    for reason, bad in (
        ("box with non-finite coordinates", ~finite),
        ("inverted box (x2<x1 or y2<y1)", inverted),
        ("box entirely outside the image", outside),
    ):
        first = boxes[bad][:1].tolist()
        detail = f" {[round(v, 4) for v in first[0]]} in a {width}x{height} image" if first else ""
        summary.skip(reason, where, int(bad.sum()), detail=detail)
    summary.skip(
        "box with zero width or height (x2==x1 or y2==y1)",
        where,
        int((finite & ~inverted & ~nonempty).sum()),
        strict_ok=True,
    )
    summary.clip("box reaching outside the image, clipped to it", where, int(moved.sum()))
    return clipped, inside
