"""Host NMS speed: detseg.boxes.nms (OpenCV NMSBoxesBatched) vs a vectorised NumPy greedy
NMS (one IoU row per kept box, per-class by the coordinate-offset trick), same inputs.

    .venv/bin/python benchmarks/bench_nms.py
"""

from __future__ import annotations

import time

import numpy as np

from detseg.boxes import box_iou, nms


def numpy_nms(boxes, scores, labels, iou_thr, score_thr, max_det):
    """The usual NumPy greedy NMS: sort, keep the best, drop what overlaps it, repeat."""
    alive = np.flatnonzero(scores > score_thr)
    alive = alive[np.argsort(-scores[alive], kind="stable")]
    shifted = boxes + (labels * (boxes.max() * 2 + 1))[:, None]
    keep = []
    while alive.size and len(keep) < max_det:
        keep.append(alive[0])
        overlap = box_iou(shifted[alive[:1]], shifted[alive[1:]])[0]
        alive = alive[1:][overlap <= iou_thr]
    return np.array(keep, dtype=np.int64)


def candidates(rng, n, n_classes=80):
    """Clustered candidates around 30 objects, as a detector's raw output looks."""
    centres = rng.uniform(50, 590, (30, 2))
    sizes = rng.uniform(20, 200, (30, 2))
    which = rng.integers(0, 30, n)
    centre = centres[which] + rng.normal(0, 5, (n, 2))
    half = sizes[which] * rng.uniform(0.8, 1.2, (n, 2)) / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    labels = np.where(rng.uniform(size=n) < 0.8, which % n_classes, rng.integers(0, n_classes, n))
    return boxes, rng.uniform(0, 1, n).astype(np.float32), labels


def best_time(fn, *args, repeats=20, **kwargs):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'candidates':>10} {'detseg (OpenCV)':>16} {'NumPy greedy':>13} {'speed-up':>9} same")
    for n in (300, 1000, 2000, 8400):
        boxes, scores, labels = candidates(rng, n)
        args = (boxes, scores, labels, 0.45, 0.25, 300)
        ours = best_time(nms, boxes, scores, 0.45, labels=labels, score_thr=0.25)
        peer = best_time(numpy_nms, *args)
        same = np.array_equal(nms(boxes, scores, 0.45, labels=labels, score_thr=0.25),
                              numpy_nms(*args))
        print(f"{n:>10} {ours * 1e3:>13.2f} ms {peer * 1e3:>10.2f} ms {peer / ours:>8.1f}x {same}")


if __name__ == "__main__":
    main()
