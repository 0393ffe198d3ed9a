"""Segmentation benchmark: a trained U-Net run scored on its validation split as the ISBI 2012
challenge scores membranes (pixel error, membrane IoU, adapted Rand error), next to the
trivial all-"cell" prediction; then inference ms per image (batch 1) and video fps through
`detseg predict`, next to a trained detector's on the same clip.

    .venv/bin/python benchmarks/bench_segment.py --run runs/membrane_unet \\
        --detector runs/shapes_yolov3_tiny --video ../shared/data/videos/car-detection.mp4

The adapted Rand error compares the cells as segments: the connected components of the
non-membrane class in the truth and in the prediction (scikit-image's `adapted_rand_error`,
label 0 = membrane ignored in the truth, as in the challenge's foreground-restricted Rand).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage.measure import label
from skimage.metrics import adapted_rand_error

from detseg.data import load_split, read_image, read_semantic_mask
from detseg.engine.predict import predict
from detseg.engine.runs import load_model, load_run
from detseg.heads import Detector
from detseg.heads.unet_infer import Segmenter
from detseg.quiet import start_backend_quietly


def membrane_scores(truths: list[np.ndarray], preds: list[np.ndarray], membrane: int) -> dict[str, float]:
    """Pixel error, membrane IoU and adapted Rand error (mean over images) of class maps."""
    right = sum(int((t == p).sum()) for t, p in zip(truths, preds, strict=True))
    total = sum(t.size for t in truths)
    inter = sum(int(((t == membrane) & (p == membrane)).sum()) for t, p in zip(truths, preds, strict=True))
    union = sum(int(((t == membrane) | (p == membrane)).sum()) for t, p in zip(truths, preds, strict=True))
    rand = [
        adapted_rand_error(label(t != membrane, connectivity=1), label(p != membrane, connectivity=1))[0]
        for t, p in zip(truths, preds, strict=True)
    ]
    return {"pixel_error": 1 - right / total, "membrane_IoU": inter / union, "rand_error": float(np.mean(rand))}


def median_ms(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/membrane_unet")
    parser.add_argument("--detector", default="runs/shapes_yolov3_tiny")
    parser.add_argument("--video", default="../shared/data/videos/car-detection.mp4")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    start_backend_quietly()

    model_path, cfg, task = load_run(args.run)
    model = load_model(model_path, task)
    dataset = load_split(cfg.data, "val")
    names = list(dataset.mask_classes)
    membrane = names.index("membrane")
    images = [read_image(s.image_path) for s in dataset.samples]
    lut = dataset.mask_lut()
    truths = [read_semantic_mask(s.semantic_mask_path, lut) for s in dataset.samples]
    segmenter = Segmenter.from_model(model, batch_size=1)
    preds = segmenter(images)
    trivial = [np.full_like(t, names.index("cell")) for t in truths]
    print(f"{args.run}: {len(images)} held-out images ({', '.join(s.image_path.name for s in dataset.samples)})")
    print(f"{'prediction':<16} pixel error  membrane IoU  adapted Rand error")
    for name, maps in (("U-Net", preds), ("all 'cell'", trivial)):
        s = membrane_scores(truths, maps, membrane)
        print(f"{name:<16} {s['pixel_error']:11.4f}  {s['membrane_IoU']:12.4f}  {s['rand_error']:18.4f}")

    seg_ms = median_ms(lambda: segmenter(images[:1]), args.repeats)
    side = cfg.model.input_size
    print(f"\ninference, batch 1, end to end (letterbox + model + map back), median of {args.repeats}:")
    print(f"  U-Net {side} px: {seg_ms:.1f} ms per image")
    det_path, det_cfg, det_task = load_run(args.detector)
    detector = Detector(load_model(det_path, det_task), score_thr=det_cfg.predict.score_thr, batch_size=1)
    det_ms = median_ms(lambda: detector(images[:1]), args.repeats)
    print(f"  detector {det_cfg.model.input_size} px ({args.detector}): {det_ms:.1f} ms per image")

    print(f"\nvideo through `detseg predict` (threaded runner), first {args.frames} frames of {args.video}:")
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (("U-Net", args.run), ("detector", args.detector)):
            summary = predict(run, source=args.video, save=str(Path(tmp) / f"{name}.mp4"), max_frames=args.frames, batch=1)
            print(f"  {name}: {summary.fps:.1f} fps end to end, model {summary.infer_ms['mean']:.1f} ms per frame")


if __name__ == "__main__":
    main()
