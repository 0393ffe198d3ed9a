"""Fully convolutional classifiers and the sliding-window detector built on them.

The equivalence tests compare the FCN with the classifier itself (on its own input size) and
with the classifier run on each window cropped by hand; nets with "valid" padding must agree
to float precision everywhere. The detector tests use a hand-weighted classifier whose
firing windows are known exactly.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from detseg.errors import DetsegError
from detseg.heads import build_classifier
from detseg.heads.fcn import (
    SlidingWindowDetector,
    naive_sliding_windows,
    to_fully_convolutional,
    total_stride,
    window_size,
)
from detseg.metrics import DetectionEvaluator


def _randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Random weights everywhere (batch-norm variances positive), so no layer is an identity."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "variance" in variable.name:
            variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        else:
            variable.assign(rng.normal(0.0, 0.3, shape).astype(np.float32))
    return model


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(np.asarray(x, np.float32), training=False))


# === Classifiers under test ===
# Each takes pixels 0..255 and scales them first, as every detseg model does.
def _pixels(inputs):
    return keras.layers.Rescaling(1 / 255, name="pixels")(inputs)


def flatten_dense(depth: int, hidden: tuple[int, ...] = (16,)) -> keras.Model:
    """`depth` x (3x3 valid conv, BN, 2x2 pool), Flatten, hidden Dense + Dropout, softmax."""
    size = {1: 16, 2: 24, 3: 40}[depth]  # the last map: 7x7, 4x4, 3x3
    inputs = keras.Input((size, size, 3))
    x = _pixels(inputs)
    for i in range(depth):
        x = keras.layers.Conv2D(4 * (i + 1), 3, activation="relu")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    for units in hidden:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    return _randomize(keras.Model(inputs, outputs, name=f"flatten_dense_{depth}"))


def gap_sequential() -> keras.Model:
    """A Sequential net with a global-average-pooling top (last map 5x5, stride 2)."""
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Rescaling(1 / 255, name="pixels"),
            keras.layers.Conv2D(6, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(8, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(4, activation="softmax"),
        ],
        name="gap_sequential",
    )
    return _randomize(model, seed=1)


def gmp_functional() -> keras.Model:
    """Global max pooling, a separate Softmax layer, and a stride-2 conv."""
    inputs = keras.Input((15, 15, 2))
    x = keras.layers.Conv2D(5, 3, strides=2, activation="tanh")(_pixels(inputs))
    x = keras.layers.GlobalMaxPooling2D()(x)
    x = keras.layers.Dense(3)(x)
    outputs = keras.layers.Softmax()(x)
    return _randomize(keras.Model(inputs, outputs, name="gmp_functional"), seed=2)


def lenet5_paper() -> keras.Model:
    """build_classifier's LeNet-5: nested backbone, C5 conv, Flatten, F6, RBF output, Softmax."""
    keras.utils.set_random_seed(0)
    return build_classifier("lenet5", (32, 32, 3), 5, top="paper", dropout=0.2)


def darknet_tiny_gap() -> keras.Model:
    """build_classifier's darknet_tiny (same padding, stride 32) with the GAP top."""
    keras.utils.set_random_seed(0)
    return build_classifier("darknet_tiny", (64, 64, 3), 3, width=0.125)


VALID_PADDING = [
    pytest.param(lambda: flatten_dense(1), id="flatten-dense-depth1"),
    pytest.param(lambda: flatten_dense(2), id="flatten-dense-depth2", marks=pytest.mark.jax),
    pytest.param(lambda: flatten_dense(3, hidden=(16, 8)), id="flatten-2dense-depth3"),
    pytest.param(gap_sequential, id="gap-sequential"),
    pytest.param(gmp_functional, id="gmp-softmax-layer"),
    pytest.param(lenet5_paper, id="lenet5-paper"),
]


