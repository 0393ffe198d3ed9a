"""Evaluation jobs: score a COCO results file against COCO ground truth without a model
(`detseg evaluate --gt GT.json --dt DT.json`), exactly as pycocotools would."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from detseg.errors import DetsegError
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
        json_out = Path(json_out)
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise DetsegError(f"cannot write the metrics JSON ({err.strerror})", json_out) from None
    if plots_dir is not None:
        evaluator.save_plots(plots_dir)
    return result
