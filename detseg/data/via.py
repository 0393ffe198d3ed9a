"""VGG Image Annotator (VIA 2.x) JSON: a saved project or its exported annotations.

Regions are `rect`, `polygon`/`polyline`, `circle` or `ellipse` shapes; the class is a
region attribute (by default the file's only one, or `class_attribute`). Polygons are kept as
instance masks. VIA stores file sizes in bytes, not image sizes: those come from the images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from detseg.data.files import image_in_folder, read_json, relative_name, write_json
from detseg.data.images import image_size
from detseg.data.sample import Dataset, Sample, Summary, sanitize_boxes
from detseg.errors import DetsegError

__all__ = ["load_via", "write_via"]

_DEFAULT_ATTRIBUTE = "class"


def _entries(doc: Any, path: Path) -> list[dict[str, Any]]:
    """The per-image entries of a project (`_via_img_metadata`) or an export (the top-level dict)."""
    if not isinstance(doc, dict):
        raise DetsegError("a VIA file is a JSON object of images", path)
    if "_via_img_metadata" in doc:
        doc = doc["_via_img_metadata"]
    elif "project" in doc and "metadata" in doc:
        raise DetsegError("VIA 3 projects are not supported: export VIA 2 JSON annotations", path)
    entries = list(doc.values()) if isinstance(doc, dict) else None
    if entries is None or not all(
        isinstance(e, dict) and isinstance(e.get("filename"), str) for e in entries
    ):
        raise DetsegError(
            "every VIA entry needs a text 'filename' (not a VIA 2.x file: unknown version or layout)",
            path,
        )
    return entries


def _regions(entry: dict[str, Any]) -> list[Any]:
    """An entry's regions (VIA 1.x kept them in a dict); anything else is no regions."""
    regions = entry.get("regions") or []
    if isinstance(regions, dict):
        return list(regions.values())
    return regions if isinstance(regions, list) else []


def _attributes(region: Any, key: str) -> dict[str, Any]:
    """A region's `shape_attributes` / `region_attributes` dict ({} when absent or malformed)."""
    value = region.get(key) if isinstance(region, dict) else None
    return value if isinstance(value, dict) else {}


def _class_attribute(
    entries: list[dict[str, Any]], requested: str | None, path: Path
) -> str | None:
    """The region attribute naming the class: the requested one, 'class', or the file's only one."""
    keys = {k for e in entries for r in _regions(e) for k in _attributes(r, "region_attributes")}
    if requested is not None:
        return requested
    if _DEFAULT_ATTRIBUTE in keys or not keys:
        return _DEFAULT_ATTRIBUTE
    if len(keys) == 1:
        return keys.pop()
    raise DetsegError(
        f"several region attributes {sorted(keys)}: choose the class one with class_attribute", path
    )


def _class_value(value: Any) -> str | None:
    """A region's class from a text attribute or a checkbox/radio dict with one option set."""
    if isinstance(value, dict):
        chosen = [k for k, v in value.items() if v]
        return chosen[0] if len(chosen) == 1 else None
    if value is None:
        return None
    return str(value).strip() or None


def _shape_box(shape: dict[str, Any]) -> tuple[list[float], list[list[float]] | None]:
    """xyxy box and polygon mask (or None) of a VIA shape; ValueError/KeyError/TypeError when malformed."""
    kind = shape.get("name")
    if kind == "rect":
        x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
        return [x, y, x + w, y + h], None
    if kind in ("polygon", "polyline"):
        xs = np.asarray(shape["all_points_x"], np.float64)
        ys = np.asarray(shape["all_points_y"], np.float64)
        if len(xs) < 3 or len(xs) != len(ys):
            raise ValueError("polygon needs 3+ points")
        return [xs.min(), ys.min(), xs.max(), ys.max()], [
            np.stack([xs, ys], 1).reshape(-1).tolist()
        ]
    if kind == "circle":
        cx, cy, r = (float(shape[k]) for k in ("cx", "cy", "r"))
        return [cx - r, cy - r, cx + r, cy + r], None
    if kind == "ellipse":
        cx, cy, rx, ry = (float(shape[k]) for k in ("cx", "cy", "rx", "ry"))
        theta = float(shape.get("theta", 0.0))
        half_w = np.hypot(rx * np.cos(theta), ry * np.sin(theta))
        half_h = np.hypot(rx * np.sin(theta), ry * np.cos(theta))
        return [cx - half_w, cy - half_h, cx + half_w, cy + half_h], None
    raise ValueError(f"shape {kind!r} has no box")


