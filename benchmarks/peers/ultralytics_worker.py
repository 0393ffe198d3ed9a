"""Ultralytics YOLOv8n rows of bench_peers.py; runs in .venv-peers (no detseg there).

The model is built from its architecture file with random weights (`YOLO("yolov8n.yaml")`);
nothing is downloaded. Training runs Ultralytics' own trainer on the BCCD copy in YOLO layout
that bench_peers.py prepares (its default augmentation: mosaic, HSV, flips, scale,
translate), timed at the end of each batch; it is stopped after the timed batches.
`--threads 0` leaves Ultralytics' CPU default (cores - 1 torch threads), otherwise torch gets
that many. Prints one JSON line of rows (see common.py).

    .venv-peers/bin/python benchmarks/peers/ultralytics_worker.py --spec SPEC_JSON
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import cv2  # noqa: E402
import torch  # noqa: E402
from common import BatchClock, emit, measure, median_ms, spec_from_argv  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils.torch_utils import get_flops  # noqa: E402

TOOL = "ultralytics"
ARCH = "yolov8n.yaml"


class _Enough(Exception):
    """Raised from a callback to end a timing run of the trainer."""


def _threads(requested: int) -> int:
    if requested:
        torch.set_num_threads(requested)
    return torch.get_num_threads()


def _model_facts(size: int) -> dict:
    model = YOLO(ARCH).model
    params = sum(p.numel() for p in model.parameters())
    return {"params": int(params), "gflops": round(float(get_flops(model, size)), 2)}


def train_row(spec: dict, size: int, batch: int) -> dict:
    model = YOLO(ARCH)
    clock = BatchClock(batch)
    wanted = spec["steps"] + 4  # the warm-up batches, then the timed ones
    threads = {}

    def on_start(trainer):  # after Ultralytics set its own thread count
        threads["n"] = _threads(spec["threads"])

    def on_batch_end(trainer):
        clock.tick()
        if len(clock.ends) >= wanted:
            raise _Enough

    model.add_callback("on_train_start", on_start)
    model.add_callback("on_train_batch_end", on_batch_end)
    try:
        model.train(
            data=spec["data_yaml"], epochs=100, imgsz=size, batch=batch, device="cpu",
            workers=spec["workers"], val=False, plots=False, amp=False, pretrained=False,
            project=spec["work"], name=f"train_{size}_{batch}", exist_ok=True, verbose=False,
        )  # fmt: skip
    except _Enough:
        pass
    return {"section": "train", "size": size, "batch": batch, "threads": threads["n"],
            "img_s": clock.images_per_second(), "timed_batches": clock.timed, **_model_facts(size)}  # fmt: skip


def infer_row(spec: dict, size: int) -> dict:
    threads = _threads(spec["threads"])
    model = YOLO(ARCH)
    frame = cv2.imread(spec["image"])  # BGR, as Ultralytics reads files itself
    speeds = []

    def call():
        result = model.predict(frame, imgsz=size, conf=spec["score_thr"], iou=spec["iou_thr"], device="cpu", verbose=False)
        speeds.append(result[0].speed["postprocess"])

    ms = median_ms(call, spec["repeats"])
    return {"section": "infer", "size": size, "threads": threads, "ms": ms,
            "postprocess_ms": float(sorted(speeds)[len(speeds) // 2]), **_model_facts(size)}  # fmt: skip


def video_row(spec: dict, size: int) -> dict:
    threads = _threads(spec["threads"])
    model = YOLO(ARCH)
    frames = 0
    start = time.perf_counter()
    for _ in model.predict(source=spec["video_path"], imgsz=size, conf=spec["score_thr"], iou=spec["iou_thr"], stream=True, device="cpu", verbose=False):
        frames += 1
        if frames >= spec["frames"]:
            break
    return {"section": "video", "size": size, "threads": threads, "frames": frames, "fps": frames / (time.perf_counter() - start)}


def accuracy_row(spec: dict) -> dict:
    """Train for `minutes` of wall clock at 416 px, then write the test split's detections
    (COCO results, original pixels) for the parent to score."""
    threads = {}
    model = YOLO(ARCH)
    model.add_callback("on_train_start", lambda trainer: threads.setdefault("n", _threads(spec["threads"])))
    start = time.perf_counter()
    model.train(
        data=spec["data_yaml"], epochs=1000, time=spec["minutes"] / 60, imgsz=416, batch=16, device="cpu",
        workers=spec["workers"], plots=False, amp=False, pretrained=False, project=spec["work"], name="accuracy",
        exist_ok=True, verbose=False,
    )  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    best = YOLO(str(Path(spec["work"]) / "accuracy" / "weights" / "best.pt"))
    results = []
    for image_id, path in spec["test_images"]:
        (result,) = best.predict(path, imgsz=416, conf=0.001, iou=0.6, max_det=100, device="cpu", verbose=False)
        for (x1, y1, x2, y2), score, label in zip(result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), result.boxes.cls.tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    Path(spec["detections"]).write_text(json.dumps(results))
    return {"section": "accuracy", "threads": threads["n"], "train_minutes": minutes, "detections": spec["detections"]}


def main() -> None:
    spec = spec_from_argv(__doc__)
    rows = measure(TOOL, spec, train_row, infer_row, video_row)
    if spec.get("minutes"):
        rows.append({"tool": TOOL, **accuracy_row(spec)})
    emit(rows)


if __name__ == "__main__":
    main()
