"""Annotation readers and writers on the real data sets, round trips and `convert` for every pair."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from detseg.data import (
    convert,
    decode_instance_masks,
    load_coco,
    load_masks,
    load_via,
    load_voc,
    load_yolo,
    read_annotations,
    write_coco,
    write_via,
    write_voc,
    write_yolo,
)

from .conftest import BCCD3, FIXTURES
from .helpers import voc_objects

ZERO_AREA = "box with zero width or height (x2==x1 or y2==y1)"

# Readers warn once about what they skipped; the tests check the counts themselves.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# === Real data ===


def test_bccd_voc_matches_the_xml_and_reports_the_two_zero_area_boxes(bccd):
    with pytest.warns(UserWarning, match="skipped 2 x box with zero"):
        dataset = load_voc(bccd)
    xmls = sorted((bccd / "Annotations").glob("*.xml"))
    reference = {x.stem: voc_objects(x) for x in xmls}
    assert len(dataset) == len(xmls) == 364
    assert dataset.class_names == ["Platelets", "RBC", "WBC"]
    assert dataset.summary.skipped == {ZERO_AREA: 2}
    assert sorted(dataset.summary.examples[ZERO_AREA]) == [
        "BloodImage_00338.xml",
        "BloodImage_00343.xml",
    ]
    total = sum(len(objs) for objs in reference.values())
    assert (
        sum(s.num_boxes for s in dataset.samples) == total - 2
    )  # 4888 boxes in the README, minus the two
    for sample in dataset.samples[::25]:
        kept = [(n, b) for n, b in reference[sample.image_id] if b[2] > b[0] and b[3] > b[1]]
        np.testing.assert_array_equal(sample.boxes, [b for _, b in kept])
        assert [dataset.class_names[i] for i in sample.labels] == [n for n, _ in kept]
        assert (sample.width, sample.height) == (640, 480)


def test_bccd_split_files_select_the_listed_ids(bccd):
    dataset = load_voc(bccd, split="test")
    listed = (bccd / "ImageSets/Main/test.txt").read_text().split()
    assert [s.image_id for s in dataset.samples] == listed
    assert all(s.image_path == bccd / "JPEGImages" / f"{s.image_id}.jpg" for s in dataset.samples)


def test_coco_val100_boxes_labels_crowd_and_area_match_pycocotools(coco100):
    path = coco100 / "instances_val2014_100.json"
    dataset = load_coco(path, check_images=False)
    coco = COCO(str(path))
    assert dataset.category_ids == sorted(coco.getCatIds())
    assert len(dataset) == len(coco.getImgIds()) == 100
    for sample in dataset.samples:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=sample.image_id))
        xywh = np.array([a["bbox"] for a in anns], np.float64)
        np.testing.assert_allclose(
            sample.boxes, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), atol=1e-3
        )
        assert [dataset.category_ids[i] for i in sample.labels] == [a["category_id"] for a in anns]
        assert sample.iscrowd.tolist() == [bool(a["iscrowd"]) for a in anns]
        np.testing.assert_allclose(sample.area, [a["area"] for a in anns], rtol=1e-6)
    assert sum(int(s.iscrowd.sum()) for s in dataset.samples) == 9  # the README's 9 crowd RLE masks


def test_coco_instance_masks_decode_like_pycocotools(coco100):
    path = coco100 / "instances_val2014_100.json"
    dataset = load_coco(path, check_images=False)
    coco = COCO(str(path))
    with_crowd = [s for s in dataset.samples if s.iscrowd.any()][:3]
    for sample in with_crowd + dataset.samples[:5]:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=sample.image_id))
        expected = np.stack([coco.annToMask(a) for a in anns])
        np.testing.assert_array_equal(decode_instance_masks(sample), expected)


def test_membrane_masks_pair_images_and_map_255_to_cell(membrane):
    dataset = load_masks(
        membrane / "train/image", membrane / "train/label", ["membrane", "cell"], [0, 255]
    )
    assert len(dataset) == 30 and dataset.summary.num_skipped == dataset.summary.num_clipped == 0
    sample = dataset.samples[0]
    assert sample.semantic_mask_path.name == sample.image_path.name
    lut = dataset.mask_lut()
    assert (lut[0], lut[255], lut[7]) == (0, 1, 255)


# === Fixtures converted from BCCD (committed files, checked against the original XMLs) ===


def _xml_reference(bccd: Path) -> dict[str, list[tuple[str, list[float]]]]:
    return {stem: voc_objects(bccd / "Annotations" / f"{stem}.xml") for stem in BCCD3}


def test_via_fixture_holds_the_bccd_boxes(bccd):
    dataset = load_via(FIXTURES / "bccd3_via.json", bccd / "JPEGImages")
    reference = _xml_reference(bccd)
    assert [s.image_id for s in dataset.samples] == BCCD3
    for sample in dataset.samples:
        np.testing.assert_allclose(
            sample.boxes, [b for _, b in reference[sample.image_id]], atol=1e-3
        )
        assert [dataset.class_names[i] for i in sample.labels] == [
            n for n, _ in reference[sample.image_id]
        ]


def test_yolo_fixture_holds_the_bccd_boxes(bccd, bccd3_images):
    dataset = load_yolo(FIXTURES / "bccd3_yolo", bccd3_images)  # names from classes.txt
    reference = _xml_reference(bccd)
    assert dataset.class_names == ["RBC", "WBC"]
    for sample in dataset.samples:
        np.testing.assert_allclose(
            sample.boxes, [b for _, b in reference[sample.image_id]], atol=1e-3
        )
        assert [dataset.class_names[i] for i in sample.labels] == [
            n for n, _ in reference[sample.image_id]
        ]


# === Round trips and conversion ===

WRITERS = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo, "via": write_via}
DESTINATIONS = {"coco": "out.json", "voc": "xmls", "yolo": "labels", "via": "via.json"}


def _same_annotations(a, b) -> None:
    assert a.class_names == b.class_names
    assert [s.image_path.name for s in a.samples] == [s.image_path.name for s in b.samples]
    for sa, sb in zip(a.samples, b.samples, strict=True):
        np.testing.assert_allclose(sa.boxes, sb.boxes, atol=1e-3)
        np.testing.assert_array_equal(sa.labels, sb.labels)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_writer_then_reader_round_trips_the_boxes(fmt, bccd3_voc, bccd3_images, tmp_path):
    original = load_voc(bccd3_voc, bccd3_images, names=["Platelets", "RBC", "WBC"])
    out = WRITERS[fmt](original, tmp_path / DESTINATIONS[fmt])
    again = read_annotations(fmt, out, bccd3_images, names=original.class_names)
    _same_annotations(original, again)


def test_voc_round_trip_keeps_difficult_and_fractional_coordinates(tmp_path, bccd3_images):
    sample_xml = """<annotation><filename>BloodImage_00000.jpg</filename><size><width>640</width><height>480</height></size>
