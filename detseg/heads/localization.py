"""Single-object classification + localization: a backbone, global pooling and two outputs.

`Localizer` predicts, for an image holding one object, its class (softmax `[B, C]`) and its box
(`[B, 4]` normalised `(cx, cy, w, h)` in 0..1 through a sigmoid, i.e. the "rel_center_xywh"
format of `detseg.boxes`). The loss weighs a class term (sparse cross-entropy) and a box term
(MSE on the four numbers, or 1 - GIoU), 0.8 / 0.2 by default. Boxes stay normalised in the
model; `encode_box` / `decode_box` convert to and from `[N, 4]` xyxy pixels at the edges.

`fit()` takes `(images, {"labels": [B] int, "boxes": [B, 4] normalised cxcywh})` with images
as pixels 0..255 (uint8 or float; the backbone scales them), and logs `class_loss`,
`box_loss`, `accuracy`, `mean_iou` and `correct_localization` (right class and IoU >= 0.5). `predict()` returns
`{"labels" [B] int32, "scores" [B], "boxes" [B, 4] normalised cxcywh}`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from detseg.backbones import feature_info, get_backbone
from detseg.boxes import convert_boxes, giou_ops, iou_ops
from detseg.distribute import cross_replica_sum, replicas_in_sync
from detseg.errors import DetsegError
from detseg.heads.decoded import DecodedPredictions

__all__ = [
    "BOX_LOSSES",
    "CORRECT_IOU",
    "Localizer",
    "box_iou_single",
    "build_localizer",
    "decode_box",
    "encode_box",
]

BOX_LOSSES = ("mse", "giou")
# The classic "correct localization" criterion (ILSVRC, Pascal VOC): IoU >= 0.5.
CORRECT_IOU = 0.5
# The model's box format, a `detseg.boxes.BOX_FORMATS` name.
BOX_FORMAT = "rel_center_xywh"


# === Box helpers (NumPy) ===
def encode_box(xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """`[..., 4]` xyxy pixels in a `width x height` image -> normalised (cx, cy, w, h) float32."""
    _check_size(width, height)
    return convert_boxes(xyxy, "xyxy", BOX_FORMAT, height=height, width=width)


def decode_box(cxcywh: np.ndarray, width: float, height: float) -> np.ndarray:
    """`[..., 4]` normalised (cx, cy, w, h) -> xyxy pixels of a `width x height` image, float32."""
    _check_size(width, height)
    return convert_boxes(cxcywh, BOX_FORMAT, "xyxy", height=height, width=width)


def box_iou_single(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of aligned pairs: `[..., 4]` xyxy and `[..., 4]` xyxy -> `[...]` (one per pair).

    Unlike `detseg.boxes.box_iou` (all `N x M` pairs) this pairs box i with box i only.
    """
    boxes1 = np.asarray(boxes1, dtype=np.float32)
    boxes2 = np.asarray(boxes2, dtype=np.float32)
    if boxes1.shape[-1:] != (4,) or boxes2.shape[-1:] != (4,):
        raise DetsegError(f"boxes must be [..., 4], got shapes {boxes1.shape} and {boxes2.shape}")
    return ops.convert_to_numpy(iou_ops(boxes1, boxes2))


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise DetsegError(f"image width and height must be > 0, got {width} x {height}")


def _cxcywh_to_xyxy(boxes):
    """`[..., 4]` (cx, cy, w, h) -> xyxy, in keras.ops (differentiable, any backend)."""
    return keras.utils.bounding_boxes.convert_format(boxes, "center_xywh", "xyxy")


