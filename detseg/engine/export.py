"""Deployable exports of a trained YOLO detector: SavedModel, TFLite and ONNX.

`export(model, fmt)` wraps the detector in a graph that needs nothing from detseg to run:

    images uint8 [B, S, S, 3]   RGB, already letterboxed to the model's input side S
      -> / 255 -> the detector -> decode + top-k candidates (`YoloDetector.candidates`)
      -> TensorFlow's CombinedNonMaxSuppression (per class, or over all classes)
      -> {"boxes" [B, D, 4] float32 xyxy in input (letterboxed) pixels,
          "scores" [B, D] float32, "labels" [B, D] int32 (-1 pads), "num" [B] int32}

with D = predict.max_det and the predict config's score and IoU thresholds baked in. The
SavedModel serves it as its `serve` / `serving_default` signature, and tf2onnx turns its NMS
into ONNX `NonMaxSuppression` (per class, batched). TFLite runs CombinedNonMaxSuppression only
through the Flex delegate, which the `tensorflow` pip package's interpreter does not ship, so
the TFLite file takes one image per call ([1, S, S, 3]) and uses the builtin
NonMaxSuppressionV5 (`per_image_detections_graph`): builtin ops only, as on a phone.
Beside each artefact a `<artefact>.json` holds what a runtime needs around the graph: class
names, input side, thresholds and the output names (`detseg.engine.exported` reads it back,
letterboxes frames and maps boxes back to the original pixels).

This is the one module of detseg that calls TensorFlow directly (DESIGN.md section 3); it
also holds the TensorFlow runtimes of SavedModel and TFLite artefacts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from detseg.data.images import PAD_VALUE
from detseg.engine.exported import metadata_path
from detseg.engine.predict import class_names_of, load_model, model_config, resolve_model_path
from detseg.errors import DetsegError
from detseg.heads.yolo import YoloDetector

__all__ = [
    "EXPORT_FORMATS",
    "OUTPUT_NAMES",
    "SavedModelRunner",
    "TFLiteRunner",
    "detections_graph",
    "export",
    "per_image_detections_graph",
]

EXPORT_FORMATS = ("savedmodel", "tflite", "onnx")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num")
ONNX_OPSET = 17  # NonMaxSuppression needs >= 11; tf2onnx converts combined NMS from 12
_SUFFIXES = {"savedmodel": "_saved_model", "tflite": ".tflite", "onnx": ".onnx"}
_ONNX_PACKAGES = ("onnx", "onnxruntime", "tf2onnx")


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


class _ServingDetector(keras.Model):
    """uint8 letterboxed images [B, S, S, 3] -> final detections (see the module docstring).

    `per_image` builds the batch-of-one graph with builtin NMS (TFLite).
    """

    def __init__(self, detector: YoloDetector, post: dict, per_image: bool):
        super().__init__(name=f"{detector.name}_serving")
        self.detector = detector
        self.post = post
        self.per_image = per_image

    def call(self, images):
        raw = self.detector(tf.cast(images, tf.float32) / 255.0, training=False)
        boxes, scores, labels = self.detector.candidates(raw)
        if self.per_image:
            return per_image_detections_graph(
                boxes, scores, labels, self.detector.input_size, **self.post
            )
        return detections_graph(boxes, scores, labels, self.detector.num_classes, **self.post)


# === Export ===


def _output_path(model_path: Path, fmt: str, out: str | Path | None) -> Path:
    if out is None:
        return model_path.with_name(model_path.stem + _SUFFIXES[fmt])
    out = Path(out)
    if fmt != "savedmodel" and out.suffix != _SUFFIXES[fmt]:
        raise DetsegError(
            f"{fmt} exports are {_SUFFIXES[fmt]} files; got {out.suffix or 'no extension'!r}", out
        )
    if fmt == "savedmodel" and out.suffix in (".onnx", ".tflite", ".keras"):
        raise DetsegError(f"a SavedModel is a folder; {out.suffix!r} names another format", out)
    return out


def _prepare_target(target: Path) -> None:
    """Make the parent folder; an existing SavedModel is replaced, any other folder is refused."""
    if target.is_dir():
        if not (target / "saved_model.pb").is_file():
            raise DetsegError("exists and is not a SavedModel; choose another --out", target)
        shutil.rmtree(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DetsegError(
            f"cannot create the output folder: {exc.strerror}", target.parent
        ) from None


def _check_onnx_packages() -> None:
    missing = [name for name in _ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise DetsegError(f"ONNX export needs {', '.join(missing)}: pip install 'detseg[onnx]'")


@contextlib.contextmanager
def _quiet_converters():
    """Hide the converters' progress chatter (TF's "Assets written", tf2onnx's optimiser log)
    and Keras's numpy-2 patch warning for tf2onnx; warnings and errors still show."""
    loggers = [logging.getLogger(name) for name in ("tensorflow", "tf2onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*np.object.*")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export(
    model: str | Path,
    fmt: str = "savedmodel",
    out: str | Path | None = None,
    *,
    config: str | Path | None = None,
) -> Path:
    """Export a trained detector (a `.keras` file or a run folder) with decoding and NMS inside.

    `fmt` is "savedmodel" (a folder), "tflite" or "onnx"; `out` defaults to the model's path
    with `_saved_model`, `.tflite` or `.onnx`. Class names and the predict thresholds come from
    `config` (default: config.yaml beside the model). Writes the artefact and its
    `<artefact>.json` metadata; returns the artefact's path.
    """
    if fmt not in EXPORT_FORMATS:
        raise DetsegError(
            f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    if keras.backend.backend() != "tensorflow":
        raise DetsegError(
            f"exports need the TensorFlow backend (KERAS_BACKEND=tensorflow), not {keras.backend.backend()}"
        )
    model_path = resolve_model_path(model)
    cfg = model_config(model_path, config)
    if fmt == "onnx":
        _check_onnx_packages()
    target = _output_path(model_path, fmt, out)
    detector = load_model(model_path)
    if not isinstance(detector, YoloDetector):
        raise DetsegError(
            f"export takes a YOLO detector, got a {type(detector).__name__}", model_path
        )
    names = class_names_of(cfg, detector.num_classes)
    post = cfg.predict
    thresholds = {
        "score_thr": post.score_thr,
        "iou_thr": post.iou_thr,
        "max_det": post.max_det,
        "agnostic": post.agnostic_nms,
    }
    serving = _ServingDetector(detector, thresholds, per_image=fmt == "tflite")
    size = detector.input_size
    serving(np.zeros((1, size, size, 3), np.uint8))  # build it (Keras exports need a called model)
    batch = 1 if fmt == "tflite" else None
    signature = [tf.TensorSpec([batch, size, size, 3], tf.uint8, name="images")]

    _prepare_target(target)
    keras_format = {"savedmodel": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}[fmt]
    options = {"opset_version": ONNX_OPSET} if fmt == "onnx" else {}
    with _quiet_converters():
        serving.export(
            str(target), format=keras_format, input_signature=signature, verbose=False, **options
        )
    metadata = {
        "format": fmt,
        "input": {
            "name": "images",
            "dtype": "uint8",
            "shape": [batch, size, size, 3],
            "layout": "RGB, letterboxed: resized keeping the aspect ratio, centred, padded",
            "pad_value": PAD_VALUE,
        },
        "outputs": list(OUTPUT_NAMES),
        "input_size": size,
        "class_names": names,
        "score_thr": post.score_thr,
        "iou_thr": post.iou_thr,
        "max_det": post.max_det,
        "agnostic_nms": post.agnostic_nms,
        "model": model_path.name,
    }
    metadata_path(target).write_text(json.dumps(metadata, indent=2) + "\n")
    return target


# === TensorFlow runtimes ===


class SavedModelRunner:
    """Runs an exported SavedModel's serving signature: uint8 [B, S, S, 3] -> dict of arrays."""

    def __init__(self, path: Path):
        self._serve = tf.saved_model.load(str(path)).signatures["serving_default"]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._serve(tf.constant(images))
        return {name: np.asarray(value) for name, value in outputs.items()}


class TFLiteRunner:
    """Runs an exported TFLite file's signature, one image per call (its batch is 1)."""

    def __init__(self, path: Path):
        with warnings.catch_warnings():  # tf.lite.Interpreter warns that LiteRT replaces it
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_path=str(path))
        self._run = interpreter.get_signature_runner()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        per_image = [self._run(images=image[None]) for image in images]
        return {name: np.concatenate([out[name] for out in per_image]) for name in OUTPUT_NAMES}
