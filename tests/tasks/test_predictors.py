"""Task predictors: what detections and top-k classes look like drawn, in JSONL and in one line."""

from __future__ import annotations

import numpy as np
import pytest

from detseg.data.images import PAD_VALUE
from detseg.errors import DetsegError
from detseg.stream import run_stream
from detseg.tasks.predictors import ClassificationPredictor, DetectionPredictor
from tests.stream.test_runner import (
    SIDE,
    find_red,
    find_red_mask,
    square_frame,
    square_position,
    write_clip,
)

NAMES = ["square", "other"]


def fixed(*results):
    """A fake detector that returns `results` whatever the frames."""
    return lambda frames: list(results)


# === Detections ===


def test_detection_record_rounds_boxes_and_scores_and_names_the_classes():
    predictor = DetectionPredictor(
        fixed({"boxes": [[1.23456, 2.5, 3.0, 4.99999]], "scores": [0.123456], "labels": [1]}),
        NAMES,
    )
    (result,) = predictor([square_frame(0)])
    assert result["boxes"].dtype == np.float32 and result["labels"].dtype == np.int32
    # 0.01 px and 1e-4, rounded in float64: no float32 tails such as 1.2300000190734863
    assert predictor.record(result) == {
        "boxes": [[1.23, 2.5, 3.0, 5.0]],
        "scores": [0.1235],
        "labels": [1],
        "classes": ["other"],
    }


def test_label_without_a_class_name_is_a_user_error(tmp_path):
    predictor = DetectionPredictor(
        lambda frames: [{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [7]} for _ in frames],
        NAMES,
    )
    (result,) = predictor([square_frame(0)])
    with pytest.raises(DetsegError, match=r"label 7 has no class name \(2 names\)"):
        predictor.record(result)
    # and through the runner, the JSONL output stops the run with it
    with pytest.raises(DetsegError, match="label 7 has no class name"):
        run_stream(
            write_clip(tmp_path / "clip.mp4", frames=3),
            predictor,
            jsonl=tmp_path / "det.jsonl",
            verbose=False,
        )


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (
            [{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [0]}, {"boxes": [[0, 0, 1, 1]]}],
            "infer result for image 1 is not boxes/scores/labels",
        ),
        (
            [{"boxes": [[0, 0, 1, 1], [1, 1, 2, 2]], "scores": [1.0], "labels": [0]}],
            "infer result for image 0: 2 boxes, 1 scores, 1 labels",
        ),
    ],
    ids=["missing-key", "lengths"],
)
def test_results_breaking_the_detector_contract_are_refused(results, message):
    with pytest.raises(ValueError, match=message):
        DetectionPredictor(fixed(*results), NAMES)([square_frame(0)] * len(results))


def test_class_names_must_be_strings():
    with pytest.raises(DetsegError, match="class_names must be a list of strings"):
        DetectionPredictor(find_red, "square")


def test_detection_description_counts_per_class_most_first():
    predictor = DetectionPredictor(fixed(), NAMES)
    three = {"labels": np.array([1, 0, 1], np.int32)}
    assert predictor.describe(three) == "2 other, 1 square"
    assert predictor.describe({"labels": np.zeros(0, np.int32)}) == "no detections"


def test_detections_are_drawn_with_detseg_viz_and_their_masks():
    def red_with_mask(frames):
        results = [find_red(f) for f in frames]
        for frame, result in zip(frames, results, strict=True):
            result["masks"] = find_red_mask(frame)[None]  # [1, H, W]: the square's own pixels
        return results

    predictor = DetectionPredictor(red_with_mask, NAMES)
    image = square_frame(0)
    (result,) = predictor([image])
    annotated = predictor.draw(image, result)
    assert np.array_equal(image, square_frame(0))  # drawn on a copy
    x, y = square_position(0)
    # class 0's palette colour is (230, 25, 75); the 2-px outline is centred on x2 = x + SIDE
    assert tuple(annotated[y + SIDE // 2, x + SIDE]) == (230, 25, 75)
    # mask tint, alpha 0.45 truncated: 220*.55+230*.45 = 224.5, 30*.55+25*.45 = 27.75, 30*.55+75*.45 = 50.25
    assert tuple(annotated[y + SIDE // 2, x + SIDE // 2]) == (224, 27, 50)


# === Top-k classes ===

CLASSES = ["cat", "dog", "fox"]


class FixedProbabilities:
    """A fake classifier: the same probabilities row by row, and a log of the batches it got."""

    def __init__(self, probs):
        self.probs = np.asarray(probs, np.float32)
        self.batches: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch)
        return self.probs[: len(batch)]


def test_classifier_letterboxes_the_frames_and_keeps_the_top_k():
    model = FixedProbabilities([[0.1, 0.61234, 0.3], [0.5, 0.2, 0.3]])
    predictor = ClassificationPredictor(model, CLASSES, input_size=32, topk=2)
    wide, tall = np.full((20, 40, 3), 255, np.uint8), np.full((40, 20, 3), 255, np.uint8)
    first, second = predictor([wide, tall])

    (batch,) = model.batches
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == np.uint8  # as an export takes it
    # white frames, letterboxed: grey bands above the wide one, beside the tall one
    assert batch[0, 16, 16, 0] == 255 and batch[1, 16, 16, 0] == 255
    assert batch[0, 0, 16, 0] == PAD_VALUE
    assert batch[1, 16, 0, 0] == PAD_VALUE
    # top-2 by hand: dog 0.61234, fox 0.3 / cat 0.5, fox 0.3
    assert first["labels"].tolist() == [1, 2] and second["labels"].tolist() == [0, 2]
    assert predictor.record(first) == {
        "labels": [1, 2],
        "scores": [0.6123, 0.3],
        "classes": ["dog", "fox"],
    }
    assert predictor.describe(first) == "dog 0.612, fox 0.300"
    assert predictor.describe(second) == "cat 0.500, fox 0.300"


def test_classifier_top_k_is_at_most_the_classes_and_ties_keep_label_order():
    predictor = ClassificationPredictor(
        FixedProbabilities([[0.25, 0.5, 0.25]]), CLASSES, input_size=32, topk=5
    )
    (result,) = predictor([square_frame(0)])
    assert result["labels"].tolist() == [1, 0, 2]


def test_classifier_probabilities_must_match_the_class_names():
    predictor = ClassificationPredictor(FixedProbabilities([[0.5, 0.5]]), CLASSES, input_size=32)
    with pytest.raises(ValueError, match=r"shape \(1, 2\) for 1 images and 3 classes"):
        predictor([square_frame(0)])


def test_classifier_draws_the_top_k_in_the_bottom_left_corner_only():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    original = image.copy()
    predictor = ClassificationPredictor(
        FixedProbabilities([[0.1, 0.6, 0.3]]), CLASSES, input_size=32
    )
    (result,) = predictor([image])
    drawn = predictor.draw(image, result)

    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert np.array_equal(image, original)  # drawn on a copy
    ys, xs = np.nonzero((drawn != image).any(axis=2))
    assert ys.size > 0
    # only the bottom-left corner changed, down to the last row (the top-left holds the FPS)
    assert ys.min() > 240 // 2 and ys.max() == 239 and xs.max() < 320 // 2
    # a filled black box with white text: readable whatever the image behind it
    corner = drawn[ys.min() :, : xs.max() + 1]
    assert (corner == 0).all(axis=2).mean() > 0.5 and (corner == 255).all(axis=2).any()
