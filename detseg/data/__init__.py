"""The data layer: annotation formats, the built-in shapes dataset, augmentation and batching.

Every reader returns a `Dataset` of `Sample`s (boxes `[N, 4]` float32 xyxy absolute pixels,
labels `[N]` int32); `load_split(cfg.data, "train")` is the entry point from a config and
`DetectionLoader` turns a Dataset into training or evaluation batches.
"""

from detseg.data.augment import Augmenter, build_augment
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
)
from detseg.data.loader import PAD_LABEL, DetectionLoader, PaddedBoxEncoder, SemanticMaskEncoder
from detseg.data.masks import load_masks, read_semantic_mask
from detseg.data.sample import IGNORE_INDEX, Dataset, Sample, Summary
from detseg.data.shapes import CLASS_NAMES as SHAPES_CLASSES
from detseg.data.shapes import generate_shapes, load_shapes, load_video_truth, write_shapes_video
from detseg.data.splits import SPLITS, load_split
from detseg.data.via import load_via, write_via
from detseg.data.voc import load_voc, write_voc
from detseg.data.yolo import load_yolo, write_yolo

__all__ = [
    "BOX_FORMATS",
    "FORMATS",
    "IGNORE_INDEX",
    "PAD_LABEL",
    "PAD_VALUE",
    "SHAPES_CLASSES",
    "SPLITS",
    "Augmenter",
    "ConvertReport",
    "Dataset",
    "DetectionLoader",
    "LetterboxParams",
    "PaddedBoxEncoder",
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
    "unletterbox_boxes",
    "write_coco",
    "write_shapes_video",
    "write_via",
    "write_voc",
    "write_yolo",
]
