"""Read a COCO ground-truth file and a COCO results file into evaluation tables, with the
conventions of pycocotools (`COCO` + `COCO.loadRes`), and clear errors naming the file.

pycocotools conventions kept here, because they change the numbers:
- images and categories are evaluated in sorted-id order; every image of `images` counts,
  and every category of `categories` (one without ground truth scores -1, left out of means);
- ground-truth `area` is the annotation's own; `iscrowd` marks ignore regions; a match to
  a ground truth whose `id` is 0 counts as no match (pycocotools records matches by id);
- if the *first* result has a non-empty `bbox`, every result's area is `w * h` (even for
  segm), otherwise the mask area and box of its `segmentation`;
- results on a category absent from `categories` are not evaluated (counted in the notes);
  results on an image absent from `images` are an error.
Departures, where pycocotools would crash: a missing ground-truth `area` becomes the box
(or mask) area and a missing `id` is accepted (both counted in the notes), a missing
`iscrowd` is 0, and an empty results list scores 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from detseg.errors import DetsegError
from detseg.metrics.tables import DetectionTable, GroundTruthTable

IOU_TYPES = ("bbox", "segm")


@dataclass
class CocoGroundTruth:
    """A ground-truth file as tables, with the id orders the evaluation uses."""

    table: GroundTruthTable
    image_ids: np.ndarray  # sorted unique image ids; index = image index in the tables
    category_ids: np.ndarray  # sorted unique category ids; index = category index
    class_names: list[str]
    image_sizes: dict  # image id -> (height, width), for polygon masks
    notes: list[str] = field(default_factory=list)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing file or a syntax error is a DetsegError naming the file
    (with the line and column of the error)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DetsegError("file not found", path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DetsegError(f"cannot read the file ({err})", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DetsegError(
            f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}", path
        ) from None


def _column(records: list, key: str, what: str, source, default=None, dtype=None) -> np.ndarray:
    """`np.array([r[key] for r in records])` (or `r.get(key, default)`), failing with the
    index of the first bad record."""
    try:
        getter = itemgetter(key) if default is None else (lambda r: r.get(key, default))
        if dtype is not None:
            return np.fromiter(map(getter, records), dtype=dtype, count=len(records))
        return np.array(list(map(getter, records)))
    except (KeyError, TypeError, ValueError, AttributeError):
        _explain(records, key, what, source, default, dtype)
        raise


def _explain(records: list, key: str, what: str, source, default=None, dtype=None) -> None:
    """Raise a DetsegError naming the first record whose `key` is missing or invalid."""
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise DetsegError(f"{what} {i} is not a JSON object", source)
        if key not in r and default is None:
            raise DetsegError(f"{what} {i} has no {key!r}", source)
        value = r.get(key, default)
        try:
            array = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError):
            array = None
        if array is None or (key == "bbox" and array.shape != (4,)):
            expected = " (expected [x, y, width, height])" if key == "bbox" else ""
            raise DetsegError(f"{what} {i} has an invalid {key!r}: {value!r}{expected}", source)


def _boxes(records: list, what: str, source) -> np.ndarray:
    """`[N, 4]` float64 xywh boxes of the records' `bbox`."""
    lists = _column(records, "bbox", what, source, dtype=object)
    try:
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        if np.all(lengths == 4):
            flat = np.fromiter(chain.from_iterable(lists), dtype=np.float64, count=4 * len(lists))
            return flat.reshape(-1, 4)
    except (TypeError, ValueError):
        pass
    _explain(records, "bbox", what, source, dtype=np.float64)
    raise AssertionError("unreachable: _explain raises on the bad bbox")


def _list_field(data: dict, key: str, source, required: bool = True) -> list:
    if key not in data:
        if required:
            raise DetsegError(f"not a COCO dataset: no {key!r} list", source)
        return []
    value = data[key]
    if not isinstance(value, list):
        raise DetsegError(f"{key!r} must be a list, not {type(value).__name__}", source)
    return value


