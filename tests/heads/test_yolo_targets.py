"""YoloTargetEncoder: hand-made boxes land on the right level, cell, anchor; edge cases; a slow loop."""

from __future__ import annotations

import numpy as np
import pytest

from detseg.errors import DetsegError
from detseg.heads.yolo_targets import NO_OBJECT, PAD_LABEL, YoloTargetEncoder, check_anchors
from tests.heads.yolo_helpers import ANCHORS_64

# 64 px input, strides 8 / 16 / 32 -> grids 8 / 4 / 2, anchors 4..12 on P3, 16..32 on P4, 40..64 on P5.
STRIDES = (8, 16, 32)


def encoder(**kwargs) -> YoloTargetEncoder:
    return YoloTargetEncoder(ANCHORS_64, STRIDES, 64, num_classes=3, **kwargs)


def assigned(targets: dict) -> list[tuple]:
    """(level, image, gy, gx, anchor, class, box) of every assigned anchor."""
    found = []
    for level in ("P3", "P4", "P5"):
        for b, y, x, a in zip(*np.nonzero(targets[f"{level}_obj"]), strict=True):
            cls = int(targets[f"{level}_cls"][b, y, x, a])
            found.append(
                (
                    level,
                    int(b),
                    int(y),
                    int(x),
                    int(a),
                    cls,
                    targets[f"{level}_box"][b, y, x, a].tolist(),
                )
            )
    return found


def test_box_on_a_cell_border_goes_to_best_shape_anchor():
    # Box 12 x 14 centred at (16, 27). Shape IoU with 8x8: 64/168 = 0.38; with 12x12:
    # 144/168 = 0.857; with 16x16: 168/256 = 0.656 -> anchor [12, 12] = P3, anchor 2.
    # Cell: x = 16 / 8 = 2.0 exactly (on the border: the right-hand cell), y = floor(27 / 8) = 3.
    targets = encoder()([np.array([[10, 20, 22, 34]], np.float32)], [np.array([1])])
    assert assigned(targets) == [("P3", 0, 3, 2, 2, 1, [10.0, 20.0, 22.0, 34.0])]


def test_huge_and_tiny_boxes():
    # The whole 64 x 64 image: anchor [64, 64] (IoU 1) = P5 anchor 2; centre 32 / 32 = cell (1, 1).
    # A 1 x 1 box at (1..2): best IoU is with the smallest anchor 4x4 (1/16) = P3 anchor 0, cell (0, 0).
    boxes = np.array([[0, 0, 64, 64], [1, 1, 2, 2]], np.float32)
    targets = encoder()([boxes], [np.array([0, 2])])
    assert sorted(assigned(targets)) == [
        ("P3", 0, 0, 0, 0, 2, [1.0, 1.0, 2.0, 2.0]),
        ("P5", 0, 1, 1, 2, 0, [0.0, 0.0, 64.0, 64.0]),
    ]


def test_centre_on_the_far_edge_is_clipped_into_the_last_cell():
    # 4 x 4 box centred at (64, 10): column 64 / 8 = 8 is past the 8-cell grid -> column 7.
    targets = encoder()([np.array([[62, 8, 66, 12]], np.float32)], [np.array([0])])
    assert [t[:5] for t in assigned(targets)] == [("P3", 0, 1, 7, 0)]


def test_empty_images_and_padding_rows():
    # Image 0 has no boxes; image 1 only a padding row (label -1), which is not a box.
    targets = encoder(max_boxes=4)(
        [np.zeros((0, 4), np.float32), np.array([[0, 0, 0, 0]], np.float32)],
        [np.zeros(0, np.int32), np.array([PAD_LABEL])],
    )
    assert assigned(targets) == []
    assert targets["P3_obj"].shape == (2, 8, 8, 3) and targets["P5_box"].shape == (2, 2, 2, 3, 4)
    assert np.all(targets["P4_cls"] == NO_OBJECT)
    assert np.all(targets["gt_labels"] == PAD_LABEL) and targets["gt_boxes"].shape == (2, 4, 4)


def test_assign_thresh_adds_other_anchors_above_it():
    # 10 x 10 box: IoU with 8x8 = 64/100 = 0.64, 12x12 = 100/144 = 0.694, 16x16 = 100/256 = 0.39.
    box = [np.array([[0, 0, 10, 10]], np.float32)]
    assert [t[4] for t in assigned(encoder()(box, [np.array([0])]))] == [2]
    assert sorted(t[4] for t in assigned(encoder(assign_thresh=0.6)(box, [np.array([0])]))) == [
        1,
        2,
    ]


