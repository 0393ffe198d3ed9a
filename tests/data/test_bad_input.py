"""Bad input: a one-line DetsegError naming the file, or a counted skip/clip - never a crash, never silence."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detseg.data import (
    DetectionLoader,
    load_coco,
    load_masks,
    load_via,
    load_voc,
    load_yolo,
    read_annotations,
)
from detseg.errors import DetsegError

from .conftest import write_image

# Readers warn once about what they skipped; the tests check the counts themselves.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _one_line_error(excinfo: pytest.ExceptionInfo, path: Path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message
    return message


def _voc_xml(filename: str, objects: str, width: int = 64, height: int = 48) -> str:
    return (
        f"<annotation><filename>{filename}</filename>"
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objects}</annotation>"
    )


def _voc_object(name: str, box: tuple[float, float, float, float]) -> str:
    coords = "".join(
        f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
    )
    return f"<object><name>{name}</name><bndbox>{coords}</bndbox></object>"


def _coco(images: list[dict], annotations: list[dict], path: Path) -> Path:
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 3, "name": "cat"}]}
    path.write_text(json.dumps(doc, indent=1))
    return path


# === Missing or undecodable images ===


def test_missing_image_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "a.xml").write_text(_voc_xml("a.jpg", _voc_object("cat", (1, 1, 9, 9))))
    with pytest.raises(DetsegError, match="image of a.xml not found") as exc:
        load_voc(tmp_path)
    _one_line_error(exc, tmp_path / "a.jpg")
    coco = _coco(
        [{"id": 1, "file_name": "gone.jpg", "width": 64, "height": 48}], [], tmp_path / "c.json"
    )
    with pytest.raises(DetsegError, match="image file not found") as exc:
        load_coco(coco)
    _one_line_error(exc, tmp_path / "gone.jpg")
    assert (
        len(load_coco(coco, check_images=False)) == 1
    )  # annotation-only work needs no image files


def test_image_that_does_not_decode_fails_at_load_and_in_the_loader(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    coco = _coco(
        [{"id": 1, "file_name": "broken.jpg", "width": 64, "height": 48}], [], tmp_path / "c.json"
    )
    with pytest.raises(DetsegError, match="not a readable image") as exc:
        load_coco(coco)
    _one_line_error(exc, broken)
    loader = DetectionLoader(load_coco(coco, check_images=False), 32, 1)
    with pytest.raises(DetsegError, match="does not decode") as exc:
        loader[0]
    _one_line_error(exc, broken)


def test_image_size_differing_from_the_annotation_is_an_error(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    (tmp_path / "a.xml").write_text(_voc_xml("a.jpg", "", width=100, height=48))
    with pytest.raises(DetsegError, match="image is 64x48 but a.xml says 100x48") as exc:
        load_voc(tmp_path)
    _one_line_error(exc, tmp_path / "a.jpg")
    unchecked = load_voc(tmp_path, check_images=False)
    with pytest.raises(DetsegError, match="image is 64x48 but its annotation says 100x48") as exc:
        DetectionLoader(unchecked, 32, 1)[0]
    _one_line_error(exc, tmp_path / "a.jpg")


# === Files that do not parse, or are empty ===


def test_xml_that_does_not_parse_names_file_and_line(tmp_path):
    (tmp_path / "a.xml").write_text("<annotation>\n<size>\n<width>3</size>\n</annotation>")
    with pytest.raises(DetsegError, match="XML does not parse at line 3") as exc:
        load_voc(tmp_path)
    _one_line_error(exc, tmp_path / "a.xml")


def test_json_that_does_not_parse_names_file_and_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    for reader in (load_coco, load_via):
        with pytest.raises(DetsegError, match="not valid JSON at line 2 column 12") as exc:
            reader(path)
        _one_line_error(exc, path)


@pytest.mark.parametrize("fmt,name", [("coco", "c.json"), ("via", "v.json"), ("voc", "a.xml")])
def test_empty_annotation_file_is_an_error(fmt, name, tmp_path):
    path = tmp_path / name
    path.write_text("  \n")
    with pytest.raises(DetsegError, match="annotation file is empty") as exc:
        read_annotations(fmt, tmp_path if fmt == "voc" else path, tmp_path)
    _one_line_error(exc, path)


def test_empty_yolo_label_file_means_no_objects(tmp_path):
    write_image(tmp_path / "images/a.jpg")
    write_image(tmp_path / "images/b.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/a.txt").write_text("")
    dataset = load_yolo(tmp_path / "labels", tmp_path / "images", ["cat"])
    assert [s.num_boxes for s in dataset.samples] == [0, 0]
    assert dataset.summary.notes == {"images without a label file (no objects)": 1}  # b.jpg
    assert dataset.summary.num_skipped == 0


# === Bad boxes: clipped or dropped, and counted ===


def test_bad_voc_boxes_are_dropped_or_clipped_and_counted(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    objects = "".join(
        _voc_object("cat", box)
        for box in [
            (1, 1, 9, 9),
            (20, 5, 20, 9),
            (30, 5, 25, 9),
            (-5, 10, 70, 20),
            (80, 80, 90, 90),
        ]
    )
    (tmp_path / "a.xml").write_text(_voc_xml("a.jpg", objects))
    with pytest.raises(DetsegError, match=r"inverted box \(x2<x1 or y2<y1\) \[30.0, 5.0, 25.0, 9.0\]") as exc:
        load_voc(tmp_path)  # strict: the first box that loses data stops loading
    _one_line_error(exc, tmp_path / "a.xml")
    with pytest.warns(UserWarning, match="a.xml") as warned:
        dataset = load_voc(tmp_path, strict=False)
    assert len(warned) == 1
    np.testing.assert_array_equal(dataset.samples[0].boxes, [[1, 1, 9, 9], [0, 10, 64, 20]])
    skipped, clipped = dataset.summary.skipped, dataset.summary.clipped
    assert skipped["box with zero width or height (x2==x1 or y2==y1)"] == 1
    assert skipped["inverted box (x2<x1 or y2<y1)"] == 1
    assert skipped["box entirely outside the image"] == 1
    assert clipped["box reaching outside the image, clipped to it"] == 1
    text = dataset.summary_text()
    assert "skipped 1 x box with zero" in text and "clipped 1 x box reaching outside" in text


def test_bad_yolo_lines_are_counted_with_file_and_line(tmp_path):
    write_image(tmp_path / "images/a.jpg", 100, 50)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"  # box [40, 20, 60, 30]
        "7 0.5 0.5 0.2 0.2\n"  # class 7 of 2
        "0 0.5 0.5\n"  # too few values
        "x 0.5 0.5 0.2 0.2\n"  # not a number
        "1 0.1 0.1 0.3 0.1 0.2 0.4\n"  # a polygon: box [10, 5, 30, 20]
    )
    (tmp_path / "labels/orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DetsegError, match="class id outside 0..1") as exc:
        load_yolo(tmp_path / "labels", tmp_path / "images", ["a", "b"])
    _one_line_error(exc, tmp_path / "labels/a.txt:2")
    dataset = load_yolo(tmp_path / "labels", tmp_path / "images", ["a", "b"], strict=False)
    sample = dataset.samples[0]
    np.testing.assert_allclose(sample.boxes, [[40, 20, 60, 30], [10, 5, 30, 20]], atol=1e-4)
    assert sample.labels.tolist() == [0, 1]
    assert sample.masks[0] is None and np.allclose(sample.masks[1][0], [10, 5, 30, 5, 20, 20])
    summary = dataset.summary
    assert summary.skipped["label line with a class id outside 0..1"] == 1
    assert summary.examples["label line with a class id outside 0..1"] == ["a.txt:2"]
    assert summary.examples["label line that is not numbers"] == ["a.txt:4"]
    assert (
        summary.skipped[
            "label line with a wrong number of values (need 5, or 1 + an even count >= 6)"
        ]
        == 1
    )
    assert summary.examples["label file without an image"] == ["orphan.txt"]


# === Unknown classes ===


def test_unknown_class_names_are_skipped_and_counted(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    objects = (
        _voc_object("cat", (1, 1, 9, 9))
        + _voc_object("dog", (2, 2, 9, 9))
        + _voc_object("dog", (3, 3, 9, 9))
    )
    (tmp_path / "a.xml").write_text(_voc_xml("a.jpg", objects))
    with pytest.raises(DetsegError, match="object of unknown class 'dog'") as exc:
        load_voc(tmp_path, names=["cat"])
    _one_line_error(exc, tmp_path / "a.xml")
    dataset = load_voc(tmp_path, names=["cat"], strict=False)
    assert dataset.samples[0].labels.tolist() == [0]
    assert dataset.summary.skipped == {"object of unknown class 'dog'": 2}
    via = {
        "a.jpg1": {
            "filename": "a.jpg",
            "regions": [
                {
                    "shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 5, "height": 5},
                    "region_attributes": {"class": "cow"},
                },
                {
                    "shape_attributes": {"name": "point", "cx": 1, "cy": 1},
                    "region_attributes": {"class": "cat"},
                },
            ],
        }
    }
    (tmp_path / "v.json").write_text(json.dumps(via))
    dataset = load_via(tmp_path / "v.json", names=["cat"], strict=False)
    assert dataset.samples[0].num_boxes == 0
    assert dataset.summary.skipped == {
        "region of unknown class 'cow'": 1,
        "region without a box shape (point, or malformed)": 1,
    }


def test_coco_annotations_of_unknown_images_or_categories_are_counted(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10]},
        {"id": 2, "image_id": 9, "category_id": 3, "bbox": [1, 2, 10, 10]},
        {"id": 3, "image_id": 1, "category_id": 4, "bbox": [1, 2, 10, 10]},
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [1, 2, "wide", 10]},
    ]
    path = _coco(
        [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}], anns, tmp_path / "c.json"
    )
    with pytest.raises(DetsegError, match=r"annotation #1 \(id 2\): annotation of an unknown image id 9") as exc:
        load_coco(path)
    _one_line_error(exc, path)
    dataset = load_coco(path, strict=False)
    np.testing.assert_array_equal(dataset.samples[0].boxes, [[1, 2, 11, 12]])
    assert dataset.summary.skipped == {
        "annotation of an unknown image id": 1,
        "annotation of an unknown category id": 1,
        "annotation with a malformed bbox (need 4 numbers) or area": 1,
    }


def test_duplicated_coco_image_ids_are_an_error(tmp_path):
    images = [
        {"id": 5, "file_name": "a.jpg", "width": 8, "height": 8},
        {"id": 5, "file_name": "b.jpg", "width": 8, "height": 8},
    ]
    path = _coco(images, [], tmp_path / "c.json")
    with pytest.raises(DetsegError, match=r"image #1 \(id 5\): duplicated image id") as exc:
        load_coco(path, check_images=False)
    _one_line_error(exc, path)
    lenient = load_coco(path, check_images=False, strict=False)
    assert [s.image_path.name for s in lenient.samples] == ["a.jpg"]  # the first entry is kept
    assert lenient.summary.skipped == {"duplicated image id": 1}


# === Masks ===


def test_mask_of_another_size_is_an_error(tmp_path):
    write_image(tmp_path / "images/a.png", 64, 48)
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks/a.png"), np.zeros((40, 64), np.uint8))
    with pytest.raises(DetsegError, match="mask is 64x40 but its image is 64x48") as exc:
        load_masks(tmp_path / "images", tmp_path / "masks", ["bg", "fg"])
    _one_line_error(exc, tmp_path / "masks/a.png")


def test_unpaired_masks_and_unknown_mask_values_are_counted(tmp_path):
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        write_image(tmp_path / f"images/{name}.jpg", 16, 8)
    mask = np.zeros((8, 16), np.uint8)
    mask[0, 0] = 7  # neither 0 nor 1
    cv2.imwrite(str(tmp_path / "masks/a.png"), mask)
    cv2.imwrite(str(tmp_path / "masks/c.png"), mask)
    with pytest.raises(DetsegError, match=r"mask with pixel values outside \[0, 1\].*: \[7\]") as exc:
        load_masks(tmp_path / "images", tmp_path / "masks", ["bg", "fg"])
    _one_line_error(exc, tmp_path / "masks/a.png")
    dataset = load_masks(tmp_path / "images", tmp_path / "masks", ["bg", "fg"], strict=False)
    assert [s.image_id for s in dataset.samples] == ["a"]
    assert dataset.summary.skipped == {"image without a mask": 1, "mask without an image": 1}
    assert dataset.summary.clipped == {
        "mask with pixel values outside [0, 1] (those pixels are ignored)": 1
    }


def test_json_with_a_byte_order_mark_loads(tmp_path):
    path = _coco(
        [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}], [], tmp_path / "c.json"
    )
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as some Windows tools save JSON
    assert len(load_coco(path, check_images=False)) == 1


# === A corrupt image met by a loader worker during training ===


def _corrupt_pixels(path: Path) -> None:
    """Keep the PNG header (so loading the annotations passes) but break the pixel data."""
    data = bytearray(path.read_bytes())
    data[60:80] = bytes(20)
    path.write_bytes(bytes(data))


def _fit_on(dataset, strict: bool):
    """Two epochs of a tiny model on batches of `dataset` made by two loader worker threads."""
    import keras

    loader = DetectionLoader(
        dataset, 32, 2, encoder=lambda boxes, labels: np.zeros((len(boxes), 1), np.float32),
        shuffle=True, workers=2, strict=strict,
    )  # fmt: skip
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model.fit(loader, epochs=2, shuffle=False, verbose=0)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_a_corrupt_image_met_by_a_loader_worker(tmp_path, strict):
    images = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30} for i in range(4)]
    for i in range(4):
        write_image(tmp_path / f"{i}.png", 40, 30, seed=i)
    _corrupt_pixels(tmp_path / "2.png")
    dataset = load_coco(_coco(images, [], tmp_path / "c.json"))  # headers are fine
    if strict:
        with pytest.raises(DetsegError, match="image does not decode") as exc:
            _fit_on(dataset, strict)
        _one_line_error(exc, tmp_path / "2.png")
    else:
        history = _fit_on(dataset, strict)
        assert len(history.history["loss"]) == 2  # training went on
        reason = "image skipped by the loader: image does not decode (corrupt or not an image)"
        assert dataset.summary.skipped == {reason: 1}  # counted once, not once per epoch
        assert dataset.summary.examples[reason] == [str(tmp_path / "2.png")]