<object><name>RBC</name><difficult>1</difficult><bndbox><xmin>10.25</xmin><ymin>20.5</ymin><xmax>100.125</xmax><ymax>90</ymax></bndbox></object>
</annotation>"""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "BloodImage_00000.xml").write_text(sample_xml)
    dataset = load_voc(tmp_path / "in", bccd3_images)
    again = load_voc(write_voc(dataset, tmp_path / "out"), bccd3_images)
    np.testing.assert_allclose(again.samples[0].boxes, [[10.25, 20.5, 100.125, 90]], atol=1e-4)
    assert again.samples[0].difficult.tolist() == [True]


def test_coco_round_trip_keeps_ids_crowd_area_and_masks(coco100, tmp_path):
    original = load_coco(coco100 / "instances_val2014_100.json", check_images=False)
    again = load_coco(write_coco(original, tmp_path / "again.json"), check_images=False)
    assert again.category_ids == original.category_ids
    for a, b in zip(original.samples[:20], again.samples[:20], strict=True):
        assert a.image_id == b.image_id
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_array_equal(a.iscrowd, b.iscrowd)
        np.testing.assert_allclose(a.area, b.area, rtol=1e-6)
        np.testing.assert_array_equal(decode_instance_masks(a), decode_instance_masks(b))


@pytest.mark.parametrize("src,dst", list(itertools.permutations(sorted(WRITERS), 2)))
def test_convert_every_pair(src, dst, bccd3_voc, bccd3_images, tmp_path):
    original = load_voc(bccd3_voc, bccd3_images)
    source = WRITERS[src](original, tmp_path / f"src_{DESTINATIONS[src]}")
    report = convert(
        src,
        dst,
        source,
        tmp_path / DESTINATIONS[dst],
        images=bccd3_images,
        names=original.class_names,
    )
    assert (report.images, report.boxes) == (3, 55)
    _same_annotations(
        original, read_annotations(dst, report.output, bccd3_images, names=original.class_names)
    )


def test_coco_file_names_are_relative_to_the_image_folder(bccd3_voc, bccd3_images, tmp_path):
    write_coco(load_voc(bccd3_voc, bccd3_images), tmp_path / "a.json")
    doc = json.loads((tmp_path / "a.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == [f"{s}.jpg" for s in BCCD3]
    assert doc["annotations"][0]["bbox"] == [
        260.0,
        177.0,
        231.0,
        199.0,
    ]  # BloodImage_00000's WBC: 260..491 x 177..376
