"""SE-ResNet (Hu et al. 2017): ResNets whose residual branch is gated by an SE block."""

import keras

from detseg.backbones.resnet import RESNET_DEPTHS, build_resnet
from detseg.layers import BottleneckUnit, ResidualUnit

# The SENet paper's reduction ratio.
SE_RATIO = 16


def se_resnet(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "se_resnet",
) -> keras.Model:
    """SE-ResNet-34: basic units 3-4-6-3 with SE (ratio 16). Channels P3 128, P4 256, P5 512."""
    return build_resnet(
        ResidualUnit,
        RESNET_DEPTHS["resnet34"],
        input_shape,
        width=width,
        weights=weights,
        se_ratio=SE_RATIO,
        name=name,
    )


def se_resnet50(
    input_shape=(None, None, 3),
    *,
    width: float = 1.0,
    weights: "str | None" = None,
    name: str = "se_resnet50",
) -> keras.Model:
    """SE-ResNet-50: bottleneck units 3-4-6-3 with SE. Channels P3 512, P4 1024, P5 2048."""
    return build_resnet(
        BottleneckUnit,
        RESNET_DEPTHS["resnet50"],
        input_shape,
        width=width,
        weights=weights,
        se_ratio=SE_RATIO,
        name=name,
    )