def test_neighbour_cells_add_the_cells_across_the_nearer_borders():
    # Three 4 x 4 boxes (best anchor 4x4 = P3 anchor 0), one per image, stride 8:
    # - centre (13, 22): cell (x 1, y 2), in-cell position (0.625, 0.75) -> right (2, 2), down (1, 3);
    # - centre (2, 2): cell (0, 0) at (0.25, 0.25) -> left and up lie outside the grid;
    # - centre (4, 11): cell (0, 1) at (0.5, 0.375) -> mid-cell in x gains nothing, up (0, 0).
    boxes = [np.array([[11, 20, 15, 24]], np.float32), np.array([[0, 0, 4, 4]], np.float32)]
    boxes.append(np.array([[2, 9, 6, 13]], np.float32))
    labels = [np.array([0]), np.array([1]), np.array([2])]
    got = sorted(t[:6] for t in assigned(encoder(neighbour_cells=True)(boxes, labels)))
    assert got == [
        ("P3", 0, 2, 1, 0, 0),
        ("P3", 0, 2, 2, 0, 0),
        ("P3", 0, 3, 1, 0, 0),
        ("P3", 1, 0, 0, 0, 1),
        ("P3", 2, 0, 0, 0, 2),
        ("P3", 2, 1, 0, 0, 2),
    ]
    # Without the option each box trains its centre cell only.
    assert len(assigned(encoder()(boxes, labels))) == 3


def test_centre_inside_keeps_the_cells_whose_centre_lies_in_the_box():
    # Image 0: a 24x16 box [6, 6, 30, 22] -> best anchor 16x16 (P4, stride 16, anchor 0), centre
    # (18, 14) in cell (x 1, y 0); neighbours left (0, 0) and down (1, 1). Cell centres (24, 8)
    # and (8, 8) lie inside the box, (24, 24) below it: dropped.
    # Image 1: the 4x4 box [11, 20, 15, 24] -> P3 cell (1, 2), whose centre (12, 20) lies on the
    # box's top edge, not inside: kept all the same as the box's best anchor at its own cell;
    # its neighbours' centres (20, 20) and (12, 28) lie outside: dropped.
    boxes = [np.array([[6, 6, 30, 22]], np.float32), np.array([[11, 20, 15, 24]], np.float32)]
    labels = [np.array([0]), np.array([1])]
    inside = encoder(neighbour_cells=True, centre_inside=True)(boxes, labels)
    assert sorted(t[:6] for t in assigned(inside)) == [
        ("P3", 1, 2, 1, 0, 1),
        ("P4", 0, 0, 0, 0, 0),
        ("P4", 0, 0, 1, 0, 0),
    ]
    assert len(assigned(encoder(neighbour_cells=True)(boxes, labels))) == 6


def test_collision_keeps_the_smaller_box_and_is_counted():
    # 10x10 and 11x11 boxes both centred in P3 cell (0, 0) with best anchor 12x12.
    enc = encoder()
    boxes = np.array([[0, 0, 11, 11], [1, 1, 11, 11]], np.float32)
    targets = enc([boxes], [np.array([0, 1])])
    assert assigned(targets) == [("P3", 0, 0, 0, 2, 1, [1.0, 1.0, 11.0, 11.0])]
    assert enc.stats["collisions"] == 1
    # Both still count for the ignore rule.
    assert targets["gt_labels"][0, :3].tolist() == [0, 1, PAD_LABEL]


def test_degenerate_boxes_are_skipped_counted_and_reported():
    enc = encoder()
    # Zero width, a valid box, a NaN corner.
    boxes = np.array([[5, 5, 5, 9], [0, 0, 10, 10], [1, 1, np.nan, 4]], np.float32)
    with pytest.warns(UserWarning, match="skipped 2 boxes"):
        targets = enc([boxes], [np.array([0, 1, 2])])
    assert len(assigned(targets)) == 1
    assert enc.stats == {"boxes": 1, "degenerate": 2, "truncated": 0, "collisions": 0}


def test_gt_rows_beyond_max_boxes_are_counted():
    enc = encoder(max_boxes=2)
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    with pytest.warns(UserWarning, match="1 boxes beyond max_boxes=2"):
        targets = enc([boxes], [np.array([0, 1, 2])])
    assert len(assigned(targets)) == 3  # all three still get targets
    assert targets["gt_labels"].tolist() == [[0, 1]] and enc.stats["truncated"] == 1


