"""COCO JSON (CVAT, Roboflow, detectron2): boxes, polygons, RLE, `iscrowd`, reading and writing.

Category ids (any integers) become contiguous labels in increasing id order; the original ids
are kept in `Dataset.category_ids` so results can be written back with them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from detseg.data.files import image_in_folder, read_json, relative_name, write_json
from detseg.data.images import image_size
from detseg.data.sample import Dataset, Sample, Summary, sanitize_boxes
from detseg.errors import DetsegError

__all__ = ["decode_instance_masks", "load_coco", "write_coco"]


def _require_list(doc: dict[str, Any], key: str, path: Path, required: bool = True) -> list[Any]:
    value = doc.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise DetsegError(f"COCO file needs a list {key!r} at the top level", path)
    return value


def _categories(doc: dict[str, Any], path: Path) -> tuple[list[int], list[str]]:
    cats = _require_list(doc, "categories", path)
    try:
        pairs = sorted((int(c["id"]), str(c["name"])) for c in cats)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise DetsegError("every category needs an integer 'id' and a 'name'", path) from None
    ids = [i for i, _ in pairs]
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        raise DetsegError(f"duplicated category id(s) {dup[:5]}", path)
    return ids, [name for _, name in pairs]


def _key(value: Any) -> int | str | None:
    """An id usable as a key (an integer or a text), else None."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _image_table(doc: dict[str, Any], path: Path, summary: Summary) -> list[dict[str, Any]]:
    """The image entries with a usable, unique 'id' (others are errors, or skipped when lenient)."""
    kept, seen = [], set()
    for n, im in enumerate(_require_list(doc, "images", path)):
        image_id = _key(im.get("id")) if isinstance(im, dict) else None
        if image_id is None:
            summary.skip("image entry without an integer or text 'id'", f"{path.name} image #{n}")
        elif image_id in seen:
            summary.skip("duplicated image id", f"{path.name} image #{n} (id {image_id!r})")
        else:
            seen.add(image_id)
            kept.append(im)
    return kept


def _bbox_from_segmentation(seg: Any, height: int, width: int) -> list[float] | None:
    """The xywh box of a polygon list or RLE (for annotations that have no 'bbox')."""
    try:
        rles = mask_utils.frPyObjects(seg, height, width)
        rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
        return [float(v) for v in mask_utils.toBbox(rle)]
    except Exception:  # pycocotools raises bare Exception for unsupported input
        return None


def _sized_image(
    im: dict[str, Any], image_dir: Path, check_images: bool, where: str
) -> tuple[Path, int, int]:
    """The image's path (inside `image_dir`) and size, checked against its header when `check_images`."""
    name = im.get("file_name")
    if not isinstance(name, str) or not name:
        raise DetsegError("image entry has no 'file_name'", where)
    image_path = image_in_folder(image_dir, name, where)
    try:
        width, height = (None if im.get(k) is None else int(im[k]) for k in ("width", "height"))
    except (TypeError, ValueError, OverflowError):
        raise DetsegError("image entry's width/height are not integers", where) from None
    if check_images:
        actual = image_size(image_path)
        if width is not None and height is not None and (width, height) != actual:
            raise DetsegError(
                f"image is {actual[0]}x{actual[1]} but its entry says {width}x{height}", where
            )
        width, height = actual
    elif width is None or height is None or width < 1 or height < 1:
        raise DetsegError("image entry has no width/height (and images are not read)", where)
    return image_path, width, height


def _annotation_table(
    doc: dict[str, Any],
    path: Path,
    index_of: dict[Any, int],
    label_of: dict[int, int],
    summary: Summary,
) -> list[list[dict[str, Any]]]:
    """The annotations of each image (by `index_of` position); bad ones are errors or skipped."""
    per_image: list[list[dict[str, Any]]] = [[] for _ in index_of]
    seen: set[int | str] = set()
    for n, ann in enumerate(_require_list(doc, "annotations", path, required=False)):
        if not isinstance(ann, dict):
            summary.skip("annotation that is not a JSON object", f"{path.name} annotation #{n}")
            continue
        ann_id = _key(ann.get("id"))
        where = f"{path.name} annotation #{n} (id {ann.get('id')!r})"
        if ann_id is not None and ann_id in seen:
            summary.skip("duplicated annotation id", where)
        elif _key(ann.get("image_id")) not in index_of:
            summary.skip("annotation of an unknown image id", where, detail=f" {ann.get('image_id')!r}")
        elif _key(ann.get("category_id")) not in label_of:
            summary.skip(
                "annotation of an unknown category id", where, detail=f" {ann.get('category_id')!r}"
            )
        else:
            per_image[index_of[ann["image_id"]]].append(ann)
        if ann_id is not None:
            seen.add(ann_id)
    return per_image


def load_coco(
    json_path: str | Path,
    image_dir: str | Path | None = None,
    *,
    check_images: bool = True,
    strict: bool = True,
) -> Dataset:
    """Read a COCO instances JSON into a Dataset.

    `image_dir` defaults to the JSON's folder; a `file_name` outside it is an error. With
    `check_images=False` the image files are not opened (sizes come from the JSON): for
    annotation-only work such as evaluation. Strict (the default): annotations of unknown
    images or categories, duplicated ids, malformed or inverted boxes, missing or unreadable
    images are one-line errors; with `strict=False` they are skipped and counted.
    """
    path = Path(json_path)
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DetsegError(
            "a COCO file is a JSON object with 'images', 'annotations', 'categories'", path
        )
    image_dir = Path(image_dir) if image_dir is not None else path.parent
    summary = Summary(strict=strict, root=path.parent)
    category_ids, names = _categories(doc, path)
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    images = _image_table(doc, path, summary)
    index_of = {im["id"]: i for i, im in enumerate(images)}
    per_image = _annotation_table(doc, path, index_of, label_of, summary)
    has_masks = any("segmentation" in a for anns in per_image for a in anns)

    samples = []
    for im, anns in zip(images, per_image, strict=True):
        where = f"{path.name} image id {im['id']!r}"
        try:
            image_path, width, height = _sized_image(
                im, image_dir, check_images, str(path.parent / where)
            )
        except DetsegError as err:
            summary.reject(err, where)
            summary.note("annotations of skipped images", len(anns))
            continue
        samples.append(
            _sample(im["id"], image_path, width, height, anns, label_of, has_masks, summary, path)
        )
    summary.warn(path)
    return Dataset(samples, names, summary, category_ids=category_ids, image_dir=image_dir)


