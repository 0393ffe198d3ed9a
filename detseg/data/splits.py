"""From the `data:` section of a config to the Dataset of one split."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from detseg.config import DataConfig, SplitConfig
from detseg.data.convert import read_annotations
from detseg.data.sample import Dataset
from detseg.data.shapes import load_shapes
from detseg.errors import DetsegError

__all__ = ["SPLITS", "load_split"]

SPLITS = ("train", "val", "test")
SplitName = Literal["train", "val", "test"]
_NAMES_FROM_OBJECTS = ("voc", "via")  # formats whose class list is whatever names the objects use


def _resolve(path: str | None, root: Path | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() or root is None else root / p


def _subset(dataset: Dataset, subset: str, split: str) -> Dataset:
    """Keep the samples of a Python slice such as ':24' (see SplitConfig.subset)."""
    bounds = [int(p) if p.strip() else None for p in subset.split(":")]
    kept = dataset.samples[slice(*bounds)]
    if not kept:
        raise DetsegError(
            f"data.{split}.subset {subset!r} keeps none of the {len(dataset)} samples"
        )
    dataset.summary.note(
        f"samples left out by data.{split}.subset {subset!r}", len(dataset) - len(kept)
    )
    dataset.samples = kept
    return dataset


def _read_files(
    cfg: DataConfig, split_cfg: SplitConfig, split: str, names: list[str] | None
) -> Dataset:
    root = Path(cfg.root).expanduser() if cfg.root is not None else None
    annotations = _resolve(split_cfg.annotations, root)
    if (
        annotations is None
        and cfg.format in ("voc", "imagefolder")
        and root is not None
        and split_cfg != SplitConfig()
    ):
        annotations = root  # a VOC devkit or an image folder root with only `split:`/`subset:` set
    if annotations is None:
        raise DetsegError(
            f"split {split!r} is not configured: set data.{split}.annotations (and images)"
        )
    dataset = read_annotations(
        cfg.format,
        annotations,
        _resolve(split_cfg.images, root),
        names=names,
        split=split_cfg.split,
        mask_values=cfg.mask_values,
        check_images=cfg.check_images,
        strict=cfg.strict,
    )
    if not dataset.samples:
        raise DetsegError(f"the {split} split has no samples", annotations)
    if names is not None and dataset.class_names != list(names):
        raise DetsegError(
            f"data.names {names} differ from the classes in the file: {dataset.class_names}",
            annotations,
        )
    return dataset


def _class_names(cfg: DataConfig, split: str) -> list[str] | None:
    """`data.names`; for VOC/VIA without it, the training split's classes (so labels agree across splits)."""
    if (
        cfg.names is not None
        or cfg.format not in _NAMES_FROM_OBJECTS
        or split == "train"
        or cfg.train == SplitConfig()
    ):
        return cfg.names
    return _read_files(cfg, cfg.train, "train", None).class_names


def load_split(data_cfg: DataConfig, split: SplitName) -> Dataset:
    """The Dataset of `split` ('train', 'val' or 'test') described by `data_cfg`.

    `builtin: shapes` generates the shapes dataset once under `data.cache_dir` (relative to
    the working directory) and reuses it; otherwise the split's files are read in
    `data.format`, with relative paths resolved against `data.root`. VOC and VIA splits
    without `data.names` take the training split's classes, so a label means the same class
    in every split.
    """
    if split not in SPLITS:
        raise DetsegError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    split_cfg: SplitConfig = getattr(data_cfg, split)
    if data_cfg.builtin == "shapes":
        dataset = load_shapes(data_cfg.shapes, split, data_cfg.cache_dir)
    else:
        dataset = _read_files(data_cfg, split_cfg, split, _class_names(data_cfg, split))
    if split_cfg.subset is not None:
        dataset = _subset(dataset, split_cfg.subset, split)
    return dataset
