"""Video inference throughput: detseg's threaded runner vs a naive single-threaded loop, one run.

Both sides read the same clip with the same source, call the same fake model, draw the same
boxes with the same FPS overlay and write the same .mp4 and JSONL with the same sinks; only
the scheduling differs. The naive loop does decode -> model -> draw -> encode one after the
other; `run_stream` overlaps them on three threads. Two fake models of fixed cost per frame:

- `sleep`: the model waits `cost` ms without using the CPU, like a model on an accelerator;
- `cpu`:   the model resizes the frame to 416x416 and blurs it until it has cost ~`cost` ms of
           OpenCV compute (OpenCV releases the GIL, as TensorFlow and XLA do).

The model-based figures (the shapes detector, YOLOv3-tiny) come with `detseg predict`.

    .venv/bin/python benchmarks/bench_video.py [--video PATH] [--frames 150] [--costs 0 10 30]
        [--repeats 2] [--cv2-threads N]

"model ms" is the median time of the model's calls measured inside each run (the `cpu` model
slows down when it shares the cores with decoding and encoding); "busy" is fps x model ms, the
share of the run the model was computing: 100% means decode, drawing and encoding are hidden.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from detseg.engine.sinks import JsonlSink, RateMeter, VideoFileSink, draw_fps
from detseg.engine.sources import open_source
from detseg.engine.video import run_stream

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


def draw_boxes(image, boxes, labels, scores=None, class_names=None, masks=None):
    """The drawing workload: box outlines and a "name score" label per box, in place."""
    for (x1, y1, x2, y2), label, score in zip(
        np.round(boxes).astype(int), labels, scores, strict=True
    ):
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 2)
        cv2.putText(
            image,
            f"{class_names[label]} {score:.2f}",
            (x1, max(y1 - 4, 10)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (0, 255, 0),
            1,
            cv2.LINE_AA,
        )
    return image


class Timed:
    """Wraps a model and records the seconds each call took, per frame."""

    def __init__(self, infer: Callable[[list[np.ndarray]], list[dict]]):
        self.infer = infer
        self.per_frame: list[float] = []

    def __call__(self, frames: list[np.ndarray]) -> list[dict]:
        start = time.perf_counter()
        out = self.infer(frames)
        self.per_frame += [(time.perf_counter() - start) / len(frames)] * len(frames)
        return out

    def median_ms(self) -> float:
        return float(np.median(self.per_frame)) * 1000.0


# === The two pipelines ===


def naive_loop(video: Path, infer, frames: int, out: Path) -> float:
    """Decode, infer, draw, encode, one frame at a time on one thread; returns frames per second."""
    start = time.monotonic()
    source = open_source(str(video))
    video_sink, jsonl_sink = (
        VideoFileSink(out / "naive.mp4", source.fps),
        JsonlSink(out / "naive.jsonl", NAMES),
    )
    meter = RateMeter()
    done = 0
    while done < frames and (frame := source.read()) is not None:
        det = infer([frame.image])[0]
        image = draw_boxes(
            frame.image, det["boxes"], det["labels"], scores=det["scores"], class_names=NAMES
        )
        video_sink.write(frame, draw_fps(image, meter.tick(time.monotonic())))
        jsonl_sink.write(frame, det)
        done += 1
    for closable in (source, video_sink, jsonl_sink):
        closable.close()
    return done / (time.monotonic() - start)


def threaded(video: Path, infer, frames: int, out: Path) -> float:
    start = time.monotonic()
    summary = run_stream(
        str(video),
        infer,
        class_names=NAMES,
        draw=draw_boxes,
        save=out / "threaded.mp4",
        jsonl=out / "threaded.jsonl",
        max_frames=frames,
        verbose=False,
    )
    return summary.frames_processed / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument(
        "--costs", type=float, nargs="+", default=[0.0, 10.0, 30.0], help="model ms per frame"
    )
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per cell")
    parser.add_argument("--cv2-threads", type=int, help="cv2.setNumThreads for both sides")
    args = parser.parse_args()
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)

    probe = open_source(str(args.video))
    first = probe.read().image
    probe.close()
    print(
        f"video {args.video.name} {first.shape[1]}x{first.shape[0]}, first {args.frames} frames, "
        f"save .mp4 + JSONL, best of {args.repeats}, cv2 threads {cv2.getNumThreads()}"
    )
    print("model   cost ms | naive: fps  model ms  busy | threaded: fps  model ms  busy | ratio")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for cost in args.costs:
            for kind, model in (("sleep", sleep_model(cost)), ("cpu", cpu_model(cost, first))):
                naive, fast = Timed(model), Timed(model)
                naive_fps = fast_fps = 0.0
                for _ in range(args.repeats):  # interleaved, so a busy moment hits both sides
                    naive_fps = max(naive_fps, naive_loop(args.video, naive, args.frames, out))
                    fast_fps = max(fast_fps, threaded(args.video, fast, args.frames, out))
                # busy: the share of wall time the model was computing (1.0 = nothing else shows)
                naive_busy = naive_fps * naive.median_ms() / 1000.0
                fast_busy = fast_fps * fast.median_ms() / 1000.0
                print(
                    f"{kind:<5} {cost:>9.1f} | {naive_fps:>10.1f} {naive.median_ms():>9.1f} "
                    f"{naive_busy:>5.0%} | {fast_fps:>13.1f} {fast.median_ms():>9.1f} "
                    f"{fast_busy:>5.0%} | {fast_fps / naive_fps:>4.2f}x"
                )


if __name__ == "__main__":
    main()
