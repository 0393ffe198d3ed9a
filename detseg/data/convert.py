"""Reading any supported format by name, and converting between the box formats (`detseg convert`).

`read_annotations` is the one place that maps a format name to its reader; `convert`
reads with it and writes with the matching writer. Semantic masks and image folders are
read-only formats (they have no boxes to convert).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detseg.data.coco import load_coco, write_coco
from detseg.data.imagefolder import load_imagefolder
from detseg.data.masks import load_masks
from detseg.data.sample import Dataset, Summary
from detseg.data.via import load_via, write_via
from detseg.data.voc import load_voc, write_voc
from detseg.data.yolo import load_yolo, write_yolo
from detseg.errors import DetsegError

__all__ = ["BOX_FORMATS", "FORMATS", "ConvertReport", "convert", "read_annotations"]

BOX_FORMATS = ("coco", "voc", "yolo", "via")
FORMATS = (*BOX_FORMATS, "masks", "imagefolder")


def read_annotations(
    fmt: str,
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    names: Sequence[str] | None = None,
    split: str | None = None,
    mask_values: Sequence[int] | None = None,
    check_images: bool = True,
    strict: bool = True,
) -> Dataset:
    """Read `annotations` (file or folder) in format `fmt`; `images` is the image folder where the format needs one.

    `strict` is the loading mode: bad items are one-line errors (True), or skipped and
    counted in the dataset's summary (False).
    """
    if fmt == "coco":
        return load_coco(annotations, images, check_images=check_images, strict=strict)
    if fmt == "voc":
        return load_voc(
            annotations,
            images,
            split,
            names=list(names) if names else None,
            check_images=check_images,
            strict=strict,
        )
    if fmt == "via":
        return load_via(annotations, images, names=list(names) if names else None, strict=strict)
    if fmt == "imagefolder":
        return load_imagefolder(annotations, strict=strict)
    if images is None:
        raise DetsegError(
            f"the {fmt} format needs the image folder (--images / images:)", annotations
        )
    if fmt == "yolo":
        return load_yolo(annotations, images, names, strict=strict)
    if fmt == "masks":
        if not names:
            raise DetsegError("semantic masks need the class names (names:)", annotations)
        return load_masks(images, annotations, names, mask_values, strict=strict)
    raise DetsegError(f"unknown annotation format {fmt!r}; known: {', '.join(FORMATS)}")


@dataclass
class ConvertReport:
    """What `convert` read and wrote, and what it had to skip or clip on the way."""

    src_format: str
    dst_format: str
    output: Path
    images: int
    boxes: int
    summary: Summary

    def __str__(self) -> str:
        lines = [
            f"{self.src_format} -> {self.dst_format}: {self.images} images, {self.boxes} boxes written to {self.output}"
        ]
        return "\n".join(lines + self.summary.problem_lines())


def convert(
    src_format: str,
    dst_format: str,
    src: str | Path,
    dst: str | Path,
    *,
    images: str | Path | None = None,
    names: Sequence[str] | None = None,
    strict: bool = True,
) -> ConvertReport:
    """Convert box annotations between coco, voc, yolo and via (every pair, both ways).

    `src`/`dst`: a JSON file (coco, via) or a folder (voc: XMLs or a devkit root; yolo:
    labels, with `classes.txt` written next to them). `images` is the image folder (needed
    for yolo, optional elsewhere); `names` fixes the classes (needed for yolo without
    `classes.txt`). Image paths in the output are relative to the image folder. With
    `strict=False` bad items are skipped and listed in the report instead of stopping.
    """
    for fmt in (src_format, dst_format):
        if fmt not in BOX_FORMATS:
            raise DetsegError(
                f"cannot convert format {fmt!r}; box formats: {', '.join(BOX_FORMATS)}"
            )
    dataset = read_annotations(src_format, src, images, names=names, strict=strict)
    writer = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo, "via": write_via}[
        dst_format
    ]
    output = writer(dataset, dst, dataset.image_dir)
    boxes = sum(s.num_boxes for s in dataset.samples)
    return ConvertReport(src_format, dst_format, Path(output), len(dataset), boxes, dataset.summary)
