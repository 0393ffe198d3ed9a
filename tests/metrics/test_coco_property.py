"""Property test: random ground truth and detections give pycocotools' 12 numbers (and its
precision/recall arrays), through the COCO-file path and the per-image update path.

The data are drawn to hit every rule of the protocol: small integer boxes (IoU ties, IoU
exactly at thresholds), areas on the area-range bounds (32^2, 96^2), crowd regions and
crowd-only images, empty images, duplicate detections, tied scores, categories without
ground truth, detections on categories absent from an image.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from detseg.metrics import DetectionEvaluator, evaluate_coco_files
from tests.metrics.reference import pycocotools_eval

CATEGORY_IDS = (1, 4, 9)  # not contiguous: category indices follow sorted ids
AREAS = (50.0, 32.0**2, 2000.0, 96.0**2, 20000.0)  # bounds included on purpose
SCORES = (0.1, 0.5, 0.5, 0.7, 0.9)  # few values: ties

box = st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(1, 8), st.integers(1, 8)).map(
    lambda b: [float(v) for v in b]
)
ground_truth = st.fixed_dictionaries(
    {
        "bbox": box,
        "category_id": st.sampled_from(CATEGORY_IDS[:2]),  # the third category has no gt
        "area": st.sampled_from(AREAS),
        "iscrowd": st.sampled_from((0, 0, 1)),
    }
)
detection = st.fixed_dictionaries(
    {
        "bbox": box,
        "category_id": st.sampled_from(CATEGORY_IDS),
        "score": st.sampled_from(SCORES),
        "copies": st.sampled_from((1, 1, 1, 2)),  # duplicate detections
    }
)
image = st.tuples(st.lists(ground_truth, max_size=5), st.lists(detection, max_size=7))


def build(images: list) -> tuple[dict, list]:
    """A COCO dataset dict and a results list from drawn images."""
    gt = {
        "images": [{"id": 10 * (i + 1), "width": 30, "height": 30} for i in range(len(images))],
        "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS],
        "annotations": [],
    }
    results = []
    for i, (anns, dets) in enumerate(images):
        for a in anns:
            gt["annotations"].append(
                {**a, "id": len(gt["annotations"]) + 1, "image_id": 10 * (i + 1)}
            )
        for d in dets:
            copies = d["copies"]
            det = {k: v for k, v in d.items() if k != "copies"}
            results += [{**det, "image_id": 10 * (i + 1)} for _ in range(copies)]
    return gt, results


def update_path(gt: dict, results: list) -> DetectionEvaluator:
    """The same data through DetectionEvaluator.update, one image at a time (xyxy boxes)."""
    index = {c: k for k, c in enumerate(CATEGORY_IDS)}
    evaluator = DetectionEvaluator([f"c{c}" for c in CATEGORY_IDS])
    for img in sorted(gt["images"], key=lambda im: im["id"]):
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        dets = [d for d in results if d["image_id"] == img["id"]]
        xyxy = lambda items: np.array(  # noqa: E731
            [[x, y, x + w, y + h] for x, y, w, h in (it["bbox"] for it in items)]
        ).reshape(-1, 4)
        evaluator.update(
            {
                "boxes": xyxy(dets),
                "scores": [d["score"] for d in dets],
                "labels": [index[d["category_id"]] for d in dets],
            },
            {
                "boxes": xyxy(anns),
                "labels": [index[a["category_id"]] for a in anns],
                "iscrowd": [a["iscrowd"] for a in anns],
                "area": [a["area"] for a in anns],
            },
        )
    return evaluator


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(image, min_size=1, max_size=4))
def test_random_data_give_pycocotools_numbers(images):
    gt, results = build(images)
    assume(results)  # pycocotools cannot load an empty results list
    reference, _ = pycocotools_eval(gt, results)
    from_files = evaluate_coco_files(gt, results)
    np.testing.assert_allclose(from_files["stats"], reference.stats, rtol=0, atol=1e-9)
    evaluator = update_path(gt, results)
    np.testing.assert_allclose(evaluator.result()["stats"], reference.stats, rtol=0, atol=1e-9)
    ours = evaluator.coco_evaluation()
    np.testing.assert_allclose(ours.precision, reference.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.recall, reference.eval["recall"], rtol=0, atol=1e-12)


def test_more_than_100_detections_per_image_and_category():
    """maxDets truncation (100 per image and category) with tied scores across images."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(3):
        anns = [
            {"bbox": [float(x), float(y), 6.0, 6.0], "category_id": 1, "area": 36.0, "iscrowd": 0}
            for x, y in rng.integers(0, 20, (12, 2))
        ]
        dets = [
            {
                "bbox": [float(x), float(y), 6.0, 6.0],
                "category_id": 1,
                "score": float(s),
                "copies": 1,
            }
            for (x, y), s in zip(
                rng.integers(0, 20, (130, 2)), rng.choice([0.2, 0.4, 0.6], 130), strict=True
            )
        ]
        images.append((anns, dets))
    gt, results = build(images)
    reference, _ = pycocotools_eval(gt, results)
    np.testing.assert_allclose(
        evaluate_coco_files(gt, results)["stats"], reference.stats, rtol=0, atol=1e-9
    )


