"""Evaluation jobs: score a COCO results file against COCO ground truth without a model
(`detseg evaluate --gt GT.json --dt DT.json`), exactly as pycocotools would; and evaluate a
trained detector on a split of its dataset (`detseg evaluate RUN_OR_MODEL`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from detseg.errors import DetsegError
from detseg.metrics import DetectionEvaluator, format_summary

if TYPE_CHECKING:  # the model-free path must not start the Keras backend
    import keras

    from detseg.config import EvalConfig
    from detseg.data import Dataset, Sample
    from detseg.heads import Detector


def evaluate_results_file(
    gt_json: str | Path,
    dt_json: str | Path,
    *,
    iou_type: str = "bbox",
    protocol: str = "coco",
    iou_thr: float = 0.5,
    json_out: str | Path | None = None,
    plots_dir: str | Path | None = None,
    print_fn: Callable[[str], None] = print,
) -> dict:
    """Score `dt_json` (a COCO results list, or a dataset whose annotations carry `score`)
    against `gt_json`; print the summary (pycocotools' 12 lines + per class, or the VOC
    table) and any notes; write the metrics JSON to `json_out` and PR-curve and confusion
    matrix PNGs to `plots_dir` when given. Returns the metrics dict."""
    evaluator = DetectionEvaluator.from_coco(
        gt_json, dt_json, iou_type=iou_type, protocol=protocol, iou_thr=iou_thr
    )
    result = evaluator.result()
    print_fn(format_summary(result))
    for note in result["notes"]:
        print_fn(f"note: {note}")
    if json_out is not None:
        _write_json(result, Path(json_out))
    if plots_dir is not None:
        evaluator.save_plots(plots_dir)
    return result


# === Evaluating a trained detector ===


def ground_truth_of(sample: Sample) -> dict:
    """A sample's annotations in the evaluator's per-image form (crowd, area, difficult kept)."""
    truth = {"boxes": sample.boxes, "labels": sample.labels}
    for key in ("iscrowd", "area", "difficult"):
        if getattr(sample, key) is not None:
            truth[key] = getattr(sample, key)
    return truth


def detect_dataset(detector: Detector, dataset: Dataset, batch_size: int = 16) -> list[dict]:
    """Run a `Detector` over every image of a dataset; boxes come back in original pixels."""
    from detseg.data import read_image

    detections: list[dict] = []
    for start in range(0, len(dataset.samples), batch_size):
        chunk = dataset.samples[start : start + batch_size]
        detections += detector([read_image(s.image_path) for s in chunk])
    return detections


def evaluate_detector(
    model: keras.Model, dataset: Dataset, eval_cfg: EvalConfig, batch_size: int = 16
) -> tuple[DetectionEvaluator, list[dict]]:
    """Detect on `dataset` with the evaluation post-processing and accumulate the metrics."""
    from detseg.heads import Detector

    detector = Detector(
        model, score_thr=eval_cfg.score_thr, iou_thr=eval_cfg.iou_thr, max_det=eval_cfg.max_det, batch_size=batch_size
    )
    detections = detect_dataset(detector, dataset, batch_size)
    evaluator = DetectionEvaluator(dataset.class_names, iou_thr=eval_cfg.voc_iou_thr)
    evaluator.update(detections, [ground_truth_of(s) for s in dataset.samples])
    return evaluator, detections


def coco_results(dataset: Dataset, detections: list[dict]) -> list[dict]:
    """Detections in COCO results format, with the dataset's own image and category ids."""
    category_ids = dataset.category_ids or list(range(1, len(dataset.class_names) + 1))
    results = []
    for index, (sample, found) in enumerate(zip(dataset.samples, detections, strict=True)):
        image_id = sample.image_id if sample.image_id is not None else index
        for (x1, y1, x2, y2), score, label in zip(found["boxes"], found["scores"], found["labels"], strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_ids[int(label)]),
                    "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                    "score": round(float(score), 5),
                }
            )
    return results


def _write_json(data, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise DetsegError(f"cannot write ({err.strerror})", path) from None


def write_detection_report(
    evaluator: DetectionEvaluator, dataset: Dataset, detections: list[dict], out_dir: str | Path
) -> str:
    """metrics.json (COCO schema), metrics_voc.json, detections.json and plots in `out_dir`;
    returns the printed report (COCO table, then VOC AP per class)."""
    out = Path(out_dir)
    coco = evaluator.result("coco")
    voc = evaluator.result("voc12")
    _write_json(coco, out / "metrics.json")
    _write_json(voc, out / "metrics_voc.json")
    _write_json(coco_results(dataset, detections), out / "detections.json")
    evaluator.save_plots(out / "plots", "coco")
    return f"{format_summary(coco)}\n\n{format_summary(voc)}\nmetrics, detections and plots: {out}"


def evaluate_model(
    model: str | Path,
    *,
    config: str | Path | None = None,
    overrides: dict | None = None,
    split: str = "val",
    print_fn: Callable[[str], None] = print,
) -> dict:
    """`detseg evaluate RUN_OR_MODEL`: COCO table + VOC AP + per-class AP on a split; writes
    metrics.json, metrics_voc.json, detections.json and plots beside the model (for the val
    split) or in an `eval_<split>` folder. Returns the COCO metrics dict."""
    from detseg.data import load_split
    from detseg.engine.predict import load_model, model_config, resolve_model_path

    model_path = resolve_model_path(model)
    cfg = model_config(model_path, config, overrides)
    if cfg.model.kind == "classifier":
        from detseg.engine.classify import evaluate_classifier

        return evaluate_classifier(model_path, cfg, split, print_fn=print_fn)
    dataset = load_split(cfg.data, split)
    evaluator, detections = evaluate_detector(load_model(model_path), dataset, cfg.eval)
    out_dir = model_path.parent if split == "val" else model_path.parent / f"eval_{split}"
    print_fn(write_detection_report(evaluator, dataset, detections, out_dir))
    return evaluator.result("coco")
