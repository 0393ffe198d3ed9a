"""YOLOv3's own backbones: Darknet-53 and the YOLOv3-tiny trunk (Redmon & Farhadi 2018)."""

import keras

from detseg.backbones.pyramid import channel_scaler, image_input, make_backbone
from detseg.layers import conv_bn_act

DARKNET53_STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))  # (filters, residuals)
DARKNET_TINY_FILTERS = (16, 32, 64, 128, 256, 512)


def _conv(x, filters, size, *, name, strides=1, padding="same"):
    """Darknet's convolutional unit: conv (no bias), BN, leaky ReLU 0.1."""
    return conv_bn_act(
        x, filters, size, strides=strides, padding=padding, activation="leaky_relu", name=name
    )


def _downsample(x, filters: int, *, name: str):
    """3x3/2 conv padded on the top-left only, as Darknet pads its stride-2 convs."""
    x = keras.layers.ZeroPadding2D(((1, 0), (1, 0)), name=f"{name}_pad")(x)
    return _conv(x, filters, 3, strides=2, padding="valid", name=name)


def _residual(x, filters: int, *, name: str):
    """1x1 conv to filters/2, 3x3 conv back to filters, added to the input (no activation)."""
    y = _conv(x, max(1, filters // 2), 1, name=f"{name}_1")
    y = _conv(y, filters, 3, name=f"{name}_2")
    return keras.layers.Add(name=f"{name}_add")([x, y])


def darknet53(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "darknet53",
) -> keras.Model:
    """Darknet-53: residual stages 1-2-8-8-4. Channels P3 256, P4 512, P5 1024."""
    c = channel_scaler(width, name)
    inputs, pixels = image_input(input_shape)
    # === Layers ===
    x = _conv(pixels, c(32), 3, name="conv1")
    levels = {}
    for stage, (filters, repeats) in enumerate(DARKNET53_STAGES, start=1):
        x = _downsample(x, c(filters), name=f"stage{stage}_down")
        for i in range(1, repeats + 1):
            x = _residual(x, c(filters), name=f"stage{stage}_res{i}")
        if stage >= 3:
            levels[f"P{stage}"] = x
    # === Functional Model ===
    return make_backbone(inputs, levels, name=name, weights=weights)


def darknet_tiny(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "darknet_tiny",
) -> keras.Model:
    """YOLOv3-tiny's trunk: six 3x3 convs (16..512) each followed by a 2x2 max pool.

    The fifth pool is stride 2 and the sixth stride 1, as in yolov3-tiny.cfg; the 1024-
    channel conv that follows in that file belongs to the detection head here.
    Channels P3 128, P4 256, P5 512 (times `width`).
    """
    c = channel_scaler(width, name)
    inputs, pixels = image_input(input_shape)
    # === Layers ===
    x = pixels
    levels = {}
    for i, filters in enumerate(DARKNET_TINY_FILTERS):
        # conv{i+1} runs at stride 2**i: conv4 is P3, conv5 P4, conv6 (+ stride-1 pool) P5.
        x = _conv(x, c(filters), 3, name=f"conv{i + 1}")
        if i in (3, 4):
            levels[f"P{i}"] = x
        strides = 2 if i < 5 else 1
        x = keras.layers.MaxPooling2D(2, strides=strides, padding="same", name=f"pool{i + 1}")(x)
    levels["P5"] = x
    # === Functional Model ===
    return make_backbone(inputs, levels, name=name, weights=weights)
