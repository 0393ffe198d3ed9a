"""DetectionEvaluator's per-image API, masks, confusion matrix, plots, and clear errors for
bad COCO files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detseg.engine.evaluate import evaluate_results_file
from detseg.errors import DetsegError
from detseg.metrics import DetectionEvaluator, evaluate_coco_files, format_coco_summary
from tests.metrics.reference import pycocotools_eval

CLASSES = ["cat", "dog", "fox"]


def image(boxes, labels, scores=None, **extra):
    data = {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4), "labels": labels, **extra}
    if scores is not None:
        data["scores"] = scores
    return data


def random_images(seed=0, n=5):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        g = rng.integers(1, 6)
        xy = rng.uniform(0, 60, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 40, (g, 2))], 1)
        pick = rng.integers(0, g, 8)
        dt = gt[pick] + rng.normal(0, 3, (8, 4))
        images.append((
            image(dt, rng.integers(0, 3, 8), rng.uniform(0, 1, 8).astype(np.float32)),
            image(gt, rng.integers(0, 3, g)),
        ))
    return images


def as_coco(images):
    """The same images as a COCO dataset + results (xywh, areas as the evaluator defaults)."""
    gt = {"images": [], "annotations": [], "categories": [
        {"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]}
    results = []
    for i, (pred, truth) in enumerate(images):
        gt["images"].append({"id": i + 1, "width": 100, "height": 100})
        for box, label in zip(truth["boxes"].astype(np.float64), truth["labels"], strict=True):
            x1, y1, x2, y2 = box
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for box, label, score in zip(pred["boxes"].astype(np.float64), pred["labels"],
                                     pred["scores"], strict=True):
            x1, y1, x2, y2 = box
            results.append({"image_id": i + 1, "category_id": int(label) + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return gt, results


def test_update_equals_pycocotools_on_float_xyxy_boxes():
    images = random_images()
    evaluator = DetectionEvaluator(CLASSES)
    for pred, truth in images:
        evaluator.update(pred, truth)
    reference, _ = pycocotools_eval(*as_coco(images))
    np.testing.assert_allclose(evaluator.result()["stats"], reference.stats, rtol=0, atol=1e-9)


def test_batches_padding_and_reset():
    images = random_images(seed=1)
    one_by_one = DetectionEvaluator(CLASSES)
    for pred, truth in images:
        one_by_one.update(pred, truth)
    padded = DetectionEvaluator(CLASSES)
    pad_box = np.zeros((2, 4), np.float32)
    batch_pred = [{**p, "boxes": np.vstack([p["boxes"], pad_box]),
                   "labels": np.r_[p["labels"], -1, -1], "scores": np.r_[p["scores"], 0, 0]}
                  for p, _ in images]
    batch_gt = [{**t, "boxes": np.vstack([t["boxes"], pad_box]), "labels": np.r_[t["labels"], -1, -1]}
                for _, t in images]
    padded.update(batch_pred, batch_gt)
    assert padded.num_images == len(images)
    assert padded.result() == one_by_one.result()
    padded.reset()
    assert padded.num_images == 0
    assert padded.result()["stats"] == [-1.0] * 12  # nothing to score, as pycocotools says


def test_segm_from_binary_masks_equals_pycocotools():
    rng = np.random.default_rng(2)
    gt = {"images": [{"id": 1, "width": 32, "height": 24}],
          "categories": [{"id": 1, "name": "cat"}], "annotations": []}
    true_masks = np.zeros((3, 24, 32), np.uint8)
    pred_masks = np.zeros((4, 24, 32), np.uint8)
    for k, (y, x) in enumerate(rng.integers(0, 14, (3, 2))):
        true_masks[k, y : y + 10, x : x + 12] = 1
    for k in range(4):
        pred_masks[k] = np.roll(true_masks[k % 3], k, axis=1)
    scores = [0.9, 0.8, 0.7, 0.6]
    results = []
    for k, m in enumerate(true_masks):
        rle = mask_utils.encode(np.asfortranarray(m))
        gt["annotations"].append({"id": k + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                  "bbox": mask_utils.toBbox(rle).tolist(),
                                  "area": float(mask_utils.area(rle)), "segmentation": rle})
    for m, s in zip(pred_masks, scores, strict=True):
        results.append({"image_id": 1, "category_id": 1, "score": s,
                        "segmentation": mask_utils.encode(np.asfortranarray(m))})
    reference, _ = pycocotools_eval(gt, results, "segm")
    evaluator = DetectionEvaluator(["cat"], iou_type="segm")
    evaluator.update(
        image(np.zeros((4, 4)), [0] * 4, scores, masks=pred_masks),
        image(np.zeros((3, 4)), [0] * 3, masks=true_masks),
    )
    np.testing.assert_allclose(evaluator.result()["stats"], reference.stats, rtol=0, atol=1e-9)


def test_masks_of_different_sizes_are_an_error():
    evaluator = DetectionEvaluator(["cat"], iou_type="segm")
    evaluator.update(
        image([[0, 0, 4, 4]], [0], [0.9], masks=np.ones((1, 8, 8), np.uint8)),
        image([[0, 0, 4, 4]], [0], masks=np.ones((1, 6, 8), np.uint8)),
    )
    with pytest.raises(DetsegError, match=r"different sizes \(h, w\): \[\(6, 8\), \(8, 8\)\]"):
        evaluator.result()


def test_no_detections_gives_zero_ap():
    evaluator = DetectionEvaluator(CLASSES)
    evaluator.update(image(np.zeros((0, 4)), [], []), image([[0, 0, 50, 50]], [1]))
    result = evaluator.result()
    assert result["AP"] == 0.0 and result["AR100"] == 0.0
    assert result["per_class"]["dog"] == {"AP": 0.0, "AP50": 0.0}
    assert result["per_class"]["cat"] == {"AP": -1.0, "AP50": -1.0}  # no ground truth


@pytest.mark.parametrize(
    ("pred", "truth", "message"),
    [
        (image([[0, 0, 1, 1]], [3], [0.5]), image([[0, 0, 1, 1]], [0]), r"labels must be in 0\.\.2"),
        (image([[0, 0, 1, 1]], [0, 1], [0.5]), image([[0, 0, 1, 1]], [0]), "1 boxes but 2 labels"),
        (image([[0, 0, np.nan, 1]], [0], [0.5]), image([], []), "boxes contain NaN or infinity"),
        (image([[0, 0, 1, 1]], [0], [np.inf]), image([], []), "scores contain NaN or infinity"),
        ({"boxes": np.zeros((2, 5)), "labels": [0, 0], "scores": [1, 1]}, image([], []),
         r"boxes must be \[N, 4\] xyxy, got shape \(2, 5\)"),
        (image([[0, 0, 1, 1]], [0]), image([], []), "must have 'scores'"),
        ({"labels": [0]}, image([], []), "must be a dict with 'boxes' and 'labels'"),
    ],
)
def test_bad_updates_raise_clear_errors(pred, truth, message):
    with pytest.raises(DetsegError, match=message):
        DetectionEvaluator(CLASSES).update(pred, truth)


def test_a_bad_image_in_a_batch_keeps_nothing_of_the_batch():
    evaluator = DetectionEvaluator(CLASSES)
    good = (image([[0, 0, 1, 1]], [0], [0.5]), image([[0, 0, 1, 1]], [0]))
    bad = (image([[0, 0, 1, 1]], [5], [0.5]), image([], []))
    with pytest.raises(DetsegError):
        evaluator.update([good[0], bad[0]], [good[1], bad[1]])
    assert evaluator.num_images == 0 and len(evaluator.tables()[0]) == 0


def test_segm_needs_masks_and_constructor_checks():
    with pytest.raises(DetsegError, match="needs 'masks'"):
        DetectionEvaluator(CLASSES, iou_type="segm").update(image([], [], []), image([], []))
    with pytest.raises(DetsegError, match="protocol must be one of"):
        DetectionEvaluator(CLASSES, protocol="voc2020")
    with pytest.raises(DetsegError, match="iou_type must be one of"):
        DetectionEvaluator(CLASSES, iou_type="keypoints")


def test_confusion_matrix_by_hand():
    cat, dog, fox = 0, 1, 2
    background = 3
    evaluator = DetectionEvaluator(CLASSES)
    evaluator.update(
        image([[0, 0, 10, 10], [20, 0, 30, 10], [60, 60, 70, 70], [40, 40, 50, 50], [0, 0, 10, 10]],
              [cat, cat, fox, dog, dog], [0.9, 0.8, 0.7, 0.1, 0.6]),
        image([[0, 0, 10, 10], [20, 0, 30, 10], [80, 80, 90, 90], [100, 0, 120, 20]],
              [cat, dog, fox, cat], iscrowd=[0, 0, 0, 1]),
    )
    expected = np.zeros((4, 4), int)
    expected[cat, cat] = 1  # cat found as cat
    expected[cat, dog] = 1  # the dog at [20, 0, 30, 10] called a cat
    expected[fox, background] = 1  # fox where there is nothing
    expected[dog, background] = 1  # second detection on the cat: its object is taken
    expected[background, fox] = 1  # the fox was missed; the crowd cat counts nowhere
    # the 0.1 dog is under the 0.25 score threshold
    np.testing.assert_array_equal(evaluator.confusion_matrix(), expected)


def test_plots_are_written(tmp_path):
    evaluator = DetectionEvaluator(CLASSES)
    for pred, truth in random_images(seed=3):
        evaluator.update(pred, truth)
    for protocol in ("coco", "voc12"):
        paths = evaluator.save_plots(tmp_path / protocol, protocol)
        names = sorted(p.name for p in paths)
        assert "pr_all.png" in names and "confusion_matrix.png" in names
        assert len([n for n in names if n.startswith("pr_") and n != "pr_all.png"]) <= 3
        for path in paths:
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_coco_summary_per_class_table():
    evaluator = DetectionEvaluator(CLASSES)
    evaluator.update(image([[0, 0, 10, 10]], [0], [0.9]), image([[0, 0, 10, 10]], [0]))
    lines = format_coco_summary(evaluator.result()).splitlines()
    assert lines[12].split() == ["class", "AP", "AP50"]
    assert lines[13].split() == ["cat", "1.000", "1.000"]
    assert lines[14].split() == ["dog", "n/a", "n/a"]


# === COCO files ===
@pytest.fixture
def small_files(tmp_path):
    gt, results = as_coco(random_images(seed=4))
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(results))
    return gt, results, gt_path, dt_path


def test_files_path_equals_pycocotools_and_notes_unknown_categories(small_files, tmp_path):
    gt, results, gt_path, _ = small_files
    extra = [{"image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5], "score": 0.99}]
    path = tmp_path / "dt_extra.json"
    path.write_text(json.dumps(results + extra))
    reference, _ = pycocotools_eval(gt, results + extra)  # it ignores category 99 silently
    result = evaluate_coco_files(gt_path, path)
    np.testing.assert_allclose(result["stats"], reference.stats, rtol=0, atol=1e-9)
    assert result["notes"] == [
        "1 detections on category ids not in the ground truth were ignored "
        "(pycocotools ignores them too): [99]"
    ]


def test_missing_area_falls_back_to_box_area_with_a_note(small_files):
    gt, results, _, _ = small_files
    for ann in gt["annotations"]:
        del ann["area"]
    result = evaluate_coco_files(gt, results)
    assert result["notes"] == [
        f"{len(gt['annotations'])} ground-truth annotations had no 'area'; their box area was used"
    ]


def test_file_errors_name_the_file(small_files, tmp_path):
    gt, results, gt_path, dt_path = small_files
    with pytest.raises(DetsegError, match=r"missing\.json: file not found"):
        evaluate_coco_files(tmp_path / "missing.json", dt_path)
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"image_id": 1,\n   "score": }\n]')
    with pytest.raises(DetsegError, match=r"broken\.json: invalid JSON at line 3, column"):
        evaluate_coco_files(gt_path, broken)
    cases = {
        "no_score.json": ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}],
                          "result 0 has no 'score'"),
        "bad_box.json": ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1}],
                         r"result 0 has an invalid 'bbox'"),
        "bad_image.json": ([{"image_id": 777, "category_id": 1, "bbox": [0, 0, 1, 1],
                             "score": 1}], r"1 image ids of the results are not in the ground"),
        "not_coco.json": ({"detections": []}, "detections must be a COCO results list or"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(content))
        with pytest.raises(DetsegError, match=f"{name}: {message}"):
            evaluate_coco_files(gt_path, path)
    no_images = tmp_path / "gt_bad.json"
    no_images.write_text(json.dumps({"annotations": [], "categories": []}))
    with pytest.raises(DetsegError, match=r"gt_bad\.json: not a COCO dataset: no 'images'"):
        evaluate_coco_files(no_images, dt_path)


def test_evaluate_results_file_voc_table_json_and_plots(small_files, tmp_path):
    _, _, gt_path, dt_path = small_files
    lines = []
    result = evaluate_results_file(
        gt_path, dt_path, protocol="voc07", iou_thr=0.6, json_out=tmp_path / "m.json",
        plots_dir=tmp_path / "plots", print_fn=lines.append,
    )
    assert json.loads((tmp_path / "m.json").read_text()) == result
    assert set(result) == {"protocol", "iou_type", "iou_thr", "mAP", "per_class", "notes"}
    assert result["iou_thr"] == 0.6 and set(result["per_class"]) == set(CLASSES)
    assert lines[0].startswith("VOC2007 11-point AP @ IoU > 0.60 (bbox)")
    assert (tmp_path / "plots" / "pr_all.png").is_file()
    assert (tmp_path / "plots" / "confusion_matrix.png").is_file()
