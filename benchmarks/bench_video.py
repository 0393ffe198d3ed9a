"""Video inference throughput: detseg's threaded runner vs a naive single-threaded loop, one run.

Both sides read the same clip with the same source, call the same fake model through the same
`DetectionPredictor`, draw the same five boxes with it (`detseg.viz.draw_detections`) and the
same FPS overlay, and write the same .mp4 and JSONL with the same sinks; only the scheduling
differs. The naive loop does decode -> model -> draw -> encode one after the other;
`run_stream` overlaps them on three threads. Two fake models of fixed cost per frame:

- `sleep`: the model waits `cost` ms without using the CPU, like a model on an accelerator;
- `cpu`:   the model resizes the frame to 416x416 and blurs it until it has cost ~`cost` ms of
           OpenCV compute (OpenCV releases the GIL, as TensorFlow and XLA do).

With `--detectors WIDTHxSIDE ...` the models are real detectors instead: the demo
architecture (darknet_tiny + two-level YOLO head, 3 classes) at that width and input side,
through detseg's `Detector` (compiled call + host NMS); width 0.5 is the shapes demo model,
width 1.0 is YOLOv3-tiny-sized. They are untrained (speed does not depend on the weights).

    .venv/bin/python benchmarks/bench_video.py [--video PATH] [--frames 150] [--costs 0 10 30]
        [--repeats 3] [--cv2-threads N] [--detectors 0.5x320 1.0x320 1.0x416]

"model ms" is the model's mean time per frame measured inside each run (the `cpu` model slows
down when it shares the cores with decoding and encoding); "busy" is the share of the run's wall
time spent in the model: 100% means decode, drawing and encoding are entirely hidden.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detseg.stream import JsonlSink, RateMeter, VideoFileSink, draw_fps, open_source, run_stream
from detseg.tasks.predictors import DetectionPredictor

DEFAULT_VIDEO = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "car-detection.mp4"
)
MODEL_SIDE = 416
NAMES = ["car", "truck", "person"]


# === Fake models of fixed cost ===


def fixed_boxes(frame: np.ndarray) -> dict[str, np.ndarray]:
    """Five boxes at fixed fractions of the frame, as a detector's output in original pixels."""
    h, w = frame.shape[:2]
    fractions = np.array(
        [
            [0.1, 0.1, 0.3, 0.4],
            [0.4, 0.2, 0.6, 0.5],
            [0.7, 0.5, 0.9, 0.9],
            [0.2, 0.6, 0.35, 0.8],
            [0.5, 0.6, 0.65, 0.95],
        ],
        np.float32,
    )
    return {
        "boxes": fractions * np.array([w, h, w, h], np.float32),
        "scores": np.linspace(0.9, 0.5, 5, dtype=np.float32),
        "labels": np.array([0, 0, 1, 2, 0], np.int32),
    }


def sleep_model(cost_ms: float) -> Callable[[list[np.ndarray]], list[dict]]:
    def infer(frames):
        time.sleep(cost_ms / 1000.0 * len(frames))
        return [fixed_boxes(f) for f in frames]

    return infer


def cpu_model(
    cost_ms: float, probe: np.ndarray
) -> tuple[Callable[[list[np.ndarray]], list[dict]], float]:
    """A resize + `passes` Gaussian blurs calibrated on `probe` to cost ~`cost_ms`; and the cost measured."""

    def work(frame: np.ndarray, passes: int) -> None:
        x = cv2.resize(frame, (MODEL_SIDE, MODEL_SIDE), interpolation=cv2.INTER_LINEAR)
        for _ in range(passes):
            x = cv2.GaussianBlur(x, (7, 7), 0)

    def timed(passes: int, calls: int = 15) -> float:
        work(probe, passes)
        start = time.perf_counter()
        for _ in range(calls):
            work(probe, passes)
        return (time.perf_counter() - start) / calls * 1000.0

    per_pass = timed(20) / 20
    passes = max(0, round(cost_ms / per_pass))

    def infer(frames):
        for f in frames:
            work(f, passes)
        return [fixed_boxes(f) for f in frames]

    return infer


class Timed:
    """Wraps a model and adds up the seconds spent in its calls."""

    def __init__(self, infer: Callable[[list[np.ndarray]], list[dict]]):
        self.infer = infer
        self.seconds = 0.0
        self.frames = 0

    def __call__(self, frames: list[np.ndarray]) -> list[dict]:
        start = time.perf_counter()
        out = self.infer(frames)
        self.seconds += time.perf_counter() - start
        self.frames += len(frames)
        return out