# === Equivalence ===
@pytest.mark.parametrize(
    "build", [*VALID_PADDING, pytest.param(darknet_tiny_gap, id="darknet_tiny-gap")]
)
def test_fcn_on_the_window_size_equals_the_classifier(build):
    classifier = build()
    fcn = to_fully_convolutional(classifier)
    height, width = window_size(classifier)
    channels = classifier.input_shape[-1]
    x = np.random.default_rng(0).integers(0, 256, (2, height, width, channels), dtype=np.uint8)

    grid = _predict(fcn, x)

    assert grid.shape == (2, 1, 1, classifier.output_shape[-1])
    np.testing.assert_allclose(grid[:, 0, 0], _predict(classifier, x), atol=1e-5)


@pytest.mark.parametrize("build", VALID_PADDING)
def test_each_cell_equals_the_classifier_on_its_window(build):
    classifier = build()
    fcn = to_fully_convolutional(classifier)
    (wh, ww), (sy, sx) = window_size(classifier), total_stride(fcn)
    channels = classifier.input_shape[-1]
    image = np.random.default_rng(1).integers(0, 256, (wh + 5 * sy, ww + 3 * sx, channels), dtype=np.uint8)

    grid = _predict(fcn, image[None])[0]

    assert grid.shape[:2] == (6, 4)  # (H - wh) / sy + 1 windows down, (W - ww) / sx + 1 across
    last_row, last_col = grid.shape[0] - 1, grid.shape[1] - 1
    for i, j in [(0, 0), (0, last_col), (last_row, 0), (last_row, last_col), (2, 1)]:
        window = image[i * sy : i * sy + wh, j * sx : j * sx + ww]
        np.testing.assert_allclose(grid[i, j], _predict(classifier, window[None])[0], atol=1e-5)
    np.testing.assert_allclose(grid, naive_sliding_windows(classifier, image, (sy, sx)), atol=1e-5)


def test_total_stride_window_size_and_grid_shape():
    assert total_stride(to_fully_convolutional(flatten_dense(2))) == (4, 4)  # two 2x2 pools
    assert total_stride(to_fully_convolutional(gmp_functional())) == (2, 2)  # one stride-2 conv
    lenet = to_fully_convolutional(lenet5_paper())
    assert window_size(lenet) == (32, 32) and total_stride(lenet) == (4, 4)  # S2, S4

    darknet = to_fully_convolutional(darknet_tiny_gap())
    assert total_stride(darknet) == (32, 32)
    # Same padding: the map is ceil(size / 32), pooled 2x2 at stride 1 -> ceil(size / 32) - 1.
    assert darknet.compute_output_shape((1, 96, 130, 3)) == (1, 2, 4, 3)


def test_fcn_keeps_the_layer_names_and_copies_the_weights():
    classifier = lenet5_paper()
    fcn = to_fully_convolutional(classifier)
    assert [layer.name for layer in fcn.layers] == [
        "image",
        "backbone",
        "c5",
        "f6",
        "rbf",
        "predictions",
    ]  # flatten and dropout are gone; f6 is now a 1x1 conv
    assert fcn.get_layer("f6").kernel.shape == (1, 1, 120, 84)
    assert fcn.get_layer("c5").kernel.shape == (5, 5, 16, 120)

    before = _predict(fcn, np.ones((1, 36, 36, 3)))
    layer = classifier.get_layer("f6")
    layer.kernel.assign(np.zeros(layer.kernel.shape, np.float32))
    np.testing.assert_array_equal(_predict(fcn, np.ones((1, 36, 36, 3))), before)


# === Refusals ===
def _dense_on_map():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Dense(5, name="dense_on_map")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def _recurrent():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Reshape((36, 4), name="rows_to_sequence")(x)
    x = keras.layers.LSTM(4, name="lstm")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def _activation_after_flatten():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inputs))
    x = keras.layers.Activation("relu", name="relu_on_flat")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def _lora_dense():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="lora_fc")(x))
    model.get_layer("lora_fc").enable_lora(1)
    return model


