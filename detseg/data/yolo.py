"""YOLO txt labels (LabelImg, Roboflow, Ultralytics): `class cx cy w h` normalised to 0..1.

One `.txt` per image, at the image's path relative to the image folder. An image without a
label file, or with an empty one, has no objects (the format's convention; counted as a note).
Polygon lines (`class x1 y1 x2 y2 ...`, Ultralytics segmentation) are read as their box plus
a polygon mask. Image sizes come from the image headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detseg.data.files import relative_name
from detseg.data.images import find_images, image_size
from detseg.data.sample import Dataset, Sample, Summary, sanitize_boxes
from detseg.errors import DetsegError

__all__ = ["NAMES_FILE", "load_yolo", "read_names", "write_yolo"]

NAMES_FILE = "classes.txt"
"""Class names, one a line, written next to the labels (LabelImg's convention)."""

_RANGE_TOLERANCE = 1e-3  # normalised values this far outside 0..1 are float noise, not errors


def read_names(names: Sequence[str] | str | Path | None, labels_dir: Path) -> list[str]:
    """Class names from a list, a names file, or `<labels_dir>/classes.txt`."""
    if names is None:
        names = labels_dir / NAMES_FILE
        if not names.is_file():
            raise DetsegError(
                f"YOLO labels need class names (pass names, or write {NAMES_FILE})", labels_dir
            )
    if isinstance(names, (str, Path)):
        path = Path(names)
        if not path.is_file():
            raise DetsegError("class names file not found", path)
        result = [
            line.strip()
            for line in path.read_text(encoding="utf-8-sig").splitlines()
            if line.strip()
        ]
        if not result:
            raise DetsegError("class names file is empty", path)
        return result
    return [str(n) for n in names]


def _label_lines(label_path: Path) -> list[str]:
    """The lines of a label file; a file that is not UTF-8 text is an error naming it."""
    try:
        return label_path.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DetsegError(f"label file is not UTF-8 text (byte {err.start})", label_path) from None


def _parse_lines(
    label_path: Path, where: str, width: int, height: int, num_classes: int, summary: Summary
) -> tuple[np.ndarray, np.ndarray, list[list[list[float]] | None]]:
    """Boxes (absolute xyxy), labels and polygon masks of one label file; bad lines are errors
    (or skipped and counted when lenient), `where` naming the file relative to the labels."""
    boxes, labels, masks = [], [], []
    scale = np.array([width, height], np.float64)
    for number, line in enumerate(_label_lines(label_path), start=1):
        tokens = line.split()
        if not tokens:
            continue
        at = f"{where}:{number}"
        try:
            values = np.array(tokens[1:], np.float64)
            cls = float(tokens[0])
        except ValueError:
            summary.skip("label line that is not numbers", at)
            continue
        if len(values) != 4 and (len(values) < 6 or len(values) % 2):
            summary.skip(
                "label line with a wrong number of values (need 5, or 1 + an even count >= 6)", at
            )
            continue
        if not cls.is_integer() or not 0 <= cls < num_classes:
            summary.skip(f"label line with a class id outside 0..{num_classes - 1}", at)
            continue
        finite = np.isfinite(values).all()  # non-finite values are sanitize_boxes's to report
        if finite and not (np.abs(values - 0.5) <= 0.5 + _RANGE_TOLERANCE).all():
            summary.clip("label line with values outside 0..1 (its box is clipped)", at, strict_ok=False)
        if len(values) == 4:
            center, size = values[:2] * scale, values[2:] * scale
            boxes.append(np.concatenate([center - size / 2, center + size / 2]))
            masks.append(None)
        else:
            points = values.reshape(-1, 2) * scale
            boxes.append(np.concatenate([points.min(axis=0), points.max(axis=0)]))
            masks.append([points.reshape(-1).tolist()])
        labels.append(int(cls))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int32), masks


def _sample(image_path: Path, where: str, labels_dir: Path, num_classes: int, summary: Summary) -> Sample:
    """One image's Sample from its label file `where` (relative to `labels_dir`), if it has one."""
    width, height = image_size(image_path)
    label_path = labels_dir / where
    if not label_path.is_file():
        summary.note("images without a label file (no objects)")
        return Sample(image_path, width, height, image_id=image_path.stem)
    boxes, labels, masks = _parse_lines(label_path, where, width, height, num_classes, summary)
    boxes, keep = sanitize_boxes(boxes, width, height, summary, where)
    has_masks = any(m is not None for m in masks)
    sample = Sample(
        image_path,
        width,
        height,
        boxes,
        labels,
        masks=masks if has_masks else None,
        image_id=image_path.stem,
    )
    return sample.select(keep)


def load_yolo(
    labels_dir: str | Path,
    image_dir: str | Path,
    names: Sequence[str] | str | Path | None = None,
    *,
    strict: bool = True,
) -> Dataset:
    """Read YOLO labels for every image under `image_dir`; `names` is a list, a names file, or None for `classes.txt`.

    Strict (the default): lines that are not numbers, have a wrong number of values, a class
    id out of range or coordinates outside 0..1, boxes that are inverted or outside the
    image, unreadable images and label files without an image are one-line errors naming
    the file and line; with `strict=False` they are skipped (out-of-range values clipped)
    and counted.
    """
    labels_dir, image_dir = Path(labels_dir), Path(image_dir)
    if not labels_dir.is_dir():
        raise DetsegError("YOLO labels folder not found", labels_dir)
    class_names = read_names(names, labels_dir)
    images = find_images(image_dir)
    if not images:
        raise DetsegError("no images", image_dir)
    summary = Summary(strict=strict, root=labels_dir)
    samples, used = [], set()
    for image_path in images:
        where = Path(relative_name(image_path, image_dir)).with_suffix(".txt").as_posix()
        used.add((labels_dir / where).resolve())
        try:
            samples.append(_sample(image_path, where, labels_dir, len(class_names), summary))
        except DetsegError as err:
            summary.reject(err, image_path.name)
    for orphan in sorted(
        p for p in labels_dir.rglob("*.txt") if p.name != NAMES_FILE and p.resolve() not in used
    ):
        summary.skip("label file without an image", relative_name(orphan, labels_dir))
    summary.warn(labels_dir)
    return Dataset(samples, class_names, summary, image_dir=image_dir)


def write_yolo(
    dataset: Dataset, labels_dir: str | Path, image_dir: str | Path | None = None
) -> Path:
    """Write `class cx cy w h` label files (boxes only) plus `classes.txt` into `labels_dir`."""
    out = Path(labels_dir)
    root = Path(image_dir) if image_dir is not None else dataset.image_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / NAMES_FILE).write_text("".join(f"{n}\n" for n in dataset.class_names), encoding="utf-8")
    for s in dataset.samples:
        scale = np.array([s.width, s.height] * 2, np.float64)
        b = s.boxes.astype(np.float64)
        cxcywh = np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], axis=1) / scale
        text = "".join(
            f"{label} " + " ".join(f"{v:.8f}" for v in row) + "\n"
            for label, row in zip(s.labels, cxcywh, strict=True)
        )
        path = out / Path(relative_name(s.image_path, root)).with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return out