# === Model ===
@keras.saving.register_keras_serializable(package="detseg")
class Localizer(DecodedPredictions, keras.Model):
    """Classify the one object of an image and regress its box.

    Args:
        backbone: a detseg backbone (`detseg.backbones.get_backbone`): its deepest level is
            pooled; any input size it accepts works (boxes are relative to the image).
        num_classes: C (>= 1).
        class_weight, box_weight: weights of the class and box terms of the loss.
        box_loss: "mse" (squared error of the four normalised numbers, averaged) or "giou"
            (1 - GIoU of the boxes, scale-free).
        dropout: dropout rate on the pooled features, before both outputs.
    """

    def __init__(
        self,
        backbone: keras.Model,
        num_classes: int,
        class_weight: float = 0.8,
        box_weight: float = 0.2,
        box_loss: str = "mse",
        dropout: float = 0.0,
        **kwargs,
    ):
        if not (isinstance(num_classes, int) and num_classes >= 1) or box_loss not in BOX_LOSSES:
            raise DetsegError(
                f"need an integer num_classes >= 1 and box_loss in {BOX_LOSSES}; got "
                f"num_classes={num_classes!r}, box_loss={box_loss!r}"
            )
        if min(class_weight, box_weight) < 0 or class_weight + box_weight <= 0:
            raise DetsegError(
                "class_weight and box_weight must be >= 0 and not both 0; got "
                f"class_weight={class_weight}, box_weight={box_weight}"
            )
        if not 0.0 <= dropout < 1.0:
            raise DetsegError(f"dropout must be in [0, 1), got {dropout!r}")
        deepest = list(feature_info(backbone))[-1]

        # === Functional Model ===
        images = keras.Input(backbone.input_shape[1:], name="images")
        x = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(images)[deepest])
        if dropout:
            x = keras.layers.Dropout(dropout, name="dropout")(x)
        # Outputs stay float32 under a mixed-precision policy (log, IoU).
        outputs = {
            "class": keras.layers.Dense(
                num_classes, activation="softmax", dtype="float32", name="class"
            )(x),
            "box": keras.layers.Dense(4, activation="sigmoid", dtype="float32", name="box")(x),
        }
        super().__init__(inputs=images, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.class_weight = float(class_weight)
        self.box_weight = float(box_weight)
        self.box_loss = box_loss
        self.dropout = float(dropout)
        self.class_loss_tracker = keras.metrics.Mean(name="class_loss")
        self.box_loss_tracker = keras.metrics.Mean(name="box_loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.iou_tracker = keras.metrics.Mean(name="mean_iou")
        self.correct_tracker = keras.metrics.Mean(name="correct_localization")

    # === Training ===

    def loss_terms(self, y: dict, y_pred: dict):
        """Per-image class loss [B] (cross-entropy) and box loss [B] (MSE or 1 - GIoU)."""
        labels = ops.cast(ops.reshape(y["labels"], (-1,)), "int32")
        true_boxes = ops.cast(y["boxes"], "float32")
        class_loss = ops.sparse_categorical_crossentropy(labels, y_pred["class"])
        if self.box_loss == "mse":
            box_loss = ops.mean(ops.square(y_pred["box"] - true_boxes), axis=-1)
        else:
            box_loss = 1.0 - giou_ops(_cxcywh_to_xyxy(y_pred["box"]), _cxcywh_to_xyxy(true_boxes))
        return class_loss, box_loss

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """`class_weight` * mean class loss + `box_weight` * mean box loss over the batch.

        `sample_weight` [B] optionally weighs images; the weighted terms are logged as
        `class_loss` and `box_loss`.
        """
        class_loss, box_loss = self.loss_terms(y, y_pred)
        weight = _image_weight(sample_weight)
        images = ops.cast(ops.shape(class_loss)[0], "float32")
        batch = cross_replica_sum(images)  # the whole batch's images: see YoloDetector.compute_loss
        class_loss = self.class_weight * ops.sum(class_loss * weight) / batch
        box_loss = self.box_weight * ops.sum(box_loss * weight) / batch
        self.class_loss_tracker.update_state(class_loss * batch / images, sample_weight=images)
        self.box_loss_tracker.update_state(box_loss * batch / images, sample_weight=images)
        total = class_loss + box_loss
        if self.losses:
            total = total + ops.sum(self.losses) / replicas_in_sync()
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Accuracy, mean IoU of the predicted box, and the share of correct localizations
        (right class and IoU >= `CORRECT_IOU`), plus any compiled metrics."""
        labels = ops.cast(ops.reshape(y["labels"], (-1,)), "int32")
        hit = ops.cast(ops.equal(ops.argmax(y_pred["class"], axis=-1), labels), "float32")
        iou = iou_ops(
            _cxcywh_to_xyxy(y_pred["box"]), _cxcywh_to_xyxy(ops.cast(y["boxes"], "float32"))
        )
        correct = hit * ops.cast(iou >= CORRECT_IOU, "float32")
        weight = None if sample_weight is None else ops.reshape(sample_weight, (-1,))
        self.accuracy_tracker.update_state(hit, sample_weight=weight)
        self.iou_tracker.update_state(iou, sample_weight=weight)
        self.correct_tracker.update_state(correct, sample_weight=weight)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    # === Inference ===

    def postprocess(self, outputs: dict) -> dict:
        """Raw outputs -> {"labels" [B] int32, "scores" [B], "boxes" [B, 4] normalised cxcywh}."""
        probs = outputs["class"]
        return {
            "labels": ops.cast(ops.argmax(probs, axis=-1), "int32"),
            "scores": ops.max(probs, axis=-1),
            "boxes": outputs["box"],
        }

    # === Config ===

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "class_weight": self.class_weight,
            "box_weight": self.box_weight,
            "box_loss": self.box_loss,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config: dict) -> Localizer:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def _image_weight(sample_weight):
    if sample_weight is None:
        return 1.0
    return ops.reshape(ops.cast(sample_weight, "float32"), (-1,))


def build_localizer(
    backbone: str, input_shape, num_classes: int, *, weights: str | None = None, **kwargs
) -> Localizer:
    """A `Localizer` on backbone `backbone` (a `detseg.backbones` name) built for
    `input_shape` (H, W, C); `weights` goes to the backbone, `kwargs` to `Localizer`."""
    return Localizer(
        get_backbone(backbone, tuple(input_shape), weights=weights, name="backbone"),
        num_classes,
        **kwargs,
    )
