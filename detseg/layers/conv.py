"""Conv -> BatchNorm -> activation, the unit most modern backbones repeat.

Shared batch-norm settings live here so every backbone normalises the same way.
"""

import keras

# One batch-norm setting for every backbone: epsilon 1e-3 stays safe in float16, and a
# momentum of 0.97 lets the moving statistics settle within a short CPU training run.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.97

# YOLOv3's leaky ReLU slope (Keras' own default is 0.2).
LEAKY_SLOPE = 0.1


def batch_norm(name: str) -> keras.layers.BatchNormalization:
    """The house BatchNormalization layer."""
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def activation_layer(activation: str, name: str) -> keras.layers.Layer:
    """An activation layer; "leaky_relu" uses YOLOv3's slope of 0.1."""
    if activation == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=name)
    return keras.layers.Activation(activation, name=name)


def conv_bn_act(
    x,
    filters: int,
    kernel_size: int,
    *,
    strides: int = 1,
    activation: "str | None" = "relu",
    padding: str = "same",
    name: str,
):
    """Conv2D without bias (the BN shift replaces it), BN, then the activation.

    Layer names: f"{name}_conv", f"{name}_bn", f"{name}_act".
    """
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv"
    )(x)
    x = batch_norm(f"{name}_bn")(x)
    if activation is not None:
        x = activation_layer(activation, f"{name}_act")(x)
    return x


def scale_channels(channels: int, width: float) -> int:
    """Channels after a width multiplier, never below one."""
    return max(1, int(round(channels * width)))