def _index_of(ids: np.ndarray, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `ids` in `sorted_ids`, and whether each id is there at all."""
    nowhere = np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    if len(sorted_ids) == 0:
        return nowhere
    try:
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    except TypeError:  # ids of another type (e.g. strings against integers): none match
        return nowhere
    return pos.astype(np.int64), sorted_ids[pos] == ids


def _to_rle(segmentation, image_id, sizes: dict, what: str, source):
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as compressed RLE,
    as `COCO.annToRLE` converts it; polygons and uncompressed RLE need the image size."""
    if isinstance(segmentation, dict) and not isinstance(segmentation.get("counts"), list):
        if "counts" not in segmentation or "size" not in segmentation:
            raise DetsegError(f"{what} has a 'segmentation' that is not RLE or polygons", source)
        return segmentation
    if image_id not in sizes:
        raise DetsegError(
            f"{what} has a polygon or uncompressed RLE 'segmentation' but its image "
            f"{image_id!r} has no 'height'/'width'",
            source,
        )
    height, width = sizes[image_id]
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return mask_utils.frPyObjects(segmentation, height, width)


def mask_areas(masks: list) -> np.ndarray:
    """Pixel areas of RLE masks. pycocotools 2.0.11 `mask.area` overflows on lists of 256
    or more (it sizes its output with a uint8), so it is called in chunks of 255."""
    chunks = [mask_utils.area(masks[i : i + 255]) for i in range(0, len(masks), 255)]
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)


def _masks(records: list, index: np.ndarray, sizes: dict, what: str, source) -> list:
    masks = []
    for i, r in zip(index, records, strict=True):
        if "segmentation" not in r:
            raise DetsegError(f"{what} {i} has no 'segmentation'", source)
        masks.append(_to_rle(r["segmentation"], r["image_id"], sizes, f"{what} {i}", source))
    return masks


def load_coco_ground_truth(
    data: dict | str | Path, *, iou_type: str = "bbox", source: str | Path | None = None
) -> CocoGroundTruth:
    """A COCO dataset (a path or its parsed dict) as ground-truth tables."""
    if iou_type not in IOU_TYPES:
        raise DetsegError(f"iou_type must be one of {IOU_TYPES}, not {iou_type!r}")
    if not isinstance(data, dict):
        source = data if source is None else source
        data = read_json(data)
    if not isinstance(data, dict):
        raise DetsegError("not a COCO dataset: the top level is not a JSON object", source)
    images = _list_field(data, "images", source)
    categories = _list_field(data, "categories", source)
    annotations = _list_field(data, "annotations", source, required=False)
    notes: list[str] = []

    image_ids = np.unique(_column(images, "id", "image", source))
    cat_ids_raw = _column(categories, "id", "category", source)
    category_ids, first = np.unique(cat_ids_raw, return_index=True)
    class_names = [str(categories[i].get("name", categories[i]["id"])) for i in first]
    sizes = {
        im["id"]: (int(im["height"]), int(im["width"]))
        for im in images
        if isinstance(im.get("height"), (int, float)) and isinstance(im.get("width"), (int, float))
    }

    img = _column(annotations, "image_id", "annotation", source)
    cat = _column(annotations, "category_id", "annotation", source)
    img_index, img_known = _index_of(img, image_ids)
    cat_index, cat_known = _index_of(cat, category_ids)
    for known, what in ((img_known, "image ids"), (cat_known, "category ids")):
        if not np.all(known):
            notes.append(
                f"{np.count_nonzero(~known)} ground-truth annotations on {what} not listed in "
                f"the file were ignored (pycocotools ignores them too)"
            )
    keep = np.flatnonzero(img_known & cat_known)
    anns = [annotations[i] for i in keep]
    crowd = _column(anns, "iscrowd", "annotation", source, default=0).astype(bool)
    masks = _masks(anns, keep, sizes, "annotation", source) if iou_type == "segm" else None
    boxes = _boxes(anns, "annotation", source) if anns else np.zeros((0, 4))
    area = _column(anns, "area", "annotation", source, default=np.nan, dtype=np.float64)
    missing_area = np.isnan(area)
    if missing_area.any():
        fallback = mask_areas(masks) if masks else boxes[:, 2] * boxes[:, 3]
        area[missing_area] = np.asarray(fallback, dtype=np.float64)[missing_area]
        notes.append(
            f"{np.count_nonzero(missing_area)} ground-truth annotations had no 'area'; "
            f"their {'mask' if masks is not None else 'box'} area was used"
        )
    missing_id = np.array([("id" not in a) for a in anns], dtype=bool)
    if missing_id.any():
        notes.append(f"{np.count_nonzero(missing_id)} ground-truth annotations had no 'id'")
    difficult = _column(anns, "difficult", "annotation", source, default=0).astype(bool)
    table = GroundTruthTable(
        image=img_index[keep],
        category=cat_index[keep],
        boxes=boxes,
        area=area,
        crowd=crowd,
        difficult=difficult,
        zero_id=np.array([a.get("id") == 0 for a in anns], dtype=bool),
        masks=masks,
    )
    return CocoGroundTruth(table, image_ids, category_ids, class_names, sizes, notes)


