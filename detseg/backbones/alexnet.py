"""AlexNet (Krizhevsky et al. 2012), single-tower, with local response normalization."""

import keras

from detseg.backbones.pyramid import channel_scaler, image_input, make_backbone
from detseg.layers import LocalResponseNormalization


def alexnet(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    padding: str = "same",
    name: str = "alexnet",
) -> keras.Model:
    """AlexNet's five conv layers, LRN after conv1 and conv2, overlapping 3x3/2 max pools.

    Levels: P3 = conv2 + LRN (256), P4 = conv5 (256), P5 = pool3 (256).
    `padding` applies to conv1 and the pools: "same" keeps exact strides; "valid" is the
    paper's 227 -> 55 -> 27 -> 13 -> 6 (convs 2-5 always keep their input size).
    """
    c = channel_scaler(width, name)

    def conv(filters, size, name, strides=1, conv_padding="same"):
        return keras.layers.Conv2D(
            c(filters), size, strides=strides, padding=conv_padding, activation="relu", name=name
        )

    def pool(name):
        return keras.layers.MaxPooling2D(3, strides=2, padding=padding, name=name)

    inputs, pixels = image_input(input_shape)
    # === Layers ===
    x = conv(96, 11, "conv1", strides=4, conv_padding=padding)(pixels)
    x = LocalResponseNormalization(name="lrn1")(x)
    x = pool("pool1")(x)
    x = conv(256, 5, "conv2")(x)
    p3 = LocalResponseNormalization(name="lrn2")(x)
    x = pool("pool2")(p3)
    x = conv(384, 3, "conv3")(x)
    x = conv(384, 3, "conv4")(x)
    p4 = conv(256, 3, "conv5")(x)
    p5 = pool("pool3")(p4)
    # === Functional Model ===
    return make_backbone(inputs, {"P3": p3, "P4": p4, "P5": p5}, name=name, weights=weights)