def test_no_detections_at_all_score_zero():
    """pycocotools cannot load an empty results list; by its definitions every number with
    ground truth is 0 (nothing found), and -1 where a range has no ground truth."""
    gt, _ = build(
        [([{"bbox": [0.0, 0.0, 5.0, 5.0], "category_id": 1, "area": 50.0, "iscrowd": 0}], [])]
    )
    stats = evaluate_coco_files(gt, [])["stats"]
    # only a small object: APm, APl, ARm, ARl have no ground truth
    assert stats == [0.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0]


@pytest.mark.parametrize("gt_id", [0, 7])
def test_ground_truth_id_zero_quirk_is_reproduced(gt_id):
    """pycocotools records a match by the gt *id* and reads 0 as unmatched."""
    gt, results = build(
        [
            (
                [{"bbox": [0.0, 0.0, 5.0, 5.0], "category_id": 1, "area": 50.0, "iscrowd": 0}],
                [{"bbox": [0.0, 0.0, 5.0, 5.0], "category_id": 1, "score": 0.9, "copies": 1}],
            )
        ]
    )
    gt["annotations"][0]["id"] = gt_id
    reference, _ = pycocotools_eval(gt, results)
    np.testing.assert_allclose(
        evaluate_coco_files(gt, results)["stats"], reference.stats, rtol=0, atol=1e-9
    )


def test_a_crowd_region_absorbs_many_detections():
    """Detections inside a crowd region are ignored, however many: a crowd gt can be matched
    again and again (IoU = intersection / detection area)."""
    crowd = {"bbox": [0.0, 0.0, 20.0, 20.0], "category_id": 1, "area": 400.0, "iscrowd": 1}
    person = {"bbox": [30.0, 30.0, 5.0, 5.0], "category_id": 1, "area": 25.0, "iscrowd": 0}
    inside = [[2.0, 2.0, 5.0, 5.0], [10.0, 10.0, 5.0, 5.0], [1.0, 12.0, 4.0, 4.0]]
    dets = [{"bbox": b, "category_id": 1, "score": s, "copies": 1}
            for b, s in zip(inside, (0.9, 0.8, 0.7), strict=True)]
    dets.append({"bbox": [30.0, 30.0, 5.0, 5.0], "category_id": 1, "score": 0.6, "copies": 1})
    gt, results = build([([crowd, person], dets)])
    reference, _ = pycocotools_eval(gt, results)
    stats = evaluate_coco_files(gt, results)["stats"]
    np.testing.assert_allclose(stats, reference.stats, rtol=0, atol=1e-9)
    assert stats[0] == pytest.approx(1.0)  # the one counted detection: a true positive
