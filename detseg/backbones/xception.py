"""Xception (Chollet 2017): entry, middle and exit flows of depthwise-separable convs."""

import keras

from detseg.backbones.pyramid import channel_scaler, image_input, make_backbone
from detseg.layers import SeparableConvBlock, batch_norm, conv_bn_act

MIDDLE_FLOW_REPEATS = 8


def _downsampling_block(x, filters_1: int, filters_2: int, *, name: str):
    """relu-sepconv-BN twice, 3x3/2 max pool, plus a strided 1x1 conv + BN shortcut."""
    shortcut = keras.layers.Conv2D(
        filters_2, 1, strides=2, padding="same", use_bias=False, name=f"{name}_skip_conv"
    )(x)
    shortcut = batch_norm(f"{name}_skip_bn")(shortcut)
    x = SeparableConvBlock(filters_1, name=f"{name}_sepconv1")(x)
    x = SeparableConvBlock(filters_2, name=f"{name}_sepconv2")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    return keras.layers.Add(name=f"{name}_add")([x, shortcut])


def _middle_block(x, filters: int, *, name: str):
    """Three relu-sepconv-BN units with an identity shortcut."""
    shortcut = x
    for i in range(1, 4):
        x = SeparableConvBlock(filters, name=f"{name}_sepconv{i}")(x)
    return keras.layers.Add(name=f"{name}_add")([x, shortcut])


def xception(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "xception",
) -> keras.Model:
    """Xception. Levels: P3 = entry block 3 (256), P4 = middle flow (728), P5 = exit (2048).

    The stem convs pad "same" (keras.applications uses "valid") so strides stay exact;
    the parameter count is unchanged.
    """
    c = channel_scaler(width, name)
    inputs, pixels = image_input(input_shape)
    # === Entry flow ===
    x = conv_bn_act(pixels, c(32), 3, strides=2, name="block1_conv1")
    x = conv_bn_act(x, c(64), 3, name="block1_conv2")
    x = _downsampling_block(x, c(128), c(128), name="block2")
    p3 = _downsampling_block(x, c(256), c(256), name="block3")
    x = _downsampling_block(p3, c(728), c(728), name="block4")
    # === Middle flow ===
    for i in range(MIDDLE_FLOW_REPEATS):
        x = _middle_block(x, c(728), name=f"block{5 + i}")
    p4 = x
    # === Exit flow ===
    x = _downsampling_block(x, c(728), c(1024), name="block13")
    x = SeparableConvBlock(c(1536), activate_first=False, name="block14_sepconv1")(x)
    p5 = SeparableConvBlock(c(2048), activate_first=False, name="block14_sepconv2")(x)
    # === Functional Model ===
    return make_backbone(inputs, {"P3": p3, "P4": p4, "P5": p5}, name=name, weights=weights)
