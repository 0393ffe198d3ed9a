"""Exported detectors vs the Keras `Detector`: per-frame latency on real video frames, one run.

Every side gets the same RGB frames of `../shared/data/videos/car-detection.mp4`, one frame per
call (the webcam case), and does the same work end to end: letterbox, the model, decode, NMS,
boxes back to the frame's pixels. The peer is detseg's Python path, `Detector` (compiled
`predict_on_batch` of the model + candidate decoding, then OpenCV NMS on the host); the others
are `ExportedDetector` over the ONNX file on onnxruntime, the TFLite file on TensorFlow's
interpreter (XNNPACK) and the SavedModel on TensorFlow, with decode + NMS inside the graph.

The model is the shapes demo's architecture (`configs/shapes_yolov3_tiny.yaml`: darknet_tiny,
P4 + P5, 3 classes) at each `--sizes` side, untrained; with the eval thresholds
(score 0.001, IoU 0.6, 100 detections) NMS works on the full 1000 candidates, as in mAP runs.

    .venv/bin/python benchmarks/bench_export.py [--sizes 320 416] [--frames 60] [--repeats 3]

Figures are the median ms per frame of the best of `--repeats` interleaved runs; ratio = the
Keras Detector's ms / the export's ms (> 1: the export is faster).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import keras
import numpy as np

from detseg.config import dump_config, load_config
from detseg.engine.export import export
from detseg.engine.exported import open_exported
from detseg.heads.yolo import build_yolo
from detseg.heads.yolo_infer import Detector
from detseg.tasks.detect import ExportedDetector

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "videos" / "car-detection.mp4"
NAMES = ["circle", "square", "triangle"]
# YOLOv3-tiny's six COCO anchors at 416 px, scaled to each side.
TINY_ANCHORS_416 = [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]]
FORMATS = ("onnx", "tflite", "savedmodel")


def read_frames(path: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise SystemExit(f"no frames read from {path}")
    return frames


def make_run(folder: Path, size: int) -> None:
    """A run folder (best.keras + config.yaml) with the demo architecture at `size` px."""
    overrides = {
        "model.input_size": size,
        "model.yolo.anchors": (np.array(TINY_ANCHORS_416) * size / 416).round(1).tolist(),
        "data.names": NAMES,
        "predict.score_thr": 0.001,
        "predict.iou_thr": 0.6,
    }
    cfg = load_config(ROOT / "configs" / "shapes_yolov3_tiny.yaml", overrides)
    keras.utils.set_random_seed(0)
    model = build_yolo(cfg.model, len(NAMES), cfg.model.yolo.anchors, cfg.predict)
    model.save(folder / "best.keras")
    dump_config(cfg, folder / "config.yaml")


def time_per_frame(infer, frames: list[np.ndarray]) -> tuple[float, int]:
    """Median ms of one-frame calls, and the detections of the last frame."""
    for frame in frames[:3]:  # warm-up: tracing, allocation
        infer([frame])
    times = []
    for frame in frames:
        start = time.perf_counter()
        found = infer([frame])
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)), len(found[0]["boxes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 416])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    frames = read_frames(args.video, args.frames)
    h, w = frames[0].shape[:2]
    print(
        f"{len(frames)} frames {w}x{h} of {args.video.name}; load average {os.getloadavg()[0]:.1f}"
    )
    print("| side | Keras Detector ms | " + " | ".join(f"{f} ms (ratio)" for f in FORMATS) + " |")
    print("|-----:|------------------:|" + "|".join("---------------:" for _ in FORMATS) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            run = Path(tmp) / f"run{size}"
            run.mkdir()
            make_run(run, size)
            cfg = load_config(run / "config.yaml")
            sides = {
                "keras": Detector(
                    keras.saving.load_model(run / "best.keras"),
                    score_thr=cfg.predict.score_thr,
                    iou_thr=cfg.predict.iou_thr,
                    max_det=cfg.predict.max_det,
                )
            }
            export_s = {}
            for fmt in FORMATS:
                start = time.perf_counter()
                artefact = export(run, fmt)
                sides[fmt] = ExportedDetector(*open_exported(artefact), artefact)
                export_s[fmt] = time.perf_counter() - start
            best = {name: float("inf") for name in sides}
            counts = {}
            for _ in range(args.repeats):  # interleaved, so load changes hit every side alike
                for name, infer in sides.items():
                    ms, counts[name] = time_per_frame(infer, frames)
                    best[name] = min(best[name], ms)
            cells = [f"{best[f]:.1f} ({best['keras'] / best[f]:.2f}x)" for f in FORMATS]
            print(f"| {size} | {best['keras']:.1f} | " + " | ".join(cells) + " |")
            print(
                f"  detections on the last frame: {counts}; export + load s: "
                + ", ".join(f"{f} {s:.1f}" for f, s in export_s.items())
            )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
