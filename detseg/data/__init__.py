"""The data layer: annotation formats, the built-in shapes dataset, augmentation and batching.

Every reader returns a `Dataset` of `Sample`s (boxes `[N, 4]` float32 xyxy absolute pixels,
labels `[N]` int32); `load_split(cfg.data, "train")` is the entry point from a config and
`DetectionLoader` turns a Dataset into training or evaluation batches.

The batch loaders (Keras `PyDataset`) and the augmentation (albumentations) load on first
use (PEP 562): reading and converting annotations never starts Keras, so `detseg convert`
stays light.
"""

from importlib import import_module
from typing import Any

from detseg.data.coco import decode_instance_masks, load_coco, write_coco
from detseg.data.convert import BOX_FORMATS, FORMATS, ConvertReport, convert, read_annotations
from detseg.data.imagefolder import load_imagefolder
from detseg.data.images import (
    PAD_VALUE,
    LetterboxParams,
    image_size,
    letterbox,
    letterbox_boxes,
    letterbox_params,
    read_image,
    unletterbox_boxes,
    unletterbox_map,
    write_image,
)
from detseg.data.masks import load_masks, read_semantic_mask
from detseg.data.sample import IGNORE_INDEX, Dataset, Sample, Summary
from detseg.data.shapes import CLASS_NAMES as SHAPES_CLASSES
from detseg.data.shapes import generate_shapes, load_shapes, load_video_truth, write_shapes_video
from detseg.data.splits import SPLITS, load_split
from detseg.data.via import load_via, write_via
from detseg.data.voc import load_voc, write_voc
from detseg.data.yolo import load_yolo, write_yolo

_LAZY: dict[str, tuple[str, str]] = {
    "Augmenter": ("detseg.data.augment", "Augmenter"),
    "build_augment": ("detseg.data.augment", "build_augment"),
    "DetectionLoader": ("detseg.data.loader", "DetectionLoader"),
    "PAD_LABEL": ("detseg.data.loader", "PAD_LABEL"),
    "PaddedBoxEncoder": ("detseg.data.loader", "PaddedBoxEncoder"),
    "SemanticMaskEncoder": ("detseg.data.loader", "SemanticMaskEncoder"),
    "training_loader": ("detseg.data.loader", "training_loader"),
}

__all__ = [
    "Augmenter",
    "BOX_FORMATS",
    "ConvertReport",
    "Dataset",
    "DetectionLoader",
    "FORMATS",
    "IGNORE_INDEX",
    "LetterboxParams",
    "PAD_LABEL",
    "PAD_VALUE",
    "PaddedBoxEncoder",
    "SHAPES_CLASSES",
    "SPLITS",
    "Sample",
    "SemanticMaskEncoder",
    "Summary",
    "build_augment",
    "convert",
    "decode_instance_masks",
    "generate_shapes",
    "image_size",
    "letterbox",
    "letterbox_boxes",
    "letterbox_params",
    "load_coco",
    "load_imagefolder",
    "load_masks",
    "load_shapes",
    "load_split",
    "load_via",
    "load_video_truth",
    "load_voc",
    "load_yolo",
    "read_annotations",
    "read_image",
    "read_semantic_mask",
    "training_loader",
    "unletterbox_boxes",
    "unletterbox_map",
    "write_image",
    "write_coco",
    "write_shapes_video",
    "write_via",
    "write_voc",
    "write_yolo",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(import_module(module), attribute)
    raise AttributeError(f"module 'detseg.data' has no attribute {name!r}")
