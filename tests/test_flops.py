"""Model arithmetic (`detseg.flops`) against hand counts and the papers' published figures."""

from __future__ import annotations

import keras
import pytest

from detseg.flops import count_macs, gflops
from detseg.heads.classifier import build_classifier


@pytest.mark.jax
def test_each_layer_kind_is_counted_by_hand():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8*8 pixels * 4 out * 3*3 kernel * 3 in = 6912
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", groups=2)(x)  # 4*4 * 4 * 9 * (4/2) = 1152
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)  # 4*4 * 8 * 9 = 1152
    x = keras.layers.SeparableConv2D(6, 3, padding="same")(x)  # 4*4 * 8 * 9 + 4*4 * 8 * 6 = 1152 + 768
    x = keras.layers.Conv2DTranspose(2, 2, strides=2)(x)  # 4*4 input pixels * 2*2 * 6 in * 2 out = 768
    x = keras.layers.Dense(5)(x)  # 8*8 pixels * 2 in * 5 out = 640
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))  # 320 * 3 = 960
    assert count_macs(model) == 6912 + 1152 + 1152 + 1152 + 768 + 768 + 640 + 960
    assert gflops(model) == pytest.approx(2 * 13504 / 1e9)


def test_a_layer_called_twice_counts_twice():
    conv = keras.layers.Conv2D(3, 1)
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, conv(conv(inputs)))
    assert count_macs(model) == 2 * 4 * 4 * 3 * 3


def test_resnet34_matches_the_paper():
    """He et al. 2015, Table 1: ResNet-34 is 3.6 x 10^9 multiply-adds at 224 x 224."""
    model = build_classifier("resnet34", (224, 224, 3), 1000)
    assert count_macs(model) / 1e9 == pytest.approx(3.6, abs=0.1)


def test_mobilenet_v2_matches_the_paper():
    """Sandler et al. 2018, Table 3: MobileNetV2 (1.0, 224) is 300 M multiply-adds."""
    model = keras.applications.MobileNetV2(weights=None)
    assert count_macs(model) / 1e6 == pytest.approx(300, abs=3)


def test_an_open_input_size_needs_a_shape():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    with pytest.raises(ValueError, match="fixed input shape"):
        count_macs(model)
    assert count_macs(model, (5, 5, 3)) == 5 * 5 * 2 * 3
