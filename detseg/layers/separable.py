"""Xception's separable-convolution unit."""

import keras

from detseg.layers._composite import build_chain, call_chain
from detseg.layers.conv import batch_norm


@keras.saving.register_keras_serializable(package="detseg")
class SeparableConvBlock(keras.layers.Layer):
    """SeparableConv2D (no bias) + BatchNorm, with the activation before or after.

    Xception's blocks use the pre-activated form relu -> sepconv -> BN
    (`activate_first=True`); its last two units are sepconv -> BN -> relu.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int = 3,
        activation: str = "relu",
        activate_first: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.activation = activation
        self.activate_first = bool(activate_first)
        act = keras.layers.Activation(activation, name="act")
        conv = keras.layers.SeparableConv2D(
            filters, kernel_size, padding="same", use_bias=False, name="sepconv"
        )
        bn = batch_norm("bn")
        self.chain = [act, conv, bn] if activate_first else [conv, bn, act]

    def build(self, input_shape):
        build_chain(self.chain, input_shape)

    def call(self, inputs):
        return call_chain(self.chain, inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            activation=self.activation,
            activate_first=self.activate_first,
        )
        return config