@dataclass(frozen=True)
class Run:
    """One timed run: frames per second, the model's mean ms per frame, and its busy share
    (model seconds over wall seconds: 100% means decode, drawing and encoding are hidden)."""

    fps: float
    model_ms: float
    busy: float


def timed_run(pipeline, video: Path, model, frames: int, out: Path) -> Run:
    timed = Timed(model)
    start = time.monotonic()
    done = pipeline(video, timed, frames, out)
    wall = time.monotonic() - start
    return Run(done / wall, timed.seconds / timed.frames * 1000.0, timed.seconds / wall)


def yolo_detector(spec: str) -> Callable[[list[np.ndarray]], list[dict]]:
    """`Detector` over an untrained demo-architecture YOLO: spec "WIDTHxSIDE", e.g. "0.5x320"."""
    from detseg.config import load_config
    from detseg.heads import Detector, build_yolo

    width, side = spec.split("x")
    cfg = load_config(
        None,
        {"model.backbone_width": float(width), "model.yolo.width": float(width),
         "model.yolo.levels": ["P4", "P5"], "model.input_size": int(side)},
    )  # fmt: skip
    anchors = [[18, 18], [24, 24], [31, 32], [41, 42], [57, 56], [78, 78]]
    model = build_yolo(cfg.model, len(NAMES), anchors, cfg.predict)
    return Detector(model, score_thr=cfg.predict.score_thr, iou_thr=cfg.predict.iou_thr, batch_size=1)


# === The two pipelines ===


def naive_loop(video: Path, infer, frames: int, out: Path) -> int:
    """Decode, infer, draw, encode, one frame at a time on one thread; returns the frames done."""
    predictor = DetectionPredictor(infer, NAMES)
    source = open_source(str(video))
    video_sink = VideoFileSink(out / "naive.mp4", source.fps)
    jsonl_sink = JsonlSink(out / "naive.jsonl")
    meter = RateMeter()
    done = 0
    while done < frames and (frame := source.read()) is not None:
        det = predictor([frame.image])[0]
        image = predictor.draw(frame.image, det)
        video_sink.write(frame, draw_fps(image, meter.tick(time.monotonic())))
        jsonl_sink.write(frame, predictor.record(det))
        done += 1
    for closable in (source, video_sink, jsonl_sink):
        closable.close()
    return done


def threaded(video: Path, infer, frames: int, out: Path) -> int:
    """`run_stream` with the same predictor and outputs; returns the frames done."""
    summary = run_stream(
        str(video),
        DetectionPredictor(infer, NAMES),
        save=out / "threaded.mp4",
        jsonl=out / "threaded.jsonl",
        max_frames=frames,
        verbose=False,
    )
    return summary.frames_processed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument(
        "--costs", type=float, nargs="+", default=[0.0, 10.0, 30.0], help="model ms per frame"
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per cell")
    parser.add_argument("--cv2-threads", type=int, help="cv2.setNumThreads for both sides")
    parser.add_argument("--detectors", nargs="+", metavar="WIDTHxSIDE", help="real YOLO detectors instead of fake models")
    args = parser.parse_args()
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)

    probe = open_source(str(args.video))
    first = probe.read().image
    probe.close()
    print(
        f"video {args.video.name} {first.shape[1]}x{first.shape[0]}, first {args.frames} frames, "
        f"save .mp4 + JSONL, best of {args.repeats} by fps, cv2 threads {cv2.getNumThreads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("model  cost ms | naive: fps  model ms  busy | threaded: fps  model ms  busy | ratio")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.detectors:
            cells = [(f"yolo {spec}", 0.0, yolo_detector(spec)) for spec in args.detectors]
        else:
            cells = [
                (kind, cost, model)
                for cost in args.costs
                for kind, model in (("sleep", sleep_model(cost)), ("cpu", cpu_model(cost, first)))
            ]
        for kind, cost, model in cells:
            naive_runs, fast_runs = [], []
            for _ in range(args.repeats):  # interleaved, so a busy moment hits both sides
                naive_runs.append(timed_run(naive_loop, args.video, model, args.frames, out))
                fast_runs.append(timed_run(threaded, args.video, model, args.frames, out))
            naive = max(naive_runs, key=lambda r: r.fps)
            fast = max(fast_runs, key=lambda r: r.fps)
            print(
                f"{kind:<5} {cost:>8.1f} | {naive.fps:>10.1f} {naive.model_ms:>9.1f} "
                f"{naive.busy:>5.0%} | {fast.fps:>13.1f} {fast.model_ms:>9.1f} "
                f"{fast.busy:>5.0%} | {fast.fps / naive.fps:>4.2f}x"
            )


if __name__ == "__main__":
    main()
