"""pycocotools, run as its users run it: the reference the evaluator is checked against."""

from __future__ import annotations

import contextlib
import copy
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def pycocotools_eval(gt: dict, results: list, iou_type: str = "bbox") -> tuple[COCOeval, str]:
    """evaluate + accumulate + summarize on copies of `gt` (a dataset dict) and `results`
    (a results list); returns the COCOeval object and what summarize() printed."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluator.summarize()
    return evaluator, printed.getvalue()
