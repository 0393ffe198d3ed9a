"""KerasCV YOLOV8Detector rows of bench_peers.py; runs in .venv-peers (TensorFlow backend).

The detector is KerasCV's YOLOv8 with the `xs` backbone configuration (channels 32, 64, 128,
256; depths 1, 2, 2, 1), built from its constructor with random weights (a preset would
download). Training feeds `fit` the BCCD training images through KerasCV's own augmentation
layers as its YOLOv8 guide does (random horizontal flip, jittered resize to the square
input), in a tf.data pipeline. Inference runs the model and KerasCV's decoding (its
`decode_predictions`: box distribution decode + its NMS) in one `tf.function`: KerasCV 0.9's
`predict_step` no longer runs under Keras >= 3.10. With `minutes` in the spec it also trains
on BCCD for that long and writes the test split's detections. Prints one JSON line of rows.

    .venv-peers/bin/python benchmarks/peers/kerascv_worker.py --spec SPEC_JSON
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import keras  # noqa: E402
import keras_cv  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import BatchClock, emit, measure, median_ms, module_from_repo, spec_from_argv  # noqa: E402

count_macs = module_from_repo("detseg/flops.py").count_macs  # keras + NumPy only: no detseg install here

TOOL = "kerascv"
MAX_BOXES = 100


def build(num_classes: int, score_thr: float = 0.25, iou_thr: float = 0.45) -> keras.Model:
    backbone = keras_cv.models.YOLOV8Backbone(
        stackwise_channels=[32, 64, 128, 256], stackwise_depth=[1, 2, 2, 1], include_rescaling=True, activation="swish"
    )
    decoder = keras_cv.layers.NonMaxSuppression(
        bounding_box_format="xyxy", from_logits=False, confidence_threshold=score_thr, iou_threshold=iou_thr
    )
    model = keras_cv.models.YOLOV8Detector(
        num_classes=num_classes, bounding_box_format="xyxy", backbone=backbone, fpn_depth=1, prediction_decoder=decoder
    )
    model.compile(optimizer=keras.optimizers.AdamW(2e-3), classification_loss="binary_crossentropy", box_loss="ciou")
    return model


def _voc(path: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    root = ET.parse(path).getroot()
    boxes, labels = [], []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        xyxy = [float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        if xyxy[2] > xyxy[0] and xyxy[3] > xyxy[1]:
            boxes.append(xyxy)
            labels.append(names.index(obj.find("name").text))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.float32)


def training_data(spec: dict, size: int, batch: int) -> tf.data.Dataset:
    root = Path(spec["bccd"])
    ids = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    images, boxes, labels = [], [], []
    for image_id in ids:
        images.append(cv2.cvtColor(cv2.imread(str(root / "JPEGImages" / f"{image_id}.jpg")), cv2.COLOR_BGR2RGB))
        b, c = _voc(root / "Annotations" / f"{image_id}.xml", spec["names"])
        boxes.append(b)
        labels.append(c)
    data = tf.data.Dataset.from_tensor_slices({
        "images": tf.ragged.constant(images, ragged_rank=2, dtype=tf.float32) if len({i.shape for i in images}) > 1 else np.stack(images).astype(np.float32),
        "bounding_boxes": {"boxes": tf.ragged.constant(boxes, ragged_rank=1, dtype=tf.float32), "classes": tf.ragged.constant(labels, dtype=tf.float32)},
    })  # fmt: skip
    augment = keras.Sequential([
        keras_cv.layers.RandomFlip(mode="horizontal", bounding_box_format="xyxy"),
        keras_cv.layers.JitteredResize(target_size=(size, size), scale_factor=(0.75, 1.3), bounding_box_format="xyxy"),
    ])  # fmt: skip

    def to_tuple(inputs):
        dense = keras_cv.bounding_box.to_dense(inputs["bounding_boxes"], max_boxes=MAX_BOXES)
        return inputs["images"], dense

    data = data.shuffle(len(ids), seed=0).ragged_batch(batch, drop_remainder=True)
    return data.map(augment, num_parallel_calls=tf.data.AUTOTUNE).map(to_tuple).repeat().prefetch(tf.data.AUTOTUNE)


def _facts(model: keras.Model, size: int) -> dict:
    return {"params": int(model.count_params()), "gflops": round(2 * count_macs(model, (size, size, 3)) / 1e9, 2)}


def train_row(spec: dict, size: int, batch: int) -> dict:
    model = build(len(spec["names"]))
    clock = BatchClock(batch)
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: clock.tick())
    model.fit(training_data(spec, size, batch), epochs=1, steps_per_epoch=spec["steps"] + 4, verbose=0, callbacks=[callback])
    return {"section": "train", "size": size, "batch": batch, "threads": spec["threads"],
            "img_s": clock.images_per_second(), "timed_batches": clock.timed, **_facts(model, size)}  # fmt: skip


def detector(model: keras.Model, size: int):
    """RGB frame -> (boxes in its pixels, scores, class indices): stretch-resize to `size`
    (KerasCV's own convention), the model, KerasCV's decode + NMS, scale back."""

    @tf.function(reduce_retracing=True)
    def run(images):
        return model.decode_predictions(model(images, training=False), images)

    def call(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = frame.shape[:2]
        images = cv2.resize(frame, (size, size))[None].astype(np.float32)
        out = run(tf.constant(images))
        n = int(out["num_detections"][0])
        boxes = out["boxes"][0, :n].numpy() * np.array([w / size, h / size] * 2, np.float32)
        return boxes, out["confidence"][0, :n].numpy(), out["classes"][0, :n].numpy()

    return call


def infer_row(spec: dict, size: int) -> dict:
    model = build(len(spec["names"]), spec["score_thr"], spec["iou_thr"])
    frame = cv2.cvtColor(cv2.imread(spec["image"]), cv2.COLOR_BGR2RGB)
    call = detector(model, size)
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.constant(cv2.resize(frame, (size, size))[None].astype(np.float32))
    return {"section": "infer", "size": size, "threads": spec["threads"], "ms": median_ms(lambda: call(frame), spec["repeats"]),
            "forward_ms": median_ms(lambda: forward(x), spec["repeats"]), **_facts(model, size)}  # fmt: skip


def video_row(spec: dict, size: int) -> dict:
    model = build(len(spec["names"]), spec["score_thr"], spec["iou_thr"])
    call = detector(model, size)
    capture = cv2.VideoCapture(spec["video_path"])
    call(np.zeros((size, size, 3), np.uint8))  # tracing is not timed
    frames = 0
    start = time.perf_counter()
    while frames < spec["frames"]:
        ok, frame = capture.read()
        if not ok:
            break
        call(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        frames += 1
    return {"section": "video", "size": size, "threads": spec["threads"], "frames": frames, "fps": frames / (time.perf_counter() - start)}


class _TimeLimit(keras.callbacks.Callback):
    """Stops `fit` at the first batch end past `seconds` after `start` (perf_counter)."""

    def __init__(self, start: float, seconds: float):
        super().__init__()
        self.start, self.seconds = start, seconds

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.start >= self.seconds:
            self.model.stop_training = True


def accuracy_row(spec: dict) -> dict:
    """Train for `minutes` of wall clock at 416 px, batch 16, with the augmentation of
    `training_data`; then write the test split's detections (COCO results, original pixels;
    score >= 0.001, NMS IoU 0.6, 100 per image) from the final weights (KerasCV's `fit` keeps
    no best model) for the parent to score."""
    start = time.perf_counter()
    model = build(len(spec["names"]), score_thr=0.001, iou_thr=0.6)
    data = training_data(spec, 416, 16)
    steps = len((Path(spec["bccd"]) / "ImageSets" / "Main" / "train.txt").read_text().split()) // 16
    model.fit(data, epochs=100_000, steps_per_epoch=steps, verbose=0, callbacks=[_TimeLimit(start, spec["minutes"] * 60)])
    minutes = (time.perf_counter() - start) / 60
    call = detector(model, 416)
    results = []
    for image_id, path in spec["test_images"]:
        boxes, scores, classes = call(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB))
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), classes.tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    Path(spec["detections"]).write_text(json.dumps(results))
    return {"section": "accuracy", "threads": spec["threads"], "train_minutes": minutes, "detections": spec["detections"]}


def main() -> None:
    spec = spec_from_argv(__doc__)
    tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(spec["threads"])
    rows = measure(TOOL, spec, train_row, infer_row, video_row)
    if spec.get("minutes"):
        rows.append({"tool": TOOL, **accuracy_row(spec)})
    emit(rows)


if __name__ == "__main__":
    main()