def _two_outputs():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(inputs)
    a, b = keras.layers.Dense(2, name="a")(x), keras.layers.Dense(3, name="b")(x)
    return keras.Model(inputs, {"a": a, "b": b})


def _variable_size():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(2)(x))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_dense_on_map, "Dense layer 'dense_on_map'"),
        (_recurrent, "'rows_to_sequence' (Reshape)"),
        (_activation_after_flatten, "'relu_on_flat' (Activation)"),
        (_lora_dense, "weights of Dense layer 'lora_fc'"),
        (_two_outputs, "several outputs (a, b)"),
        (_variable_size, "no fixed input size"),
    ],
    ids=[
        "dense-on-map",
        "reshape-lstm",
        "activation-after-flatten",
        "lora",
        "two-outputs",
        "variable-size",
    ],
)
def test_refuses_what_it_cannot_convert_naming_the_layer(build, message):
    with pytest.raises(DetsegError, match=re.escape(message)):
        to_fully_convolutional(build())


# === Sliding-window detection ===
WINDOW = 8
BACKGROUND, RED, GREEN = 0, 1, 2


def red_green_classifier() -> keras.Model:
    """8x8 crops -> (background, red, green), weighted by hand; total stride 2.

    After a 2x2 average pool and Flatten, the red logit is 40 * (mean red - mean green) - 36
    over the window (channels scaled to 0..1 by the model) and the green one the mirror image; background is 0.
    A window exactly on an 8x8 red square: logit 40 - 36 = 4, p = e^4 / (1 + e^4) = 0.982.
    Shifted by 2 px (a quarter out): 40 * 0.75 - 36 = -6, p = e^-6 / (1 + e^-6) = 0.0025.
    Shifted by 2 px both ways: 40 * 0.5625 - 36 = -13.5, p = 1.4e-6.
    """
    inputs = keras.Input((WINDOW, WINDOW, 3))
    x = keras.layers.AveragePooling2D(2)(_pixels(inputs))
    x = keras.layers.Flatten()(x)
    dense = keras.layers.Dense(3, activation="softmax")
    outputs = dense(x)
    model = keras.Model(inputs, outputs, name="red_green")
    cells = 16  # 4 x 4 pooled cells; Flatten reads (row, col, channel)
    kernel = np.zeros((cells, 3, 3), np.float32)
    kernel[:, 0, RED], kernel[:, 1, RED] = 40 / cells, -40 / cells
    kernel[:, 1, GREEN], kernel[:, 0, GREEN] = 40 / cells, -40 / cells
    dense.set_weights([kernel.reshape(cells * 3, 3), np.array([0, -36, -36], np.float32)])
    return model


P_ON = np.exp(4) / (1 + np.exp(4))


def two_squares() -> tuple[np.ndarray, np.ndarray]:
    """A black 40x64 image with a red and a green 8x8 square at even offsets; their boxes."""
    image = np.zeros((40, 64, 3), np.uint8)
    image[8:16, 20:28, 0] = 255
    image[24:32, 44:52, 1] = 255
    return image, np.array([[20, 8, 28, 16], [44, 24, 52, 32]], np.float32)


def _by_label(found: dict) -> dict:
    order = np.argsort(found["labels"], kind="stable")
    return {key: value[order] for key, value in found.items()}


@pytest.mark.jax
def test_detector_finds_exactly_the_firing_windows():
    image, boxes = two_squares()
    detector = SlidingWindowDetector(red_green_classifier(), background_class=BACKGROUND)
    assert detector.stride == (2, 2) and detector.window == (WINDOW, WINDOW)

    (found,) = detector([image])

    found = _by_label(found)
    np.testing.assert_array_equal(found["boxes"], boxes)
    np.testing.assert_array_equal(found["labels"], [0, 1])  # red 1 -> 0, green 2 -> 1
    np.testing.assert_allclose(found["scores"], [P_ON, P_ON], rtol=1e-5)
    assert found["boxes"].dtype == np.float32 and found["labels"].dtype == np.int32


