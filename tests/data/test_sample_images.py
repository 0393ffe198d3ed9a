"""Sample/Dataset/Summary bookkeeping, image reading, and the letterbox box mapping."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detseg.data import (
    Dataset,
    Sample,
    Summary,
    image_size,
    letterbox,
    letterbox_boxes,
    letterbox_params,
    read_image,
    unletterbox_boxes,
)
from detseg.data.sample import sanitize_boxes
from detseg.errors import DetsegError


def test_sanitize_boxes_clips_drops_and_counts():
    boxes = np.array(
        [
            [10, 10, 20, 20],  # fine
            [5, 5, 5, 9],  # zero width -> dropped
            [-4, 2, 8, 50],  # reaches outside a 40x30 image -> clipped to [0, 2, 8, 30]
            [50, 50, 60, 60],  # entirely outside -> dropped
            [np.nan, 0, 1, 1],  # not finite -> dropped
            [0, 0, 40.0004, 30],  # over the border by 4e-4 px: clipped silently (float noise)
        ],
        np.float32,
    )
    summary = Summary()
    clipped, keep = sanitize_boxes(boxes, 40, 30, summary, "a.xml")
    assert keep.tolist() == [True, False, True, False, False, True]
    np.testing.assert_allclose(clipped[2], [0, 2, 8, 30])
    np.testing.assert_allclose(clipped[5], [0, 0, 40, 30])
    assert summary.num_skipped == 3 and summary.num_clipped == 1
    assert summary.examples["box entirely outside the image"] == ["a.xml"]


def test_sample_select_keeps_per_box_fields_aligned():
    sample = Sample(
        "x.jpg", 10, 10, [[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]], [0, 1, 2],
        iscrowd=[0, 1, 0], area=[1, 2, 3], masks=[[[0, 0, 1, 0, 1, 1]], None, {"size": [10, 10], "counts": "x"}],
    )  # fmt: skip
    kept = sample.select(np.array([False, True, True]))
    assert kept.labels.tolist() == [1, 2]
    assert kept.iscrowd.tolist() == [True, False]
    assert kept.area.tolist() == [2, 3]
    assert kept.masks[0] is None and kept.masks[1]["counts"] == "x"
    np.testing.assert_array_equal(kept.boxes, [[1, 1, 2, 2], [2, 2, 3, 3]])


def test_sample_rejects_misaligned_fields():
    with pytest.raises(ValueError, match="2 labels for 1 boxes"):
        Sample("x.jpg", 5, 5, [[0, 0, 1, 1]], [0, 1])


def test_summary_text_counts_classes_sizes_and_problems():
    summary = Summary()
    summary.skip("box with zero or negative width/height (x2<=x1 or y2<=y1)", "a.xml", 2)
    samples = [
        Sample(
            "a.jpg", 100, 80, [[0, 0, 10, 10], [0, 0, 40, 40], [0, 0, 20, 20]], [0, 1, 1]
        ),  # sides 10, 40, 20
        Sample("b.jpg", 100, 80),
    ]
    text = Dataset(samples, ["cat", "dog"], summary).summary_text()
    assert "images: 2   boxes: 3   classes: 2" in text
    assert "cat          1" in text and "dog          2" in text
    assert "min 0  mean 1.50  max 3   images without boxes: 1" in text
    # sqrt areas 10, 40, 20 fall in the bins 8-16, 32-64 and 16-32
    assert "8-16: 1 | 16-32: 1 | 32-64: 1" in text
    assert "image sizes: 100x80 (2)" in text
    assert (
        "skipped 2 x box with zero or negative width/height (x2<=x1 or y2<=y1) (e.g. a.xml)" in text
    )


def test_read_image_is_rgb(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image(tmp_path / "red.png")
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert image_size(tmp_path / "red.png") == (6, 4)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(DetsegError, match="image file not found") as missing:
        read_image(tmp_path / "nope.jpg")
    assert str(tmp_path / "nope.jpg") in str(missing.value)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not really a JPEG")
    with pytest.raises(DetsegError, match="does not decode") as bad:
        read_image(broken)
    with pytest.raises(DetsegError, match="not a readable image"):
        image_size(broken)
    assert str(broken) in str(bad.value) and "\n" not in str(bad.value)


def test_letterbox_params_by_hand():
    # 640x480 into 416: ratio 416/640 = 0.65, resized 416x312, padded (416-312)/2 = 52 rows on top
    p = letterbox_params(640, 480, 416)
    assert (p.scale_x, p.scale_y, p.pad_x, p.pad_y, p.resized) == (0.65, 0.65, 0, 52, (416, 312))
    # box [100, 40, 200, 80] -> [65, 40*0.65+52, 130, 80*0.65+52] = [65, 78, 130, 104]
    np.testing.assert_allclose(
        letterbox_boxes(np.array([[100, 40, 200, 80]]), p), [[65, 78, 130, 104]], atol=1e-4
    )


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 2000),
    height=st.integers(1, 2000),
    size=st.sampled_from([32, 320, 416, 640]),
    seed=st.integers(0, 1000),
)
def test_letterbox_boxes_round_trip(width, height, size, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, [width, height], (10, 2))
    wh = rng.uniform(0, [width, height], (10, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1).astype(np.float32)
    p = letterbox_params(width, height, size)
    mapped = letterbox_boxes(boxes, p)
    assert mapped.min() >= -1e-3 and mapped.max() <= size + 1e-3
    np.testing.assert_allclose(
        unletterbox_boxes(mapped, p), boxes, atol=1e-3 * max(1, width / size, height / size)
    )


def test_letterbox_pixels_follow_the_box_mapping():
    image = np.zeros((300, 500, 3), np.uint8)
    image[60:180, 100:350] = 255  # the box [100, 60, 350, 180]
    out, p = letterbox(image, 320)
    assert out.shape == (320, 320, 3)
    assert (out[: p.pad_y] == 114).all() and (out[p.pad_y + p.resized[1] :] == 114).all()
    rows, cols = np.nonzero(out[..., 0] > 127)
    found = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    np.testing.assert_allclose(
        found, letterbox_boxes(np.array([[100, 60, 350, 180]]), p)[0], atol=1.0
    )
