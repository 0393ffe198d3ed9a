"""YOLO inference: `Detector` (compiled candidates + OpenCV NMS on the host) against the peer
`Model.predict` (Keras' own path, with the in-graph decode + NMS of `predict_step`).

Run: .venv/bin/python benchmarks/bench_yolo_infer.py [--size 320] [--repeats 20]
Model: darknet_tiny (backbone_width 0.5) + YOLO head (width 0.5, depth 1), levels P4/P5, 3 classes,
untrained; score_thr 0.001 (evaluation setting: up to 1000 candidates reach NMS).
Figures: milliseconds per call (median of `--repeats`), and the ratio peer / ours.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from detseg.config import DetectorModelConfig  # noqa: E402
from detseg.heads import Detector, build_yolo, host_nms  # noqa: E402
from detseg.heads.yolo_decode import nms_padded  # noqa: E402

ANCHORS = [[20, 20], [30, 30], [40, 40], [55, 55], [75, 75], [100, 100]]


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: tracing and compilation are not timed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    size = args.size
    cfg = DetectorModelConfig(
        backbone="darknet_tiny",
        backbone_width=0.5,
        input_size=size,
        yolo={"levels": ["P4", "P5"], "width": 0.5},
    )
    keras.utils.set_random_seed(0)
    model = build_yolo(cfg, 3, ANCHORS)  # EvalConfig defaults: score_thr 0.001, iou_thr 0.6
    detector = Detector(
        model, score_thr=model.score_thr, iou_thr=model.iou_thr, max_det=model.max_det
    )
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8)

    rows = []
    for batch in (1, 16):
        peer = median_ms(lambda b=batch: model.predict(frames[:b], verbose=0), args.repeats)
        ours = median_ms(lambda b=batch: detector(list(frames[:b])), args.repeats)
        rows.append((f"end to end, batch {batch}: Model.predict vs Detector", peer, ours))

    # Post-processing alone on the candidates of one batch of 16.
    boxes, scores, labels = detector.candidates(frames)
    graph_nms = median_ms(
        lambda: keras.ops.convert_to_numpy(
            nms_padded(boxes, scores, labels, model.score_thr, model.iou_thr, model.max_det)["num"]
        ),
        args.repeats,
    )
    cpu_nms = median_ms(
        lambda: host_nms(boxes, scores, labels, model.score_thr, model.iou_thr, model.max_det),
        args.repeats,
    )
    rows.append(
        (
            f"NMS of {boxes.shape[1]} candidates x 16 images: in-graph (eager) vs host",
            graph_nms,
            cpu_nms,
        )
    )

    print(
        f"backend {keras.backend.backend()}, input {size} px, {model.count_params():,} parameters"
    )
    print(f"{'what':72s} {'peer ms':>9s} {'ours ms':>9s} {'peer/ours':>9s}")
    for what, peer, ours in rows:
        print(f"{what:72s} {peer:9.1f} {ours:9.1f} {peer / ours:9.2f}")


if __name__ == "__main__":
    main()
