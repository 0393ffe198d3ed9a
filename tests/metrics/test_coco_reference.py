"""The evaluator against pycocotools on real COCO ground truth (val2014, 100 images, with
crowd regions) and the official cocoapi fake results, bbox and segm."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detseg.engine.evaluate import evaluate_results_file
from detseg.metrics import DetectionEvaluator, evaluate_coco_files, format_coco_summary
from detseg.metrics.coco_eval import SUMMARY
from tests.metrics.reference import pycocotools_eval

RESULTS = {
    "bbox": "instances_val2014_fakebbox100_results.json",
    "segm": "instances_val2014_fakesegm100_results.json",
}


@pytest.fixture(scope="module")
def coco100(shared_data):
    folder = shared_data / "coco_val2014_100"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real COCO fixture)")
    return folder


@pytest.fixture(scope="module")
def reference(coco100):
    """pycocotools' evaluation of each iou_type, computed once."""
    gt = json.loads((coco100 / "instances_val2014_100.json").read_text())
    return {
        iou_type: pycocotools_eval(gt, json.loads((coco100 / name).read_text()), iou_type)
        for iou_type, name in RESULTS.items()
    }


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_twelve_numbers_and_arrays_equal_pycocotools(coco100, reference, iou_type):
    cocoeval, _ = reference[iou_type]
    evaluator = DetectionEvaluator.from_coco(
        coco100 / "instances_val2014_100.json", coco100 / RESULTS[iou_type], iou_type=iou_type
    )
    result = evaluator.result()
    np.testing.assert_allclose(result["stats"], cocoeval.stats, rtol=0, atol=1e-6)
    for (name, *_), value in zip(SUMMARY, cocoeval.stats, strict=True):
        assert result[name] == pytest.approx(value, abs=1e-6), name
    ours = evaluator.coco_evaluation()
    np.testing.assert_allclose(ours.precision, cocoeval.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.recall, cocoeval.eval["recall"], rtol=0, atol=1e-12)
    assert result["notes"] == []


def test_per_class_ap_equals_pycocotools_arrays(coco100, reference):
    cocoeval, _ = reference["bbox"]
    result = evaluate_coco_files(coco100 / "instances_val2014_100.json", coco100 / RESULTS["bbox"])
    cats = cocoeval.cocoGt.loadCats(cocoeval.params.catIds)
    precision = cocoeval.eval["precision"]  # [T, R, K, A, M]
    assert list(result["per_class"]) == [c["name"] for c in cats]
    for k, cat in enumerate(cats):
        every_iou = precision[:, :, k, 0, -1]
        at_50 = precision[0, :, k, 0, -1]
        expected_ap = every_iou[every_iou > -1].mean() if np.any(every_iou > -1) else -1
        expected_ap50 = at_50[at_50 > -1].mean() if np.any(at_50 > -1) else -1
        assert result["per_class"][cat["name"]]["AP"] == pytest.approx(expected_ap, abs=1e-12)
        assert result["per_class"][cat["name"]]["AP50"] == pytest.approx(expected_ap50, abs=1e-12)


def test_summary_lines_are_pycocotools_lines(coco100, reference):
    _, printed = reference["bbox"]
    result = evaluate_coco_files(coco100 / "instances_val2014_100.json", coco100 / RESULTS["bbox"])
    ours = format_coco_summary(result).splitlines()
    assert ours[:12] == printed.splitlines()
    assert (
        ours[0] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.505"
    )
    assert len(ours) == 12 + 1 + 80  # header + one row per category


def test_dataset_style_detections_score_the_same(coco100, reference, tmp_path):
    cocoeval, _ = reference["bbox"]
    results = json.loads((coco100 / RESULTS["bbox"]).read_text())
    dataset = {"images": [], "annotations": results, "categories": []}
    path = tmp_path / "dt_dataset.json"
    path.write_text(json.dumps(dataset))
    result = evaluate_coco_files(coco100 / "instances_val2014_100.json", path)
    np.testing.assert_allclose(result["stats"], cocoeval.stats, rtol=0, atol=1e-6)


def test_evaluate_results_file_prints_and_writes_the_schema(coco100, reference, tmp_path):
    cocoeval, printed = reference["segm"]
    lines = []
    out = tmp_path / "out" / "metrics.json"
    result = evaluate_results_file(
        coco100 / "instances_val2014_100.json",
        coco100 / RESULTS["segm"],
        iou_type="segm",
        json_out=out,
        print_fn=lines.append,
    )
    assert lines[0].splitlines()[:12] == printed.splitlines()
    written = json.loads(out.read_text())
    assert written == result
    expected_keys = {"protocol", "iou_type", "stats", "per_class", "notes"} | {
        n for n, *_ in SUMMARY
    }
    assert set(written) == expected_keys
    assert written["protocol"] == "coco" and written["iou_type"] == "segm"
    assert set(next(iter(written["per_class"].values()))) == {"AP", "AP50"}
    np.testing.assert_allclose(written["stats"], cocoeval.stats, rtol=0, atol=1e-6)