def test_nms_keeps_one_box_per_object():
    image, boxes = two_squares()
    classifier = red_green_classifier()
    # At score_thr 0.001 the four 2-px shifts of each square fire too (p = 0.0025); each
    # overlaps its square's window with IoU 48 / (64 + 64 - 48) = 0.6.
    loose = SlidingWindowDetector(classifier, score_thr=0.001, iou_thr=0.7, background_class=0)
    assert len(loose([image])[0]["boxes"]) == 2 * 5

    (found,) = SlidingWindowDetector(classifier, score_thr=0.001, iou_thr=0.5, background_class=0)(
        [image]
    )
    np.testing.assert_array_equal(_by_label(found)["boxes"], boxes)


def test_scales_map_boxes_back_to_original_pixels():
    image = np.zeros((80, 128, 3), np.uint8)
    image[16:32, 40:56, 0] = 255  # a 16 px red square: 8 px, on the grid, at scale 0.5
    detector = SlidingWindowDetector(red_green_classifier(), scales=(0.5,), background_class=0)

    (found,) = detector([image])

    np.testing.assert_array_equal(found["boxes"], [[40, 16, 56, 32]])
    np.testing.assert_array_equal(found["labels"], [0])


def test_no_objects_and_too_small_images_give_empty_detections():
    detector = SlidingWindowDetector(red_green_classifier(), background_class=0)
    empty, tiny = detector([np.zeros((24, 24, 3), np.uint8), np.zeros((6, 30, 3), np.uint8)])
    for found in (empty, tiny):
        assert found["boxes"].shape == (0, 4) and found["boxes"].dtype == np.float32
        assert found["scores"].shape == (0,) and found["labels"].dtype == np.int32


@pytest.mark.parametrize(
    ("build", "grid"),
    [
        (lambda: flatten_dense(2), (5, 8)),  # (41 - 24) // 4 + 1, (53 - 24) // 4 + 1
        # Same-padded subsampling: the FCN gives 4 x 7 cells, the last row past the edge.
        (lenet5_paper, (3, 6)),  # (41 - 32) // 4 + 1, (53 - 32) // 4 + 1
    ],
    ids=["flatten-dense", "lenet5"],
)
def test_detector_scores_match_the_naive_loop(build, grid):
    classifier = build()
    detector = SlidingWindowDetector(classifier, score_thr=0.2)
    image = np.random.default_rng(2).integers(0, 256, (41, 53, 3), dtype=np.uint8)

    scores = detector.score_grid(image)

    naive = naive_sliding_windows(classifier, image, detector.stride)
    assert scores.shape[:2] == naive.shape[:2] == grid
    np.testing.assert_allclose(scores, naive, atol=1e-5)


def test_detections_score_perfect_ap_with_the_evaluator():
    image, boxes = two_squares()
    detector = SlidingWindowDetector(red_green_classifier(), background_class=0)
    evaluator = DetectionEvaluator(["red", "green"])
    evaluator.update(detector([image]), [{"boxes": boxes, "labels": np.array([0, 1])}])
    assert evaluator.result()["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"background_class": 3}, "background_class must be in 0..2, got 3"),
        ({"scales": ()}, "scales must be"),
        ({"score_thr": 1.5}, "score_thr=1.5"),
    ],
)
def test_detector_validates_its_arguments(kwargs, message):
    with pytest.raises(DetsegError, match=message):
        SlidingWindowDetector(red_green_classifier(), **kwargs)


def test_detector_refuses_images_it_cannot_read():
    detector = SlidingWindowDetector(red_green_classifier())
    with pytest.raises(DetsegError, match=r"uint8 images \[H, W, 3\]"):
        detector([np.zeros((16, 16, 3), np.float32)])
