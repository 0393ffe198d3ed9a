"""The detector's export graph: uint8 letterboxed images in, final detections out, NMS inside.

    images uint8 [B, S, S, 3]   RGB, already letterboxed to the model's input side S
      -> the detector (it scales the pixels itself) -> decode + top-k candidates (`YoloDetector.candidates`)
      -> TensorFlow's CombinedNonMaxSuppression (per class, or over all classes)
      -> {"boxes" [B, D, 4] float32 xyxy in input (letterboxed) pixels,
          "scores" [B, D] float32, "labels" [B, D] int32 (-1 pads), "num" [B] int32}

with D = predict.max_det and the predict config's score and IoU thresholds baked in. tf2onnx
turns the NMS into ONNX `NonMaxSuppression` (per class, batched). TFLite runs
CombinedNonMaxSuppression only through the Flex delegate, which the `tensorflow` pip
package's interpreter does not ship, so the TFLite graph takes one image per call
([1, S, S, 3]) and uses the builtin NonMaxSuppressionV5 (`per_image_detections_graph`):
builtin ops only, as on a phone.

Export code is where DESIGN.md allows TensorFlow calls; `DetectTask.serving_model` imports
this module only when an export is made.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from detseg.heads.yolo import YoloDetector

__all__ = ["ServingDetector", "detections_graph", "per_image_detections_graph"]


# === The graph ===


def _labels_of_kept(kept_boxes, kept_scores, boxes, scores, labels):
    """Labels of class-agnostic NMS survivors, found as the candidate with the same box and score.

    Combined NMS over one shared class returns boxes and scores but not which candidate they
    were; both are exact copies of a candidate's, so matching them is exact.
    """
    same_box = tf.reduce_all(kept_boxes[:, :, None, :] == boxes[:, None, :, :], axis=-1)
    same = tf.logical_and(same_box, kept_scores[:, :, None] == scores[:, None, :])
    index = tf.argmax(tf.cast(same, tf.int32), axis=-1, output_type=tf.int32)
    return tf.gather(labels, index, batch_dims=1)


def detections_graph(
    boxes,
    scores,
    labels,
    num_classes: int,
    score_thr: float,
    iou_thr: float,
    max_det: int,
    agnostic: bool = False,
) -> dict:
    """Greedy NMS of sorted candidates with TensorFlow's `combined_non_max_suppression`.

    boxes [B, K, 4] xyxy, scores [B, K], labels [B, K] int32 (from `YoloDetector.candidates`).
    Each candidate's score goes in its class column (zeros elsewhere, below any threshold), so
    the per-class NMS sees exactly the candidates the Keras path sees; `agnostic` runs one NMS
    over all classes instead. Returns {"boxes" [B, D, 4], "scores" [B, D], "labels" [B, D]
    (-1 pads), "num" [B]} with D = max_det, the layout of `YoloDetector.predict_step`.
    """
    if agnostic:
        class_scores = scores[:, :, None]
    else:
        class_scores = tf.one_hot(labels, num_classes, dtype=scores.dtype) * scores[:, :, None]
    kept = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :],
        class_scores,
        max_output_size_per_class=max_det,
        max_total_size=max_det,
        iou_threshold=iou_thr,
        score_threshold=score_thr,
        clip_boxes=False,  # boxes are in pixels, not the op's default 0..1 frame
    )
    num = tf.cast(kept.valid_detections, tf.int32)
    if agnostic:
        kept_labels = _labels_of_kept(kept.nmsed_boxes, kept.nmsed_scores, boxes, scores, labels)
    else:
        kept_labels = tf.cast(kept.nmsed_classes, tf.int32)
    valid = tf.range(max_det, dtype=tf.int32)[None, :] < num[:, None]
    return {
        "boxes": tf.where(valid[..., None], kept.nmsed_boxes, 0.0),
        "scores": tf.where(valid, kept.nmsed_scores, 0.0),
        "labels": tf.where(valid, kept_labels, -1),
        "num": num,
    }


def per_image_detections_graph(
    boxes,
    scores,
    labels,
    input_size: int,
    score_thr: float,
    iou_thr: float,
    max_det: int,
    agnostic: bool = False,
) -> dict:
    """The same NMS for a batch of one image, with TFLite's builtin NonMaxSuppressionV5.

    It is TFLite's builtin NMS (CombinedNonMaxSuppression would need the Flex delegate), for
    exports that take one image per call. Per-class NMS uses
    the usual offset trick: each box is shifted by label * (input_size + 1) pixels, so boxes
    of different classes never overlap while IoUs within a class are unchanged (up to float32
    rounding of the shifted coordinates); the kept boxes are gathered unshifted.
    """
    boxes, scores, labels = boxes[0], scores[0], labels[0]
    shifted = boxes
    if not agnostic:
        shifted = boxes + tf.cast(labels, boxes.dtype)[:, None] * float(input_size + 1)
    index, _, num = tf.raw_ops.NonMaxSuppressionV5(
        boxes=shifted,
        scores=scores,
        max_output_size=max_det,
        iou_threshold=iou_thr,
        score_threshold=score_thr,
        soft_nms_sigma=0.0,
        pad_to_max_output_size=True,
    )
    valid = tf.range(max_det, dtype=tf.int32) < num
    return {
        "boxes": tf.where(valid[:, None], tf.gather(boxes, index), 0.0)[None],
        "scores": tf.where(valid, tf.gather(scores, index), 0.0)[None],
        "labels": tf.where(valid, tf.gather(labels, index), -1)[None],
        "num": tf.reshape(num, [1]),
    }


class ServingDetector(keras.Model):
    """uint8 letterboxed images [B, S, S, 3] -> final detections (see the module docstring).

    `per_image` builds the batch-of-one graph with builtin NMS (TFLite).
    """

    def __init__(self, detector: YoloDetector, post: dict, per_image: bool):
        super().__init__(name=f"{detector.name}_serving")
        self.detector = detector
        self.post = post
        self.per_image = per_image

    def call(self, images):
        raw = self.detector(images, training=False)
        boxes, scores, labels = self.detector.candidates(raw)
        if self.per_image:
            return per_image_detections_graph(
                boxes, scores, labels, self.detector.input_size, **self.post
            )
        return detections_graph(boxes, scores, labels, self.detector.num_classes, **self.post)
