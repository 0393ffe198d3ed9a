"""Property tests of the annotation readers and writers (hypothesis).

1. Random valid datasets written in each box format read back with the same boxes (within
   the format's 1e-4 text precision), labels and (COCO) polygon masks.
2. Random byte mutations of valid files (annotations, an image, a mask) make the readers
   raise nothing but `DetsegError`, in strict and in lenient mode.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detseg.data import (
    Dataset,
    Sample,
    load_coco,
    load_masks,
    load_via,
    load_voc,
    load_yolo,
    write_coco,
    write_via,
    write_voc,
    write_yolo,
)
from detseg.errors import DetsegError

from .conftest import write_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # lenient readers warn

NAMES = ["cat", "dog", "eel"]
EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# === Random valid datasets ===


@st.composite
def boxes_in(draw: st.DrawFn, width: int, height: int) -> list[float]:
    """An xyxy box inside a `width` x `height` image, on a 0.01 px grid, at least 0.5 px wide and high."""
    x1 = draw(st.integers(0, width * 100 - 50))
    y1 = draw(st.integers(0, height * 100 - 50))
    x2 = draw(st.integers(x1 + 50, width * 100))
    y2 = draw(st.integers(y1 + 50, height * 100))
    return [x1 / 100, y1 / 100, x2 / 100, y2 / 100]


@st.composite
def datasets(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[list[list[float]]], list[list[int]], int]:
    """(image sizes, boxes per image, labels per image, number of classes)."""
    num_classes = draw(st.integers(1, len(NAMES)))
    sizes = draw(st.lists(st.tuples(st.integers(8, 48), st.integers(8, 48)), min_size=1, max_size=3))
    boxes = [draw(st.lists(boxes_in(w, h), max_size=4)) for w, h in sizes]
    labels = [draw(st.lists(st.integers(0, num_classes - 1), min_size=len(b), max_size=len(b))) for b in boxes]
    return sizes, boxes, labels, num_classes


def _build(folder: Path, drawn: tuple, polygons: bool) -> Dataset:
    """The Dataset of `drawn` with its PNG images written into `folder`."""
    sizes, boxes, labels, num_classes = drawn
    samples = []
    for i, ((w, h), b, lab) in enumerate(zip(sizes, boxes, labels, strict=True)):
        path = write_image(folder / f"im{i}.png", w, h, seed=i)
        masks = [[[x1, y1, x2, y1, x2, y2, x1, y2]] for x1, y1, x2, y2 in b] if polygons else None
        samples.append(Sample(path, w, h, np.array(b, np.float32).reshape(-1, 4), lab, masks=masks))
    return Dataset(samples, NAMES[:num_classes], image_dir=folder)


# One (write, read) pair per box format; the reader gets the folder the writer wrote into.
ROUND_TRIPS: dict[str, tuple[Callable[[Dataset, Path], object], Callable[[Path, list[str]], Dataset]]] = {
    "coco": (lambda ds, d: write_coco(ds, d / "c.json"), lambda d, names: load_coco(d / "c.json", d)),
    "voc": (lambda ds, d: write_voc(ds, d / "voc"), lambda d, names: load_voc(d / "voc", d, names=names)),
    "yolo": (lambda ds, d: write_yolo(ds, d / "labels"), lambda d, names: load_yolo(d / "labels", d)),
    "via": (lambda ds, d: write_via(ds, d / "v.json"), lambda d, names: load_via(d / "v.json", d, names=names)),
}


@pytest.mark.parametrize("fmt", sorted(ROUND_TRIPS))
@EXAMPLES
@given(drawn=datasets())
def test_written_annotations_read_back_the_same(fmt: str, drawn: tuple):
    write, read = ROUND_TRIPS[fmt]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        original = _build(folder, drawn, polygons=fmt == "coco")
        write(original, folder)
        back = read(folder, original.class_names)
    assert back.class_names == original.class_names
    assert back.summary.num_skipped == back.summary.num_clipped == 0
    assert [s.image_path.name for s in back.samples] == [s.image_path.name for s in original.samples]
    for got, want in zip(back.samples, original.samples, strict=True):
        assert (got.width, got.height) == (want.width, want.height)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=2e-4)
        assert got.labels.tolist() == want.labels.tolist()
        if want.masks is not None and want.num_boxes:
            np.testing.assert_allclose(np.array(got.masks, np.float64), np.array(want.masks), atol=1e-6)


# === Random byte mutations ===


@st.composite
def mutations(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """1-4 edits (flip / delete / insert a byte, or truncate), at positions taken modulo the length."""
    edit = st.tuples(st.sampled_from(["flip", "delete", "insert", "truncate"]), st.integers(0, 1 << 20), st.integers(0, 255))
    return draw(st.lists(edit, min_size=1, max_size=4))


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """`data` after the byte edits."""
    out = bytearray(data)
    for op, position, value in edits:
        i = position % (len(out) + 1)
        if op == "insert":
            out[i:i] = bytes([value])
        elif op == "truncate":
            del out[i:]
        elif i < len(out):
            if op == "flip":
                out[i] ^= value or 1
            else:
                del out[i]
    return bytes(out)


def _valid_files(folder: Path) -> None:
    """Small valid datasets: every box format in `folder/boxes`, semantic masks in `folder/semantic`."""
    drawn = ([(32, 24), (16, 16)], [[[1, 2, 9.5, 12], [3, 3, 30, 20]], [[0, 0, 16, 16]]], [[0, 1], [1]], 2)
    dataset = _build(folder / "boxes", drawn, polygons=True)
    for write, _ in ROUND_TRIPS.values():
        write(dataset, folder / "boxes")
    mask = np.zeros((24, 32), np.uint8)
    mask[4:9, 3:20] = 255
    for name, size, values in (("im0", (32, 24), mask), ("im1", (16, 16), np.zeros((16, 16), np.uint8))):
        write_image(folder / f"semantic/images/{name}.png", *size)
        write_image(folder / f"semantic/masks/{name}.png", *size)
        cv2.imwrite(str(folder / f"semantic/masks/{name}.png"), values)


def _masks(d: Path, strict: bool) -> Dataset:
    return load_masks(d / "semantic/images", d / "semantic/masks", ["bg", "fg"], [0, 255], strict=strict)


# The file each target mutates (relative to the fixture folder), and how it is read (strict or not).
B = "boxes"
READERS: dict[str, tuple[str, Callable[[Path, bool], Dataset]]] = {
    "coco": (f"{B}/c.json", lambda d, strict: load_coco(d / B / "c.json", d / B, strict=strict)),
    "voc": (f"{B}/voc/im0.xml", lambda d, strict: load_voc(d / B / "voc", d / B, strict=strict)),
    "yolo": (f"{B}/labels/im0.txt", lambda d, strict: load_yolo(d / B / "labels", d / B, strict=strict)),
    "via": (f"{B}/v.json", lambda d, strict: load_via(d / B / "v.json", d / B, strict=strict)),
    "image": (f"{B}/im0.png", lambda d, strict: load_coco(d / B / "c.json", d / B, strict=strict)),
    "mask": ("semantic/masks/im0.png", _masks),
}


@pytest.fixture(scope="module")
def valid_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("valid")
    _valid_files(folder)
    return folder


@pytest.mark.parametrize("target", sorted(READERS))
@EXAMPLES
@given(edits=mutations())
def test_mutated_files_raise_nothing_but_detseg_error(target: str, edits: list, valid_folder: Path):
    name, read = READERS[target]
    original = (valid_folder / name).read_bytes()
    try:
        (valid_folder / name).write_bytes(mutate(original, edits))
        for strict in (True, False):
            try:
                read(valid_folder, strict)
            except DetsegError as err:
                assert "\n" not in str(err) and err.path, str(err)
    finally:
        (valid_folder / name).write_bytes(original)


def test_the_valid_files_read_cleanly(valid_folder: Path):
    """The mutation test starts from files that load without a complaint."""
    for _, read in READERS.values():
        dataset = read(valid_folder, True)
        assert len(dataset) == 2 and dataset.summary.num_skipped == 0
