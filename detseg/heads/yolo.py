"""The YOLOv3-style detector: a top-down neck and one anchor head per pyramid level.

`YoloDetector` sits on any backbone whose outputs are a dict of levels `{"P3": ..., ...}`.
From the coarsest level down, each neck stage runs alternating 1x1 / 3x3 convs, predicts its level
through a 3x3 conv and a 1x1 output conv of `anchors_per_level * (5 + num_classes)` channels
(4 box offsets, objectness, classes; 4 x `box_bins` box channels for a distribution-focal head),
and hands a 1x1-reduced, upsampled copy of its features to the next finer level, where it is
concatenated with the backbone's features (YOLOv3's FPN-like path).

Outputs (training and `model(x)`): `{level: [B, G, G, A, 5 + C]}` raw logits (see
`yolo_decode`). `fit()` takes batches `(images, targets)` with images [B, S, S, 3] RGB pixels
0..255, uint8 or float (the backbone scales them, see `detseg.backbones.pyramid`), and
targets from `YoloTargetEncoder`; `predict()` returns padded detections
`{"boxes" [B, D, 4] xyxy input pixels, "scores" [B, D], "labels" [B, D] (-1 pad), "num" [B]}`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from detseg.distribute import cross_replica_sum, replicas_in_sync
from detseg.errors import DetsegError
from detseg.heads.decoded import DecodedPredictions
from detseg.heads.yolo_decode import (
    DEFAULT_SCALE_XY,
    MAX_SIDE_ANCHORS,
    box_channels,
    decode_candidates,
    nms_padded,
)
from detseg.heads.yolo_loss import BOX_LOSSES, OBJECTNESS_TARGETS, yolo_loss_terms
from detseg.heads.yolo_targets import YoloTargetEncoder, check_anchors, level_stride
from detseg.layers.conv import conv_bn_act

__all__ = ["YoloDetector", "YoloTargetEncoder", "build_yolo", "level_stride"]

# Objects expected per image and level when initialising the objectness bias, so the first
# steps start from a small background probability instead of 0.5 at every anchor.
_PRIOR_OBJECTS_PER_LEVEL = 4.0


def neck_channels(level: str, width: float) -> int:
    """Channels of a level's neck stage: YOLOv3's 128 / 256 / 512 at P3 / P4 / P5, times width."""
    return max(8, int(round(level_stride(level) * 16 * width)))


def _neck_stage(x, filters: int, depth: int, name: str):
    """A 1x1 to `filters`, then `depth - 1` (3x3 2*filters, 1x1 filters) pairs.

    With the level's 3x3 head conv after it, depth 1 is YOLOv3-tiny's head (1x1, 3x3) and
    depth 3 YOLOv3's (the five-conv block, then 3x3).
    """
    x = conv_bn_act(x, filters, 1, activation="leaky_relu", name=f"{name}_1_reduce")
    for i in range(2, depth + 1):
        x = conv_bn_act(x, 2 * filters, 3, activation="leaky_relu", name=f"{name}_{i}_expand")
        x = conv_bn_act(x, filters, 1, activation="leaky_relu", name=f"{name}_{i}_reduce")
    return x


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@keras.saving.register_keras_serializable(package="detseg")
class YoloDetector(DecodedPredictions, keras.Model):
    """YOLOv3-style anchor detector on a pyramid backbone.

    Args:
        backbone: `keras.Model` with a fixed input shape (S, S, 3) and dict outputs `{"Pk": ...}`.
        num_classes: C.
        anchors: [len(levels) * anchors_per_level, 2] priors (w, h) in input pixels; sorted by
            area, the smallest go to the finest level.
        levels: backbone levels to predict on (two for tiny models).
        anchors_per_level: A.
        width: channel multiplier of the neck and head (1.0: YOLOv3's 128/256/512).
        depth: (1x1, 3x3) conv pairs per level, the head's 3x3 included: 1 is YOLOv3-tiny's
            head, 3 YOLOv3's.
        assign_thresh: besides its best anchor, a box also trains every anchor whose shape
            IoU with it exceeds this (0: best only); `max_boxes`: most boxes per image the
            targets hold; `neighbour_cells`: a box also trains the two neighbouring cells
            nearest its centre (YOLOv5), which needs `scale_xy` >= 2 so those cells can reach
            it. All three configure `make_target_encoder()`, so a saved model says how it was
            trained.
        ignore_thresh, box_loss, box_weight, obj_weight, cls_weight, label_smoothing,
            objectness_target: the loss (`yolo_loss`); box_loss is one of "yolov3", "ciou",
            "giou", objectness_target "one" or "iou".
        score_thr, iou_thr, max_det, agnostic_nms: post-processing of `predict()`.
        pre_nms_topk: (box, class) candidates kept for NMS.
        scale_xy: grid-sensitivity factor of the centre offsets (`yolo_decode`).
        box_bins: 0 for YOLOv3's box offsets, or R >= 2: each side a distribution over R bins
            trained with the distribution focal loss (`yolo_decode`, `yolo_loss`; IoU box
            losses only). Its sides are distances from the cell centre, so its target encoder
            keeps only cells whose centre lies inside the box (`centre_inside`).
    """

    def __init__(
        self,
        backbone: keras.Model,
        num_classes: int,
        anchors,
        levels=("P3", "P4", "P5"),
        anchors_per_level: int = 3,
        width: float = 1.0,
        depth: int = 1,
        assign_thresh: float = 0.0,
        max_boxes: int = 100,
        neighbour_cells: bool = False,
        ignore_thresh: float = 0.5,
        box_loss: str = "ciou",
        box_weight: float = 5.0,
        obj_weight: float = 1.0,
        cls_weight: float = 1.0,
        label_smoothing: float = 0.0,
        objectness_target: str = "one",
        score_thr: float = 0.001,
        iou_thr: float = 0.6,
        max_det: int = 100,
        agnostic_nms: bool = False,
        pre_nms_topk: int = 1000,
        scale_xy: float = DEFAULT_SCALE_XY,
        box_bins: int = 0,
        **kwargs,
    ):
        # === Layers ===
        levels = sorted(levels, key=level_stride)  # finest first
        input_shape = tuple(backbone.input_shape[1:])
        features_spec = backbone.output if isinstance(backbone.output, dict) else {}
        missing = [level for level in levels if level not in features_spec]
        if missing:
            raise DetsegError(
                f"backbone {backbone.name!r} has no level {missing} (it has {sorted(features_spec)}); "
                f"requested levels {levels}"
            )
        if len(input_shape) != 3 or None in input_shape or input_shape[0] != input_shape[1]:
            raise DetsegError(
                f"the backbone needs a fixed square input shape (S, S, 3), got {input_shape}"
            )
        if not levels or len(set(levels)) != len(levels):
            raise DetsegError(f"levels must be distinct pyramid levels, got {levels}")
        if num_classes < 1 or box_loss not in BOX_LOSSES or depth < 1 or width <= 0:
            raise DetsegError(
                f"need num_classes >= 1, box_loss in {BOX_LOSSES}, depth >= 1 and width > 0; got "
                f"num_classes={num_classes}, box_loss={box_loss!r}, depth={depth}, width={width}"
            )
        if objectness_target not in OBJECTNESS_TARGETS:
            raise DetsegError(
                f"objectness_target must be one of {OBJECTNESS_TARGETS}, got {objectness_target!r}"
            )
        if not 0.0 <= assign_thresh <= 1.0 or max_boxes < 1:
            raise DetsegError(
                f"need 0 <= assign_thresh <= 1 and max_boxes >= 1; got "
                f"assign_thresh={assign_thresh}, max_boxes={max_boxes}"
            )
        if neighbour_cells and scale_xy < 2.0:
            raise DetsegError(
                f"neighbour_cells needs scale_xy >= 2 (centre offsets that reach the next cell), "
                f"got scale_xy={scale_xy}"
            )
        if box_bins == 1 or box_bins < 0 or (box_bins and box_loss == "yolov3"):
            raise DetsegError(
                f"box_bins must be 0 or >= 2, and needs an IoU box loss (ciou, giou); got "
                f"box_bins={box_bins}, box_loss={box_loss!r}"
            )
        input_size = input_shape[0]
        anchors = check_anchors(anchors, len(levels), anchors_per_level)
        outputs_per_anchor = box_channels(box_bins) + 1 + num_classes

        # === Functional Model ===
        images = keras.Input(shape=input_shape, name="images")
        features = backbone(images)
        outputs = {}
        x = None
        for coarser, level in zip([None, *levels[::-1]], levels[::-1], strict=False):
            filters = neck_channels(level, width)
            if x is None:
                x = features[level]
            else:
                x = conv_bn_act(x, filters, 1, activation="leaky_relu", name=f"{level}_lateral")
                factor = level_stride(coarser) // level_stride(level)
                x = keras.layers.UpSampling2D(factor, name=f"{level}_upsample")(x)
                x = keras.layers.Concatenate(name=f"{level}_concat")([x, features[level]])
            x = _neck_stage(x, filters, depth, name=f"{level}_neck")
            y = conv_bn_act(x, 2 * filters, 3, activation="leaky_relu", name=f"{level}_head")
            # Outputs stay float32 under a mixed-precision policy (losses, exp, sigmoid).
            y = keras.layers.Conv2D(
                anchors_per_level * outputs_per_anchor, 1, dtype="float32", name=f"{level}_pred"
            )(y)
            grid = input_size // level_stride(level)
            outputs[level] = keras.layers.Reshape(
                (grid, grid, anchors_per_level, outputs_per_anchor), dtype="float32", name=level
            )(y)
        super().__init__(
            inputs=images, outputs={level: outputs[level] for level in levels}, **kwargs
        )

        # === Config ===
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.anchors = anchors
        self.levels = tuple(levels)
        self.anchors_per_level = int(anchors_per_level)
        self.width = float(width)
        self.depth = int(depth)
        self.assign_thresh = float(assign_thresh)
        self.max_boxes = int(max_boxes)
        self.neighbour_cells = bool(neighbour_cells)
        self.ignore_thresh = float(ignore_thresh)
        self.box_loss = box_loss
        self.box_weight = float(box_weight)
        self.obj_weight = float(obj_weight)
        self.cls_weight = float(cls_weight)
        self.label_smoothing = float(label_smoothing)
        self.objectness_target = objectness_target
        self.score_thr = float(score_thr)
        self.iou_thr = float(iou_thr)
        self.max_det = int(max_det)
        self.agnostic_nms = bool(agnostic_nms)
        self.pre_nms_topk = int(pre_nms_topk)
        self.scale_xy = float(scale_xy)
        self.box_bins = int(box_bins)
        self.input_size = int(input_size)
        self.strides = {level: level_stride(level) for level in self.levels}
        self.level_anchors = {
            level: anchors[i * anchors_per_level : (i + 1) * anchors_per_level]
            for i, level in enumerate(self.levels)
        }
        self.box_loss_tracker = keras.metrics.Mean(name="box_loss")
        self.obj_loss_tracker = keras.metrics.Mean(name="obj_loss")
        self.cls_loss_tracker = keras.metrics.Mean(name="cls_loss")
        self._init_output_biases()

    def _init_output_biases(self) -> None:
        """Start objectness at a low prior (a few objects per level), classes at 1/C, and a
        distribution-focal head's sides peaked (one bin wide) at half the anchor: each anchor
        starts at its own box on the cell centre, as YOLOv3's offsets do at zero."""
        class_prior = min(0.5, 1.0 / self.num_classes)
        box = box_channels(self.box_bins)
        box_bias = np.zeros(box, np.float32)
        if self.box_bins:
            half_anchor = 0.5 / MAX_SIDE_ANCHORS * (self.box_bins - 1)
            side = -0.5 * (np.arange(self.box_bins, dtype=np.float32) - half_anchor) ** 2
            box_bias = np.tile(side, 4)
        for level in self.levels:
            grid = self.input_size // self.strides[level]
            obj_prior = min(0.5, _PRIOR_OBJECTS_PER_LEVEL / (grid * grid * self.anchors_per_level))
            bias = np.zeros((self.anchors_per_level, box + 1 + self.num_classes), np.float32)
            bias[:, :box] = box_bias
            bias[:, box] = _logit(obj_prior)
            bias[:, box + 1 :] = _logit(class_prior)
            self.get_layer(f"{level}_pred").bias.assign(bias.reshape(-1))

    # === Training ===

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Weighted box + objectness + class loss, averaged over the images of the batch.

        `y` is the `YoloTargetEncoder` dict; `sample_weight` [B] optionally weighs images.
        The weighted terms are logged as `box_loss`, `obj_loss`, `cls_loss`.
        """
        box, obj, cls = yolo_loss_terms(
            y,
            y_pred,
            self.level_anchors,
            self.strides,
            num_classes=self.num_classes,
            input_size=self.input_size,
            ignore_thresh=self.ignore_thresh,
            box_loss=self.box_loss,
            label_smoothing=self.label_smoothing,
            scale_xy=self.scale_xy,
            objectness_target=self.objectness_target,
            box_bins=self.box_bins,
        )
        image_weight = (
            1.0 if sample_weight is None else ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        )
        images = ops.cast(ops.shape(box)[0], "float32")
        # Over the images of the whole batch: split over the replicas of a TF strategy, whose
        # gradients Keras sums, the replicas' losses then add up to the whole batch's loss.
        batch = cross_replica_sum(images)
        box_loss = self.box_weight * ops.sum(box * image_weight) / batch
        obj_loss = self.obj_weight * ops.sum(obj * image_weight) / batch
        cls_loss = self.cls_weight * ops.sum(cls * image_weight) / batch
        # Logged as Keras logs `loss`: this replica's mean per image, weighted by its images.
        self.box_loss_tracker.update_state(box_loss * batch / images, sample_weight=images)
        self.obj_loss_tracker.update_state(obj_loss * batch / images, sample_weight=images)
        self.cls_loss_tracker.update_state(cls_loss * batch / images, sample_weight=images)
        total = box_loss + obj_loss + cls_loss
        if self.losses:  # each replica adds its share of the regularisation
            total = total + ops.sum(self.losses) / replicas_in_sync()
        return total

    def make_target_encoder(self) -> YoloTargetEncoder:
        """The target encoder of this model: its anchors, levels, input size, classes and assignment."""
        return YoloTargetEncoder(
            self.anchors,
            [self.strides[level] for level in self.levels],
            self.input_size,
            self.num_classes,
            anchors_per_level=self.anchors_per_level,
            assign_thresh=self.assign_thresh,
            max_boxes=self.max_boxes,
            neighbour_cells=self.neighbour_cells,
            centre_inside=self.box_bins > 0,
        )

    # === Inference ===

    def candidates(self, outputs: dict):
        """Top-k scored (box, class) candidates of raw outputs: boxes [B, K, 4], scores, labels."""
        return decode_candidates(
            outputs,
            self.level_anchors,
            self.strides,
            num_classes=self.num_classes,
            input_size=self.input_size,
            topk=self.pre_nms_topk,
            scale_xy=self.scale_xy,
            box_bins=self.box_bins,
        )

    def postprocess(self, outputs: dict) -> dict:
        """Raw outputs -> padded detections (in-graph decode and NMS)."""
        boxes, scores, labels = self.candidates(outputs)
        return nms_padded(
            boxes, scores, labels, self.score_thr, self.iou_thr, self.max_det, self.agnostic_nms
        )

    # === Config ===

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "anchors": self.anchors.tolist(),
            "levels": list(self.levels),
            "anchors_per_level": self.anchors_per_level,
            "width": self.width,
            "depth": self.depth,
            "assign_thresh": self.assign_thresh,
            "max_boxes": self.max_boxes,
            "neighbour_cells": self.neighbour_cells,
            "ignore_thresh": self.ignore_thresh,
            "box_loss": self.box_loss,
            "box_weight": self.box_weight,
            "obj_weight": self.obj_weight,
            "cls_weight": self.cls_weight,
            "label_smoothing": self.label_smoothing,
            "objectness_target": self.objectness_target,
            "score_thr": self.score_thr,
            "iou_thr": self.iou_thr,
            "max_det": self.max_det,
            "agnostic_nms": self.agnostic_nms,
            "pre_nms_topk": self.pre_nms_topk,
            "scale_xy": self.scale_xy,
            "box_bins": self.box_bins,
        }

    @classmethod
    def from_config(cls, config: dict) -> YoloDetector:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def build_yolo(
    model_cfg, num_classes: int, anchors, post_cfg=None, *, backbone: keras.Model | None = None
) -> YoloDetector:
    """The detector a `ModelConfig` describes, with explicit `anchors` [K, 2] (input pixels).

    `post_cfg` (an `EvalConfig` or `PredictConfig`) sets the post-processing of `predict()`;
    `backbone` overrides the one named in the config (it must take (S, S, 3) inputs).
    """
    yolo = model_cfg.yolo
    if isinstance(anchors, str):
        raise DetsegError(
            f"build_yolo needs explicit anchors, got {anchors!r}: fit them first (detseg anchors)"
        )
    if backbone is None:
        from detseg.backbones import APPLICATIONS_PREFIX, get_backbone

        size = model_cfg.input_size
        # keras.applications backbones have no width multiplier.
        width = (
            {}
            if model_cfg.backbone.startswith(APPLICATIONS_PREFIX)
            else {"width": model_cfg.backbone_width}
        )
        backbone = get_backbone(
            model_cfg.backbone, (size, size, 3), weights=model_cfg.weights, **width
        )
    post = {}
    if post_cfg is not None:
        post = {
            "score_thr": post_cfg.score_thr,
            "iou_thr": post_cfg.iou_thr,
            "max_det": post_cfg.max_det,
            "agnostic_nms": getattr(post_cfg, "agnostic_nms", False),
        }
    return YoloDetector(
        backbone,
        num_classes,
        anchors,
        levels=tuple(yolo.levels),
        anchors_per_level=yolo.anchors_per_level,
        width=yolo.width,
        depth=yolo.depth,
        assign_thresh=yolo.assign_thresh,
        max_boxes=yolo.max_boxes,
        neighbour_cells=yolo.neighbour_cells,
        # Offsets in (-0.5, 1.5) cells, so a neighbouring cell can reach the centre.
        scale_xy=2.0 if yolo.neighbour_cells else DEFAULT_SCALE_XY,
        ignore_thresh=yolo.ignore_thresh,
        box_loss=yolo.box_loss,
        box_weight=yolo.box_weight,
        obj_weight=yolo.obj_weight,
        cls_weight=yolo.cls_weight,
        label_smoothing=yolo.label_smoothing,
        objectness_target=yolo.objectness_target,
        box_bins=yolo.box_bins,
        **post,
    )
