"""Task heads built on a backbone: each encodes its targets, owns its loss and decodes predictions.

YOLOv3-style detector: `YoloDetector` (model, loss, in-graph decode + NMS), `build_yolo`
(from a `ModelConfig`), `YoloTargetEncoder` (dense targets for the data loader) and
`Detector` (fast inference on images of any size, boxes in original pixels).
Classifier: `build_classifier` (a backbone + a classification top), `set_backbone_trainable`.
U-Net segmenter: `UNetSegmenter`, `build_unet`, and `Segmenter` (class maps in original
pixels, letterboxed or tiled).
"""

from detseg.heads.classifier import ImageClassifier, build_classifier, set_backbone_trainable
from detseg.heads.unet import UNetSegmenter, build_unet
from detseg.heads.unet_infer import Segmenter
from detseg.heads.yolo import YoloDetector, build_yolo
from detseg.heads.yolo_infer import Detector, host_nms
from detseg.heads.yolo_targets import NO_OBJECT, PAD_LABEL, YoloTargetEncoder, level_stride

__all__ = [
    "NO_OBJECT",
    "PAD_LABEL",
    "Detector",
    "ImageClassifier",
    "Segmenter",
    "UNetSegmenter",
    "YoloDetector",
    "YoloTargetEncoder",
    "build_classifier",
    "build_unet",
    "build_yolo",
    "host_nms",
    "level_stride",
    "set_backbone_trainable",
]
