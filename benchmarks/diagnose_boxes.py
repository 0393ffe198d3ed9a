"""Where a trained detector loses COCO AP (issue 16): the evidence before any change.

For a run folder it reports, on a split (default val):
1. AP at each IoU threshold 0.50 .. 0.95 and AP per box size (COCO's small / medium / large),
   from the same evaluator as `detseg evaluate` (pycocotools-identical);
2. how tight the found boxes are: for each ground truth, the best IoU of a same-class
   detection scoring >= the predict threshold (quantiles, and the share below 0.75 / 0.90);
3. how many positives (cell, anchor) each ground truth gets from the model's target encoder
   on the letterboxed training boxes (no augmentation);
4. the loss terms, validation AP and learning rate over the run's epochs (history.csv).

    .venv/bin/python benchmarks/diagnose_boxes.py RUN [--split val] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
HISTORY_COLUMNS = ("epoch", "lr", "train_minutes", "box_loss", "obj_loss", "cls_loss", "val_box_loss", "val_mAP", "val_mAP50")


def ap_by_threshold(gt_json: Path, dt_json: Path) -> dict:
    """AP at each IoU threshold (all sizes, 100 detections) and AP per size, as COCO averages."""
    from detseg.metrics import DetectionEvaluator

    evaluation = DetectionEvaluator.from_coco(gt_json, dt_json).coco_evaluation()
    precision = evaluation.precision[:, :, :, 0, -1]  # [T, R, K] area all, 100 detections
    per_threshold = [float(p[p > -1].mean()) if np.any(p > -1) else -1.0 for p in precision]
    stats = evaluation.stats
    return {"AP_at_iou": dict(zip([f"{t:.2f}" for t in IOU_THRESHOLDS], per_threshold, strict=True)),
            "AP_small": float(stats[3]), "AP_medium": float(stats[4]), "AP_large": float(stats[5]),
            "AR100": float(stats[8])}  # fmt: skip


def tightness(data, ids: list, detections: list[dict], score_thr: float) -> dict:
    """Quantiles of each ground truth's best IoU with a same-class detection above `score_thr`
    (0 where none), and the shares of ground truths found at IoU >= 0.5 but below 0.75 / 0.90.
    `ids` are the COCO image ids of `data.samples`, in order."""
    from detseg.boxes import box_iou

    by_image: dict = {}
    for d in detections:
        if d["score"] >= score_thr:
            by_image.setdefault(d["image_id"], []).append(d)
    best = []
    for image_id, sample in zip(ids, data.samples, strict=True):
        found = by_image.get(image_id, [])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in found)], np.float32).reshape(-1, 4)
        labels = np.array([d["category_id"] - 1 for d in found], np.int64)
        iou = box_iou(sample.boxes, boxes) if len(boxes) else np.zeros((len(sample.boxes), 0))
        same = sample.labels[:, None] == labels[None, :]
        best.extend(np.where(same, iou, 0.0).max(axis=1, initial=0.0).tolist())
    best = np.asarray(best)
    found = best >= 0.5
    return {"ground_truths": len(best), "recall_at_0.5": float(found.mean()),
            "best_iou_quantiles_of_found": {q: float(np.quantile(best[found], float(q))) if found.any() else None for q in ("0.1", "0.25", "0.5", "0.75")},
            "found_below_0.75": float((found & (best < 0.75)).sum() / max(found.sum(), 1)),
            "found_below_0.90": float((found & (best < 0.90)).sum() / max(found.sum(), 1))}  # fmt: skip


def positives_per_truth(model, train) -> dict:
    """Positives each training ground truth gets from the model's own target encoder, each box
    encoded alone (before collisions) and all boxes of an image together (after them)."""
    from detseg.data.images import letterbox_boxes, letterbox_params

    encoder = model.make_target_encoder()
    alone, together, boxes_total = [], 0, 0
    for sample in train.samples:
        boxes = letterbox_boxes(sample.boxes, letterbox_params(sample.width, sample.height, encoder.input_size))
        for box, label in zip(boxes, sample.labels, strict=True):
            targets = encoder([box[None]], [np.array([label])])
            alone.append(sum(int(targets[f"{level}_obj"].sum()) for level in encoder.levels))
        targets = encoder([boxes], [sample.labels])
        together += sum(int(targets[f"{level}_obj"].sum()) for level in encoder.levels)
        boxes_total += len(boxes)
    counts = np.bincount(alone)
    return {"mean_alone": float(np.mean(alone)), "mean_with_collisions": together / max(boxes_total, 1),
            "share_with_n": {str(n): float(c / len(alone)) for n, c in enumerate(counts) if c}}  # fmt: skip


def history_rows(run: Path) -> list[dict]:
    """The run's epochs (history.csv), the columns of `HISTORY_COLUMNS` it has."""
    with open(run / "history.csv", newline="") as f:
        return [{k: row[k] for k in HISTORY_COLUMNS if k in row} for row in csv.DictReader(f)]


def diagnose(run: Path, split: str) -> dict:
    from detseg.data.coco import write_coco
    from detseg.engine.evaluate import evaluate_model
    from detseg.engine.runs import load_model, load_run

    model_path, cfg, task = load_run(run)
    evaluate_model(run, split=split, print_fn=lambda _: None)
    out_dir = model_path.parent if split == "val" else model_path.parent / f"eval_{split}"
    data = task.load_data(cfg, split)
    with tempfile.TemporaryDirectory() as scratch:
        gt_json = write_coco(data, Path(scratch) / "gt.json")
        report = ap_by_threshold(gt_json, out_dir / "detections.json")
        ids = [image["id"] for image in json.loads(gt_json.read_text())["images"]]
    detections = json.loads((out_dir / "detections.json").read_text())
    report["tightness"] = tightness(data, ids, detections, cfg.predict.score_thr)
    model = load_model(model_path, task, names=cfg.data.names)
    report["positives"] = positives_per_truth(model, task.load_data(cfg, "train"))
    report["history"] = history_rows(run)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a detector's run folder")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    report = diagnose(args.run, args.split)
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=1))
    print(" | ".join(report["history"][0]))
    for row in report["history"]:
        print(" | ".join(row.values()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
