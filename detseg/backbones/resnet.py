"""ResNet-18/34/50 (He et al. 2015), laid out as torchvision's: BN, no conv bias."""

import keras

from detseg.backbones.pyramid import channel_scaler, image_input, make_backbone
from detseg.layers import BottleneckUnit, ResidualUnit, conv_bn_act

RESNET_FILTERS = (64, 128, 256, 512)
RESNET_DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}


def build_resnet(
    unit, depths, input_shape, *, width: float, weights, se_ratio: "int | None", name: str
) -> keras.Model:
    """The ResNet trunk with residual `unit`s; stages conv2_x..conv5_x at strides 4..32.

    Levels P3, P4, P5 are the outputs of conv3_x, conv4_x, conv5_x.
    """
    c = channel_scaler(width, name)
    inputs, pixels = image_input(input_shape)
    # === Layers ===
    x = conv_bn_act(pixels, c(64), 7, strides=2, name="conv1")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    levels = {}
    for stage, (depth, filters) in enumerate(zip(depths, RESNET_FILTERS, strict=True), start=2):
        for i in range(depth):
            strides = 2 if i == 0 and stage > 2 else 1
            x = unit(c(filters), strides, se_ratio, name=f"conv{stage}_{i + 1}")(x)
        if stage >= 3:
            levels[f"P{stage}"] = x
    # === Functional Model ===
    return make_backbone(inputs, levels, name=name, weights=weights)


def resnet18(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "resnet18",
) -> keras.Model:
    """ResNet-18: basic units 2-2-2-2. Channels P3 128, P4 256, P5 512."""
    return build_resnet(
        ResidualUnit,
        RESNET_DEPTHS["resnet18"],
        input_shape,
        width=width,
        weights=weights,
        se_ratio=None,
        name=name,
    )


def resnet34(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "resnet34",
) -> keras.Model:
    """ResNet-34: basic units 3-4-6-3. Channels P3 128, P4 256, P5 512."""
    return build_resnet(
        ResidualUnit,
        RESNET_DEPTHS["resnet34"],
        input_shape,
        width=width,
        weights=weights,
        se_ratio=None,
        name=name,
    )


def resnet50(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "resnet50",
) -> keras.Model:
    """ResNet-50: bottleneck units 3-4-6-3. Channels P3 512, P4 1024, P5 2048."""
    return build_resnet(
        BottleneckUnit,
        RESNET_DEPTHS["resnet50"],
        input_shape,
        width=width,
        weights=weights,
        se_ratio=None,
        name=name,
    )
