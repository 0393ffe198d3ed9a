"""VGG-16 and VGG-19 (Simonyan & Zisserman 2014): stacks of 3x3 convs and 2x2 max pools."""

import keras

from detseg.backbones.pyramid import channel_scaler, image_input, make_backbone

VGG_FILTERS = (64, 128, 256, 512, 512)
VGG_DEPTHS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


def _vgg(depths, input_shape, width, weights, name) -> keras.Model:
    c = channel_scaler(width, name)
    inputs, pixels = image_input(input_shape)
    x = pixels
    levels = {}
    # === Layers === (names as keras.applications: block{b}_conv{i}, block{b}_pool)
    for block, (depth, filters) in enumerate(zip(depths, VGG_FILTERS, strict=True), start=1):
        for i in range(1, depth + 1):
            x = keras.layers.Conv2D(
                c(filters), 3, padding="same", activation="relu", name=f"block{block}_conv{i}"
            )(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
        if block >= 3:
            levels[f"P{block}"] = x
    # === Functional Model ===
    return make_backbone(inputs, levels, name=name, weights=weights)


def vgg16(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "vgg16",
) -> keras.Model:
    """VGG-16's 13 conv layers. Levels: P3 = block3_pool (256), P4, P5 = block4/5_pool (512)."""
    return _vgg(VGG_DEPTHS["vgg16"], input_shape, width, weights, name)


def vgg19(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "vgg19",
) -> keras.Model:
    """VGG-19's 16 conv layers. Levels: P3 = block3_pool (256), P4, P5 = block4/5_pool (512)."""
    return _vgg(VGG_DEPTHS["vgg19"], input_shape, width, weights, name)
