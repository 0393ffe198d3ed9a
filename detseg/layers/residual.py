"""Residual units of ResNet (He et al. 2015), with an optional squeeze-and-excitation gate."""

import keras
from keras import ops

from detseg.layers._composite import build_chain, call_chain
from detseg.layers.conv import batch_norm
from detseg.layers.se import SEBlock


def _conv(filters, size, strides, name):
    return keras.layers.Conv2D(
        filters, size, strides=strides, padding="same", use_bias=False, name=name
    )


class _Residual(keras.layers.Layer):
    """relu(branch(x) [* SE gate] + skip(x)); skip is a strided 1x1 conv + BN when needed.

    Subclasses set `self.branch` (the layer chain) and `self.out_filters`.
    """

    def __init__(self, filters: int, strides: int = 1, se_ratio: "int | None" = None, **kwargs):
        super().__init__(**kwargs)
        if filters < 1 or strides < 1:
            raise ValueError(f"filters and strides must be >= 1, got {filters=}, {strides=}")
        self.filters = int(filters)
        self.strides = int(strides)
        self.se_ratio = se_ratio
        self.se = None if se_ratio is None else SEBlock(se_ratio, name="se")
        self.skip = []
        self.out_act = keras.layers.Activation("relu", name="out_relu")

    def build(self, input_shape):
        shape = build_chain(self.branch, input_shape)
        if self.se is not None:
            self.se.build(shape)
        if self.strides != 1 or input_shape[-1] != self.out_filters:
            self.skip = [
                _conv(self.out_filters, 1, self.strides, "skip_conv"),
                batch_norm("skip_bn"),
            ]
            build_chain(self.skip, input_shape)

    def call(self, inputs):
        x = call_chain(self.branch, inputs)
        if self.se is not None:
            x = self.se(x)
        return self.out_act(ops.add(x, call_chain(self.skip, inputs)))

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.out_filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides, se_ratio=self.se_ratio)
        return config


def strided_shape(input_shape, strides, filters):
    """Shape after a "same"-padded stride: ceil(size / strides), None stays None."""
    batch, height, width, _ = input_shape
    spatial = [None if s is None else -(-s // strides) for s in (height, width)]
    return (batch, *spatial, filters)


@keras.saving.register_keras_serializable(package="detseg")
class ResidualUnit(_Residual):
    """ResNet-18/34's basic unit: 3x3 conv-BN-relu, 3x3 conv-BN, added to the skip, relu.

    The first conv carries the stride; output channels = `filters`.
    """

    def __init__(self, filters: int, strides: int = 1, se_ratio: "int | None" = None, **kwargs):
        super().__init__(filters, strides, se_ratio, **kwargs)
        self.out_filters = self.filters
        self.branch = [
            _conv(filters, 3, strides, "conv1"),
            batch_norm("bn1"),
            keras.layers.Activation("relu", name="relu1"),
            _conv(filters, 3, 1, "conv2"),
            batch_norm("bn2"),
        ]


@keras.saving.register_keras_serializable(package="detseg")
class BottleneckUnit(_Residual):
    """ResNet-50's unit: 1x1 reduce, 3x3 (strided, as torchvision's v1.5), 1x1 expand x4.

    Output channels = `4 * filters`.
    """

    expansion = 4

    def __init__(self, filters: int, strides: int = 1, se_ratio: "int | None" = None, **kwargs):
        super().__init__(filters, strides, se_ratio, **kwargs)
        self.out_filters = self.expansion * self.filters
        self.branch = [
            _conv(filters, 1, 1, "conv1"),
            batch_norm("bn1"),
            keras.layers.Activation("relu", name="relu1"),
            _conv(filters, 3, strides, "conv2"),
            batch_norm("bn2"),
            keras.layers.Activation("relu", name="relu2"),
            _conv(self.out_filters, 1, 1, "conv3"),
            batch_norm("bn3"),
        ]
