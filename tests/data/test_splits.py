"""From a config's `data:` section to a split's Dataset."""

from __future__ import annotations

import json

import pytest

from detseg.config import DataConfig
from detseg.data import load_split
from detseg.data.shapes import shapes_dir
from detseg.errors import DetsegError

from .conftest import write_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # BCCD's two zero-area boxes


def _data(**fields) -> DataConfig:
    return DataConfig.model_validate(fields)


def test_builtin_shapes_is_generated_once_into_the_cache(tmp_path):
    cfg = _data(
        builtin="shapes",
        cache_dir=str(tmp_path),
        shapes={"num_train": 6, "num_val": 2, "image_size": 64, "min_size": 12, "max_size": 24},
    )
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    assert (len(train), len(val)) == (6, 2) and train.class_names == [
        "circle",
        "square",
        "triangle",
    ]
    assert (
        train.samples[0].image_path.parent == shapes_dir(cfg.shapes, tmp_path) / "train" / "images"
    )
    assert len(list(tmp_path.iterdir())) == 1  # one folder for this configuration, no leftovers
    with pytest.raises(DetsegError, match="no split 'test'"):
        load_split(cfg, "test")


def test_voc_devkit_splits_from_the_root(bccd):
    cfg = _data(format="voc", root=str(bccd), train={"split": "train"}, val={"split": "val"})
    assert (
        len(load_split(cfg, "train"))
        == len((bccd / "ImageSets/Main/train.txt").read_text().split())
        == 205
    )
    assert len(load_split(cfg, "val")) == 87
    with pytest.raises(DetsegError, match="split 'test' is not configured"):
        load_split(cfg, "test")
    with pytest.raises(DetsegError, match="split 'nope' not found"):
        load_split(_data(format="voc", root=str(bccd), train={"split": "nope"}), "train")


def test_relative_paths_resolve_against_root_and_subset_holds_out(tmp_path):
    for i in range(5):
        write_image(tmp_path / "imgs" / f"{i}.jpg", 32, 24)
    doc = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 32, "height": 24} for i in range(5)],
        "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    split = {"annotations": "ann.json", "images": "imgs"}
    cfg = _data(
        format="coco",
        root=str(tmp_path),
        train={**split, "subset": ":3"},
        val={**split, "subset": "3:"},
    )
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    assert [s.image_id for s in train.samples] == [0, 1, 2] and [
        s.image_id for s in val.samples
    ] == [3, 4]
    assert train.summary.notes == {"samples left out by data.train.subset ':3'": 2}
    with pytest.raises(DetsegError, match="differ from the classes in the file"):
        load_split(cfg.model_copy(update={"names": ["other"]}), "train")
    with pytest.raises(DetsegError, match="keeps none"):
        load_split(
            _data(format="coco", root=str(tmp_path), train={**split, "subset": "9:"}), "train"
        )


def test_unknown_split_name():
    with pytest.raises(DetsegError, match="unknown split 'dev'"):
        load_split(DataConfig(), "dev")


def test_voc_val_without_names_takes_the_training_classes(tmp_path):
    def xml(folder: str, name: str, classes: list[str]) -> None:
        write_image(tmp_path / f"{name}.jpg", 32, 24)
        box = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
        objects = "".join(f"<object><name>{c}</name>{box}</object>" for c in classes)
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename>"
            f"<size><width>32</width><height>24</height></size>{objects}</annotation>"
        )

    xml("train", "a", ["cat", "dog"])
    xml("val", "b", ["dog"])  # read alone, val would make "dog" label 0
    cfg = _data(
        format="voc",
        root=str(tmp_path),
        train={"annotations": "train", "images": "."},
        val={"annotations": "val", "images": "."},
    )
    val = load_split(cfg, "val")
    assert val.class_names == ["cat", "dog"] and val.samples[0].labels.tolist() == [1]
