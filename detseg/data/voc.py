"""Pascal VOC XML (LabelImg): the devkit layout or a flat folder of XMLs; reading and writing.

Coordinates are read as written (continuous pixels, no "-1"), so writing them back gives the
same numbers. `difficult` is kept as a per-box flag (VOC AP ignores those boxes).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detseg.data.files import format_number, image_in_folder, read_xml, relative_name
from detseg.data.images import IMAGE_EXTENSIONS, image_size
from detseg.data.sample import Dataset, Sample, Summary, sanitize_boxes
from detseg.errors import DetsegError

__all__ = ["load_voc", "write_voc"]

_COORDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class _Record:
    """One parsed XML before labels are assigned."""

    xml_path: Path
    filename: str | None
    width: int
    height: int
    names: list[str]
    boxes: list[list[float]]
    difficult: list[bool]


def _int_text(node: ET.Element, tag: str) -> int:
    """The integer in `<tag>` of `node`, 0 when absent or not a number."""
    try:
        return int(float(node.findtext(tag, "0").strip()))
    except (ValueError, OverflowError):
        return 0


def _parse(xml_path: Path, summary: Summary) -> _Record:
    """One XML's objects; objects without a numeric box or a name are errors (or skipped when lenient)."""
    root = read_xml(xml_path)
    if root.tag != "annotation":
        raise DetsegError(
            f"not a VOC annotation (root element <{root.tag}>, expected <annotation>)", xml_path
        )
    size = root.find("size")
    width, height = (
        (_int_text(size, "width"), _int_text(size, "height")) if size is not None else (0, 0)
    )
    names, boxes, difficult = [], [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        where = f"{xml_path.name} object #{number}"
        name = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        try:
            box = [float(bndbox.findtext(k).strip()) for k in _COORDS]  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            summary.skip("object without a numeric <bndbox>", where)
            continue
        if not name:
            summary.skip("object without a <name>", where)
            continue
        names.append(name)
        boxes.append(box)
        difficult.append(_int_text(obj, "difficult") == 1)
    filename = (root.findtext("filename") or "").strip() or None
    return _Record(xml_path, filename, width, height, names, boxes, difficult)


def _layout(root: Path, image_dir: str | Path | None, split: str | None) -> tuple[list[Path], Path]:
    """The XML files to read and the image folder, for a devkit root or a flat folder."""
    if not root.is_dir():
        raise DetsegError("VOC annotation folder not found", root)
    devkit = (root / "Annotations").is_dir()
    ann_dir = root / "Annotations" if devkit else root
    images = Path(image_dir) if image_dir is not None else (root / "JPEGImages" if devkit else root)
    if split is None:
        xmls = sorted(ann_dir.glob("*.xml"))
        if not xmls:
            raise DetsegError("no .xml annotation files", ann_dir)
        return xmls, images
    if not devkit:
        raise DetsegError(
            f"split {split!r} needs the devkit layout (Annotations/, ImageSets/Main/)", root
        )
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DetsegError(f"split {split!r} not found (no split file)", split_file)
    ids = [
        line.split()[0]
        for line in split_file.read_text(encoding="utf-8-sig").splitlines()
        if line.strip()
    ]
    xmls = [ann_dir / f"{i}.xml" for i in ids]
    missing = [x for x in xmls if not x.is_file()]
    if missing:
        raise DetsegError(
            f"{len(missing)} listed ids have no annotation file, e.g. {missing[0]}", split_file
        )
    return xmls, images


def _image_path(record: _Record, image_dir: Path, check_images: bool) -> Path:
    """The image of an XML: its <filename> in `image_dir` (never outside it), else the XML's
    stem with an image extension."""
    where = record.xml_path
    candidates = [image_in_folder(image_dir, record.filename, where)] if record.filename else []
    candidates += [image_dir / (record.xml_path.stem + ext) for ext in IMAGE_EXTENSIONS]
    found = next((c for c in candidates if c.is_file()), None) if check_images else candidates[0]
    if found is None:
        raise DetsegError(f"image of {record.xml_path.name} not found", candidates[0])
    return found


def _image_size(record: _Record, image_path: Path, check_images: bool, summary: Summary) -> tuple[int, int]:
    """The image's `(width, height)`: its header's when `check_images` (which must agree with
    `<size>`), else `<size>`; an XML without a numeric `<size>` is an error when strict."""
    width, height = record.width, record.height
    if not (width > 0 and height > 0):
        if not check_images:
            raise DetsegError("no numeric <size> and images are not read", record.xml_path)
        summary.clip("XML without a numeric <size> (size read from the image)", record.xml_path.name, strict_ok=False)
    if not check_images:
        return width, height
    actual = image_size(image_path)
    if width > 0 and height > 0 and (width, height) != actual:
        raise DetsegError(
            f"image is {actual[0]}x{actual[1]} but {record.xml_path.name} says {width}x{height}",
            image_path,
        )
    return actual


def _sample(
    r: _Record, images: Path, check_images: bool, label_of: dict[str, int], summary: Summary
) -> Sample:
    """One XML's Sample: its image found and sized, unknown classes and bad boxes dropped and counted."""
    image_path = _image_path(r, images, check_images)
    width, height = _image_size(r, image_path, check_images, summary)
    for name, count in Counter(n for n in r.names if n not in label_of).items():
        summary.skip(f"object of unknown class {name!r}", r.xml_path.name, count)
    known = np.array([n in label_of for n in r.names], bool)
    boxes, keep = sanitize_boxes(np.array(r.boxes, np.float32), width, height, summary, r.xml_path.name)
    sample = Sample(
        image_path=image_path,
        width=width,
        height=height,
        boxes=boxes,
        labels=[label_of.get(n, -1) for n in r.names],
        difficult=r.difficult,
        image_id=r.xml_path.stem,
    )
    return sample.select(keep & known)


def load_voc(
    root_or_ann_dir: str | Path,
    image_dir: str | Path | None = None,
    split: str | None = None,
    *,
    names: list[str] | None = None,
    check_images: bool = True,
    strict: bool = True,
) -> Dataset:
    """Read VOC XMLs: a devkit root (`Annotations/`, `JPEGImages/`, `ImageSets/Main/<split>.txt`) or a flat folder.

    `names` fixes the classes and their order; by default the sorted set of names found.
    Images default to `JPEGImages/` (devkit) or the XML folder (flat); a `<filename>` outside
    the image folder is an error. Strict (the default): objects of other classes, objects
    without a name or a numeric box, inverted boxes or boxes outside the image, an XML
    without `<size>`, a missing or unreadable image are one-line errors naming the XML;
    with `strict=False` they are skipped (or, for `<size>`, repaired) and counted.
    """
    root = Path(root_or_ann_dir)
    xmls, images = _layout(root, image_dir, split)
    summary = Summary(strict=strict, root=xmls[0].parent if xmls else None)
    records = [_parse(x, summary) for x in xmls]
    class_names = (
        list(names) if names is not None else sorted({n for r in records for n in r.names})
    )
    label_of = {n: i for i, n in enumerate(class_names)}
    samples = []
    for r in records:
        try:
            samples.append(_sample(r, images, check_images, label_of, summary))
        except DetsegError as err:
            summary.reject(err, r.xml_path.name)
    summary.warn(root)
    return Dataset(samples, class_names, summary, image_dir=images)


def _xml(sample: Sample, filename: str, class_names: list[str]) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", sample.width), ("height", sample.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    difficult = (
        sample.difficult if sample.difficult is not None else np.zeros(sample.num_boxes, bool)
    )
    for box, label, diff in zip(sample.boxes, sample.labels, difficult, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[int(label)]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(diff))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(_COORDS, box, strict=True):
            ET.SubElement(bndbox, tag).text = format_number(value)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_voc(dataset: Dataset, out_dir: str | Path, image_dir: str | Path | None = None) -> Path:
    """Write one `<image stem>.xml` per sample into `out_dir` (a flat folder that `load_voc` reads back)."""
    out = Path(out_dir)
    root = Path(image_dir) if image_dir is not None else dataset.image_dir
    filenames = [relative_name(s.image_path, root) for s in dataset.samples]
    stems = Counter(Path(f).stem for f in filenames)
    clash = [s for s, n in stems.items() if n > 1]
    if clash:
        raise DetsegError(
            f"several images share the stem {clash[0]!r}: VOC names XMLs by stem", out
        )
    out.mkdir(parents=True, exist_ok=True)
    for sample, filename in zip(dataset.samples, filenames, strict=True):
        tree = _xml(sample, filename, dataset.class_names)
        tree.write(out / f"{Path(filename).stem}.xml", encoding="utf-8", xml_declaration=False)
    return out
