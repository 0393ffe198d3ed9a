"""GoogLeNet / Inception v1 (Szegedy et al. 2014), with its nine inception modules."""

import keras

from detseg.backbones.pyramid import channel_scaler, image_input, make_backbone
from detseg.layers import InceptionModule, LocalResponseNormalization

# The paper's Table 1: name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION_TABLE = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}

# Inputs of the paper's two auxiliary classifiers.
AUX_TAPS = ("4a", "4d")


def googlenet(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    aux_outputs: bool = False,
    name: str = "googlenet",
) -> keras.Model:
    """GoogLeNet's trunk: levels P3 = 3b (480), P4 = 4e (832), P5 = 5b (1024 channels).

    With `aux_outputs=True` the outputs also hold "aux_4a" and "aux_4d", the inputs of
    the paper's auxiliary classifiers (they are not pyramid levels).
    """
    c = channel_scaler(width, name)

    def inception(x, key):
        return InceptionModule(*(c(f) for f in INCEPTION_TABLE[key]), name=f"inception_{key}")(x)

    def pool(name):
        return keras.layers.MaxPooling2D(3, strides=2, padding="same", name=name)

    inputs, pixels = image_input(input_shape)
    # === Layers ===
    x = keras.layers.Conv2D(c(64), 7, strides=2, padding="same", activation="relu", name="conv1")(
        pixels
    )
    x = pool("pool1")(x)
    x = LocalResponseNormalization(name="lrn1")(x)
    x = keras.layers.Conv2D(c(64), 1, activation="relu", name="conv2_reduce")(x)
    x = keras.layers.Conv2D(c(192), 3, padding="same", activation="relu", name="conv2")(x)
    x = LocalResponseNormalization(name="lrn2")(x)
    x = pool("pool2")(x)
    taps = {}
    for key in INCEPTION_TABLE:
        if key in ("4a", "5a"):
            x = pool(f"pool{key[0]}")(x)
        x = inception(x, key)
        taps[key] = x
    # === Functional Model ===
    outputs = {"P3": taps["3b"], "P4": taps["4e"], "P5": taps["5b"]}
    if aux_outputs:
        outputs.update({f"aux_{key}": taps[key] for key in AUX_TAPS})
    return make_backbone(inputs, outputs, name=name, weights=weights)
