"""The input contract: every model detseg builds takes pixels 0..255, uint8 or float, and
scales them in its one "pixels" layer (`detseg.backbones.pyramid.image_input`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from detseg.backbones.pyramid import PIXELS_LAYER
from detseg.config import config_from_dict
from detseg.heads.classifier import build_classifier
from detseg.heads.localization import build_localizer
from detseg.heads.unet import build_unet
from detseg.heads.yolo import build_yolo
from tests.heads.yolo_helpers import draw_shapes
from tests.training import compile_built

SIZE = 64
ANCHORS = [[8, 8], [16, 16], [24, 24], [32, 32], [48, 48], [64, 64]]


def tiny_detector() -> keras.Model:
    keras.utils.set_random_seed(0)
    cfg = config_from_dict(
        {
            "model": {
                "backbone": "darknet_tiny",
                "backbone_width": 0.125,
                "input_size": SIZE,
                "yolo": {"levels": ["P4", "P5"], "width": 0.125, "anchors": ANCHORS},
            }
        }
    )
    return build_yolo(cfg.model, 3, ANCHORS)


BUILDERS = {
    "detector": tiny_detector,
    "classifier": lambda: build_classifier("darknet_tiny", (SIZE, SIZE, 3), 3, width=0.125),
    # model.grayscale: RGB pixels -> one grey channel, then the backbone scales it.
    "grey-classifier": lambda: build_classifier(
        "lenet5", (32, 32, 3), 3, top="paper", grayscale=True
    ),
    "localizer": lambda: build_localizer("darknet_tiny", (SIZE, SIZE, 3), 2, width=0.125),
    "unet": lambda: build_unet(3, "unet", (32, 32, 3), width=0.125, depth=2),
    # no stride-1 encoder level: the decoder's last skip is the image, scaled on its own
    "unet-image-skip": lambda: build_unet(3, "darknet_tiny", (32, 32, 3), width=0.125),
}


def _numpy(outputs) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(outputs)]


@pytest.mark.parametrize("name", BUILDERS)
def test_uint8_pixels_and_the_same_pixels_as_float_give_identical_outputs(name):
    model = BUILDERS[name]()
    side = model.input_shape[1]
    pixels = np.random.default_rng(0).integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    as_uint8 = _numpy(model(pixels, training=False))
    as_float = _numpy(model(pixels.astype(np.float32), training=False))
    for a, b in zip(as_uint8, as_float, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_one_pixels_layer_maps_0_255_to_0_1():
    """The scaling is the backbone's first layer: its output is the old 0..1 input exactly."""
    backbone = tiny_detector().backbone
    scaled = keras.Model(backbone.input, backbone.get_layer(PIXELS_LAYER).output)
    pixels = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    pixels[0, 0, 0] = (0, 51, 255)
    out = keras.ops.convert_to_numpy(scaled(pixels))
    np.testing.assert_allclose(out[0, 0, 0], [0, 0.2, 1], atol=1e-7)  # 51 / 255 = 0.2
    assert not out[0, 1:].any()
    assert [layer.name for layer in backbone.layers[:2]] == ["image", PIXELS_LAYER]


# Under JAX, tests/heads/test_yolo_backends.py trains a step on uint8 pixels too.
def test_one_training_step_from_uint8_batches():
    """fit() on uint8 batches (cast to float inside the compiled step) logs the loss that the
    model computes eagerly on the same pixels as float32, and updates the weights."""
    images, boxes, labels = draw_shapes(4, SIZE, seed=3)
    model = tiny_detector()
    targets = model.make_target_encoder()(boxes, labels)
    pixels = images.astype(np.float32)
    reference = model.compute_loss(pixels, targets, model(pixels, training=True), training=True)
    before = _numpy(model.trainable_weights)
    compile_built(model, keras.optimizers.SGD(0.01))

    logs = model.fit(images, targets, batch_size=4, epochs=1, verbose=0, shuffle=False).history

    np.testing.assert_allclose(logs["loss"][0], keras.ops.convert_to_numpy(reference), rtol=1e-4)
    after = _numpy(model.trainable_weights)
    assert all(np.isfinite(w).all() for w in after)
    assert sum(not np.array_equal(b, a) for b, a in zip(before, after, strict=True)) > len(after) // 2