def test_bad_labels_and_anchors_raise():
    with pytest.raises(DetsegError, match=r"labels must lie in 0\.\.2, got \[3\]"):
        encoder()([np.array([[0, 0, 4, 4]], np.float32)], [np.array([3])])
    with pytest.raises(DetsegError, match="anchors must be 9"):
        YoloTargetEncoder(ANCHORS_64[:6], STRIDES, 64, 3)
    with pytest.raises(DetsegError, match="multiple of every stride"):
        YoloTargetEncoder(ANCHORS_64, STRIDES, 60, 3)


def test_anchors_are_sorted_by_area():
    assert check_anchors([[4, 4], [1, 2], [2, 2]], 1, 3).tolist() == [[1, 2], [2, 2], [4, 4]]


def slow_encode(
    boxes, labels, anchors, strides, size, per_level, max_boxes, neighbours=False, inside=False
):
    """One box at a time, biggest first, so a smaller box overwrites a bigger one on a collision;
    with `neighbours`, also the cells across the nearer border in x and in y (none mid-cell);
    with `inside`, only those of them whose centre lies strictly inside the box."""
    anchors = np.asarray(anchors, np.float64)
    out = {}
    for stride in strides:
        level, grid = f"P{stride.bit_length() - 1}", size // stride
        out[f"{level}_box"] = np.zeros((len(boxes), grid, grid, per_level, 4), np.float32)
        out[f"{level}_obj"] = np.zeros((len(boxes), grid, grid, per_level), np.float32)
        out[f"{level}_cls"] = np.full((len(boxes), grid, grid, per_level), -1, np.int32)
    out["gt_boxes"] = np.zeros((len(boxes), max_boxes, 4), np.float32)
    out["gt_labels"] = np.full((len(boxes), max_boxes), -1, np.int32)
    for b, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
        out["gt_boxes"][b, : len(image_boxes)] = image_boxes
        out["gt_labels"][b, : len(image_boxes)] = image_labels
        areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in image_boxes]
        for i in np.argsort(areas)[::-1]:
            x0, y0, x1, y1 = (float(v) for v in image_boxes[i])
            w, h = x1 - x0, y1 - y0
            ious = [
                min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah))
                for aw, ah in anchors
            ]
            k = int(np.argmax(ious))
            stride = strides[k // per_level]
            level, grid = f"P{stride.bit_length() - 1}", size // stride
            cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
            gx, gy = min(int(cx), grid - 1), min(int(cy), grid - 1)
            cells = [(gx, gy)]
            if neighbours:
                if cx - gx != 0.5:
                    cells.append((gx - 1 if cx - gx < 0.5 else gx + 1, gy))
                if cy - gy != 0.5:
                    cells.append((gx, gy - 1 if cy - gy < 0.5 else gy + 1))
            if inside:
                cells = cells[:1] + [
                    (x, y)
                    for x, y in cells[1:]
                    if x0 < (x + 0.5) * stride < x1 and y0 < (y + 0.5) * stride < y1
                ]
            for x, y in cells:
                if 0 <= x < grid and 0 <= y < grid:
                    out[f"{level}_box"][b, y, x, k % per_level] = image_boxes[i]
                    out[f"{level}_obj"][b, y, x, k % per_level] = 1
                    out[f"{level}_cls"][b, y, x, k % per_level] = image_labels[i]
    return out


@pytest.mark.parametrize(("neighbours", "inside"), [(False, False), (True, False), (True, True)])
def test_vectorised_encoder_matches_a_slow_loop(neighbours, inside):
    rng = np.random.default_rng(0)
    boxes, labels = [], []
    for n in (0, 1, 7, 20):
        xy = rng.uniform(0, 60, (n, 2))
        wh = rng.uniform(1, 64, (n, 2))
        boxes.append(np.concatenate([xy, np.minimum(xy + wh, 64)], 1).astype(np.float32))
        labels.append(rng.integers(0, 3, n))
    got = encoder(max_boxes=20, neighbour_cells=neighbours, centre_inside=inside)(boxes, labels)
    anchors = check_anchors(ANCHORS_64, 3, 3)
    want = slow_encode(boxes, labels, anchors, STRIDES, 64, 3, 20, neighbours, inside)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        assert got[key].dtype == want[key].dtype, key
