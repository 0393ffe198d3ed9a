"""COCO bbox evaluation speed: pycocotools vs faster-coco-eval vs detseg, in one run.

Generates a COCO-sized, fixed-seed set (default 5,000 images, ~7 ground-truth boxes and 100
detections per image, 80 classes, 1% crowd, scores rounded to 3 decimals so ties occur),
times each evaluator on the same in-memory data, checks the 12 numbers agree, and prints
times and ratios. Loading is not timed for the peers (`COCO()` / `loadRes` are done first);
for detseg the conversion of the parsed JSON into arrays *is* timed.

    .venv/bin/python benchmarks/bench_coco_eval.py [--images 5000] [--seed 0] [--skip-pycocotools]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import time

import numpy as np

NUM_CLASSES = 80
IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375))


def make_dataset(num_images: int, seed: int, dets_per_image: int = 100) -> tuple[dict, list]:
    """A COCO ground-truth dict and a results list resembling a trained detector's output."""
    rng = np.random.default_rng(seed)
    class_p = 1 / np.arange(1, NUM_CLASSES + 1) ** 0.8  # a few frequent classes, a long tail
    class_p /= class_p.sum()
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
        images.append({"id": image_id, "width": width, "height": height})
        n_gt = rng.poisson(7)
        side = np.exp(rng.uniform(np.log(8), np.log(400), n_gt))
        aspect = np.exp(rng.normal(0, 0.5, n_gt))
        w = np.minimum(side * aspect, width - 1)
        h = np.minimum(side / aspect, height - 1)
        x = rng.uniform(0, width - w)
        y = rng.uniform(0, height - h)
        labels = rng.choice(NUM_CLASSES, n_gt, p=class_p)
        crowd = rng.uniform(size=n_gt) < 0.01
        for i in range(n_gt):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(labels[i]) + 1,
                "bbox": [float(x[i]), float(y[i]), float(w[i]), float(h[i])],
                "area": float(w[i] * h[i] * rng.uniform(0.5, 0.9)), "iscrowd": int(crowd[i]),
            })
        # ~4 detections per object (jittered, usually the right class), the rest background.
        n_obj = min(4 * n_gt, dets_per_image // 2)
        src = rng.integers(0, max(n_gt, 1), n_obj)
        quality = rng.uniform(0, 1, n_obj)
        if n_gt:
            jitter = rng.normal(0, 0.25 * (1 - quality)[:, None], (n_obj, 4))
            bw, bh = w[src] * np.exp(jitter[:, 2]), h[src] * np.exp(jitter[:, 3])
            bx, by = x[src] + jitter[:, 0] * w[src], y[src] + jitter[:, 1] * h[src]
            lab = np.where(rng.uniform(size=n_obj) < 0.85, labels[src],
                           rng.integers(0, NUM_CLASSES, n_obj))
            score = np.clip(0.3 + 0.6 * quality + rng.normal(0, 0.1, n_obj), 0.001, 1)
        else:
            n_obj = 0
            bx = by = bw = bh = lab = score = np.zeros(0)
        n_bg = dets_per_image - n_obj
        side = np.exp(rng.uniform(np.log(8), np.log(300), n_bg))
        bgw, bgh = np.minimum(side, width - 1), np.minimum(side, height - 1)
        all_x = np.r_[bx, rng.uniform(0, width - bgw)]
        all_y = np.r_[by, rng.uniform(0, height - bgh)]
        all_w, all_h = np.r_[bw, bgw], np.r_[bh, bgh]
        all_lab = np.r_[lab, rng.choice(NUM_CLASSES, n_bg, p=class_p)].astype(int)
        all_score = np.round(np.r_[score, rng.beta(1, 6, n_bg)], 3)
        for j in rng.permutation(dets_per_image):
            results.append({
                "image_id": image_id, "category_id": int(all_lab[j]) + 1,
                "bbox": [round(float(all_x[j]), 2), round(float(all_y[j]), 2),
                         round(float(all_w[j]), 2), round(float(all_h[j]), 2)],
                "score": float(all_score[j]),
            })
    categories = [{"id": c + 1, "name": f"class_{c + 1}"} for c in range(NUM_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


class Timer:
    """Wall-clock and process CPU time of a block (CPU time stays meaningful when other jobs
    share the cores)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def time_pycocotools(gt: dict, results: list) -> tuple[Timer, np.ndarray]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        with Timer() as timer:
            evaluator = COCOeval(coco_gt, coco_dt, "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
    return timer, np.array(evaluator.stats)


def time_faster_coco_eval(gt: dict, results: list) -> tuple[Timer, np.ndarray]:
    from faster_coco_eval import COCO, COCOeval_faster

    logging.getLogger("faster_coco_eval").setLevel(logging.ERROR)
    coco_gt = COCO(copy.deepcopy(gt))
    coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    with Timer() as timer:
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return timer, np.array(evaluator.stats[:12])


def time_detseg(gt: dict, results: list) -> tuple[Timer, np.ndarray]:
    from detseg.metrics import evaluate_coco_files, format_coco_summary

    gt, results = copy.deepcopy(gt), copy.deepcopy(results)
    with Timer() as timer:
        result = evaluate_coco_files(gt, results, iou_type="bbox", protocol="coco")
        format_coco_summary(result)
    return timer, np.array(result["stats"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pycocotools", action="store_true")
    args = parser.parse_args()
    gt, results = make_dataset(args.images, args.seed)
    print(f"{args.images} images, {len(gt['annotations'])} ground truths, "
          f"{len(results)} detections, {NUM_CLASSES} classes")
    runs = {"detseg": time_detseg(gt, results), "faster-coco-eval": time_faster_coco_eval(gt, results)}
    if not args.skip_pycocotools:
        runs["pycocotools"] = time_pycocotools(gt, results)
    reference = runs["pycocotools" if "pycocotools" in runs else "faster-coco-eval"][1]
    ours = runs["detseg"][0]
    print(f"{'':>17}  {'wall s':>7} {'x detseg':>8}  {'CPU s':>7} {'x detseg':>8}  max |stats - ref|")
    for name, (timer, stats) in runs.items():
        diff = np.abs(stats - reference).max()
        print(f"{name:>17}: {timer.wall:7.2f} {timer.wall / ours.wall:8.2f}  {timer.cpu:7.2f} "
              f"{timer.cpu / ours.cpu:8.2f}  {diff:.1e}")
    print("stats:", np.round(runs["detseg"][1], 6).tolist())


if __name__ == "__main__":
    main()