def _xywh(ann: dict[str, Any], width: int, height: int) -> tuple[list[float], float] | None:
    """An annotation's `[x, y, w, h]` (from 'bbox', else its segmentation) and area, None when malformed."""
    box = ann.get("bbox")
    if box is None and ann.get("segmentation"):
        box = _bbox_from_segmentation(ann["segmentation"], height, width)
    try:
        if not isinstance(box, list) or len(box) != 4:
            return None
        xywh = [float(v) for v in box]
        area = float(ann.get("area", xywh[2] * xywh[3]))
    except (TypeError, ValueError, OverflowError):
        return None
    return xywh, area


def _sample(
    image_id: Any,
    image_path: Path,
    width: int,
    height: int,
    anns: list[dict[str, Any]],
    label_of: dict[int, int],
    has_masks: bool,
    summary: Summary,
    path: Path,
) -> Sample:
    """One image's annotations: xywh -> xyxy, sanitised, with masks, crowd flags and areas."""
    xywh = np.zeros((len(anns), 4), np.float64)
    area = np.zeros(len(anns), np.float64)
    valid = np.ones(len(anns), bool)
    for i, ann in enumerate(anns):
        parsed = _xywh(ann, width, height)
        if parsed is None:
            valid[i] = False
            summary.skip(
                "annotation with a malformed bbox (need 4 numbers) or area",
                f"{path.name} annotation id {ann.get('id')!r}",
                detail=f": bbox {ann.get('bbox')!r}",
            )
        else:
            xywh[i], area[i] = parsed
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    keep = np.zeros(len(anns), bool)
    boxes[valid], keep[valid] = sanitize_boxes(
        boxes[valid], width, height, summary, f"{path.name} image id {image_id!r}"
    )
    sample = Sample(
        image_path=image_path,
        width=width,
        height=height,
        boxes=boxes,
        labels=[label_of[a["category_id"]] for a in anns],
        iscrowd=[bool(a.get("iscrowd", 0)) for a in anns],
        area=area,
        masks=[a.get("segmentation") or None for a in anns] if has_masks else None,
        image_id=image_id,
    )
    return sample.select(keep)


def decode_instance_masks(sample: Sample) -> np.ndarray:
    """`[N, H, W]` uint8 binary masks of a sample's polygon/RLE segmentations (zeros where there is none)."""
    out = np.zeros((sample.num_boxes, sample.height, sample.width), np.uint8)
    for i, seg in enumerate(sample.masks or []):
        if not seg:
            continue
        rles = mask_utils.frPyObjects(seg, sample.height, sample.width)
        rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
        out[i] = mask_utils.decode(rle)
    return out


def coco_image_ids(dataset: Dataset) -> list[int]:
    """The samples' own integer ids when they are unique integers, else 1..N."""
    ids = [s.image_id for s in dataset.samples]
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids) and len(set(ids)) == len(
        ids
    ):
        return ids  # type: ignore[return-value]
    return list(range(1, len(ids) + 1))


def _json_segmentation(seg: Any) -> Any:
    """Polygons as they are; an RLE with compressed `bytes` counts as text (JSON has no bytes)."""
    if isinstance(seg, dict) and isinstance(seg.get("counts"), bytes):
        return {**seg, "counts": seg["counts"].decode("ascii")}
    return seg


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


def write_coco(
    dataset: Dataset, json_path: str | Path, image_dir: str | Path | None = None
) -> Path:
    """Write a COCO instances JSON; `file_name`s are relative to `image_dir` (default: the dataset's)."""
    root = Path(image_dir) if image_dir is not None else dataset.image_dir
    category_ids = dataset.category_ids or list(range(1, dataset.num_classes + 1))
    images, annotations = [], []
    for image_id, s in zip(coco_image_ids(dataset), dataset.samples, strict=True):
        images.append(
            {
                "id": image_id,
                "file_name": relative_name(s.image_path, root),
                "width": s.width,
                "height": s.height,
            }
        )
        xywh = np.concatenate([s.boxes[:, :2], s.boxes[:, 2:] - s.boxes[:, :2]], axis=1)
        area = s.area if s.area is not None else xywh[:, 2] * xywh[:, 3]
        crowd = s.iscrowd if s.iscrowd is not None else np.zeros(s.num_boxes, bool)
        for i in range(s.num_boxes):
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_ids[int(s.labels[i])],
                "bbox": _round(xywh[i]),
                "area": float(area[i]),
                "iscrowd": int(crowd[i]),
            }
            if s.masks is not None and s.masks[i]:
                ann["segmentation"] = _json_segmentation(s.masks[i])
            annotations.append(ann)
    categories = [
        {"id": cid, "name": name}
        for cid, name in zip(category_ids, dataset.class_names, strict=True)
    ]
    return write_json(
        {"images": images, "annotations": annotations, "categories": categories}, json_path
    )
