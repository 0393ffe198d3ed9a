"""Fixtures of the data-layer tests: the real data sets beside the repository, tiny images and datasets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BCCD3 = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00002"]  # the samples behind fixtures/


def _shared(name: str) -> Path:
    path = DATA_ROOT / name
    if not path.is_dir():
        pytest.skip(f"real data set {path} is absent")
    return path


@pytest.fixture(scope="session")
def bccd() -> Path:
    """BCCD blood cells, VOC devkit layout (364 images, two zero-area boxes)."""
    return _shared("bccd")


@pytest.fixture(scope="session")
def membrane() -> Path:
    """ISBI membrane segmentation: train/image and train/label PNGs (255 = cell interior)."""
    return _shared("membrane")


@pytest.fixture(scope="session")
def coco100() -> Path:
    """COCO val2014 annotations of 100 images (no image files)."""
    return _shared("coco_val2014_100")


@pytest.fixture(scope="session")
def bccd3_images(bccd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only the three BCCD images of the fixtures (links to the real files)."""
    folder = tmp_path_factory.mktemp("bccd3_images")
    for stem in BCCD3:
        (folder / f"{stem}.jpg").symlink_to(bccd / "JPEGImages" / f"{stem}.jpg")
    return folder


@pytest.fixture(scope="session")
def bccd3_voc(bccd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat folder with the three BCCD XMLs of the fixtures (links to the real files)."""
    folder = tmp_path_factory.mktemp("bccd3_voc")
    for stem in BCCD3:
        (folder / f"{stem}.xml").symlink_to(bccd / "Annotations" / f"{stem}.xml")
    return folder


def write_image(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    """A small random RGB image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path