def _parse_regions(
    entry: dict[str, Any], where: str, attribute: str, default_class: str | None, summary: Summary
) -> tuple[list[list[float]], list[str], list[Any]]:
    """Boxes, class names and polygon masks of an entry's regions; regions without a box
    shape or a class are errors (or skipped and counted when lenient)."""
    boxes, classes, masks = [], [], []
    for number, region in enumerate(_regions(entry), start=1):
        at = f"{where} region #{number}"
        name = _class_value(_attributes(region, "region_attributes").get(attribute)) or default_class
        try:
            box, mask = _shape_box(_attributes(region, "shape_attributes"))
        except (KeyError, TypeError, ValueError, OverflowError):
            summary.skip("region without a box shape (point, or malformed)", at)
            continue
        if name is None:
            summary.skip(f"region without a {attribute!r} attribute", at)
            continue
        boxes.append(box)
        classes.append(name)
        masks.append(mask)
    return boxes, classes, masks


def _sample(
    entry: dict[str, Any],
    parsed: tuple[list[list[float]], list[str], list[Any]],
    where: str,
    image_dir: Path,
    label_of: dict[str, int],
    summary: Summary,
) -> Sample:
    """One entry's Sample: its image (inside `image_dir`) sized, unknown classes and bad boxes dropped."""
    boxes, classes, masks = parsed
    image_path = image_in_folder(image_dir, entry["filename"], summary.root / where if summary.root else where)
    width, height = image_size(image_path)
    known = np.array([c in label_of for c in classes], bool)
    for name in sorted({c for c in classes if c not in label_of}):
        summary.skip(f"region of unknown class {name!r}", where, classes.count(name))
    clipped, keep = sanitize_boxes(np.array(boxes, np.float32), width, height, summary, where)
    sample = Sample(
        image_path,
        width,
        height,
        clipped,
        [label_of.get(c, -1) for c in classes],
        masks=masks if any(m is not None for m in masks) else None,
        image_id=image_path.stem,
    )
    return sample.select(keep & known)


def load_via(
    json_path: str | Path,
    image_dir: str | Path | None = None,
    *,
    names: list[str] | None = None,
    class_attribute: str | None = None,
    strict: bool = True,
) -> Dataset:
    """Read a VIA 2.x JSON; `image_dir` defaults to the JSON's folder (a `filename` outside it is an error).

    `names` fixes the classes and their order (with a single name, regions without a class
    attribute get it); by default the sorted names found. Strict (the default): regions
    without a box shape or a class, of another class, inverted or outside the image, and
    missing or unreadable images are one-line errors naming the file, image and region;
    with `strict=False` they are skipped and counted.
    """
    path = Path(json_path)
    entries = _entries(read_json(path), path)
    image_dir = Path(image_dir) if image_dir is not None else path.parent
    attribute = _class_attribute(entries, class_attribute, path)
    default_class = names[0] if names is not None and len(names) == 1 else None
    summary = Summary(strict=strict, root=path.parent)
    wheres = [f"{path.name} image {e['filename']!r}" for e in entries]
    parsed = [
        _parse_regions(e, where, attribute, default_class, summary)
        for e, where in zip(entries, wheres, strict=True)
    ]
    class_names = (
        list(names) if names is not None else sorted({c for _, cs, _ in parsed for c in cs})
    )
    label_of = {n: i for i, n in enumerate(class_names)}
    samples = []
    for entry, regions, where in zip(entries, parsed, wheres, strict=True):
        try:
            samples.append(_sample(entry, regions, where, image_dir, label_of, summary))
        except DetsegError as err:
            summary.reject(err, where)
    summary.warn(path)
    return Dataset(samples, class_names, summary, image_dir=image_dir)


def write_via(
    dataset: Dataset,
    json_path: str | Path,
    image_dir: str | Path | None = None,
    class_attribute: str = _DEFAULT_ATTRIBUTE,
) -> Path:
    """Write VIA 2.x exported annotations: one `rect` region per box, the class in `class_attribute`."""
    root = Path(image_dir) if image_dir is not None else dataset.image_dir
    doc = {}
    for s in dataset.samples:
        filename = relative_name(s.image_path, root)
        size = s.image_path.stat().st_size if s.image_path.is_file() else -1
        regions = [
            {
                "shape_attributes": {
                    "name": "rect",
                    "x": round(float(x1), 4),
                    "y": round(float(y1), 4),
                    "width": round(float(x2 - x1), 4),
                    "height": round(float(y2 - y1), 4),
                },
                "region_attributes": {class_attribute: dataset.class_names[int(label)]},
            }
            for (x1, y1, x2, y2), label in zip(s.boxes, s.labels, strict=True)
        ]
        doc[f"{filename}{size}"] = {
            "filename": filename,
            "size": size,
            "regions": regions,
            "file_attributes": {},
        }
    return write_json(doc, json_path)
