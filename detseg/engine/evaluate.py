"""Evaluation jobs: score a COCO results file against COCO ground truth without a model
(`detseg evaluate --gt GT.json --dt DT.json`), exactly as pycocotools would; and evaluate a
trained model of any task on a split of its dataset (`detseg evaluate RUN_OR_MODEL`).

The model-free path imports neither Keras nor TensorFlow: the model path imports the engine
and the tasks only when it is taken."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from detseg.data.files import write_json
from detseg.metrics import DetectionEvaluator, format_summary


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
        write_json(result, json_out, indent=2)
    if plots_dir is not None:
        evaluator.save_plots(plots_dir)
    return result


# === Evaluating a trained model ===


def evaluate_model(
    model: str | Path,
    *,
    config: str | Path | None = None,
    overrides: dict | None = None,
    split: str = "val",
    print_fn: Callable[[str], None] = print,
    unsafe: bool = False,
) -> dict:
    """`detseg evaluate RUN_OR_MODEL`: the task's report on a split (COCO + VOC tables for a
    detector, accuracy and top-k for a classifier, ...), its files written beside the model
    (val split) or in an `eval_<split>` folder. `unsafe` loads a model holding Python code
    (`runs.load_model`). Returns the metrics dict."""
    from detseg.engine.runs import load_model, load_run

    model_path, cfg, task = load_run(model, config, overrides)
    data = task.load_data(cfg, split)
    task.check_val_data(cfg, data)
    out_dir = model_path.parent if split == "val" else model_path.parent / f"eval_{split}"
    report = task.evaluate(cfg, load_model(model_path, task, unsafe=unsafe, names=cfg.data.names), data, out_dir)
    print_fn(report.text)
    return report.metrics