def load_coco_results(
    results: list | dict | str | Path,
    gt: CocoGroundTruth,
    *,
    iou_type: str = "bbox",
    source: str | Path | None = None,
) -> tuple[DetectionTable, list[str]]:
    """A COCO results list (or a dataset-style dict whose annotations carry `score`; a path
    to either) as a detection table, following `COCO.loadRes`. Returns the table and notes."""
    if not isinstance(results, (list, dict)):
        source = results if source is None else source
        results = read_json(results)
    if isinstance(results, dict):
        if "annotations" not in results:
            raise DetsegError(
                "detections must be a COCO results list or a dataset with 'annotations'", source
            )
        results = _list_field(results, "annotations", source)
    if not isinstance(results, list):
        raise DetsegError("detections must be a COCO results list", source)
    notes: list[str] = []
    img = _column(results, "image_id", "result", source)
    cat = _column(results, "category_id", "result", source)
    scores = _column(results, "score", "result", source, dtype=np.float64)
    img_index, img_known = _index_of(img, gt.image_ids)
    if not np.all(img_known):
        unknown = np.unique(img[~img_known])
        raise DetsegError(
            f"{len(unknown)} image ids of the results are not in the ground truth "
            f"(for example {unknown[:5].tolist()})",
            source,
        )
    cat_index, cat_known = _index_of(cat, gt.category_ids)
    if not np.all(cat_known):
        notes.append(
            f"{np.count_nonzero(~cat_known)} detections on category ids not in the ground "
            f"truth were ignored (pycocotools ignores them too): "
            f"{np.unique(cat[~cat_known])[:10].tolist()}"
        )
    keep = np.flatnonzero(cat_known)
    kept = [results[i] for i in keep]
    box_branch = bool(results) and isinstance(results[0], dict) and bool(results[0].get("bbox"))
    masks = None
    if iou_type == "segm" or not box_branch:
        masks = _masks(kept, keep, gt.image_sizes, "result", source)
    if box_branch:
        boxes = _boxes(kept, "result", source) if kept else np.zeros((0, 4))
        area = boxes[:, 2] * boxes[:, 3]
    elif masks:
        area = mask_areas(masks)
        boxes = np.asarray(mask_utils.toBbox(masks), dtype=np.float64).reshape(-1, 4)
    else:
        area, boxes = np.zeros(0), np.zeros((0, 4))
    table = DetectionTable(
        image=img_index[keep],
        category=cat_index[keep],
        boxes=boxes,
        scores=scores[keep],
        area=area,
        masks=masks if iou_type == "segm" else None,
    )
    return table, notes
