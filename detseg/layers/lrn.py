"""Local response normalization, AlexNet's cross-channel brightness normalisation."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="detseg")
class LocalResponseNormalization(keras.layers.Layer):
    """b_i = a_i / (bias + alpha * sum_{j=i-r}^{i+r} a_j^2) ** beta over channels.

    The sum runs over the `2 * depth_radius + 1` neighbouring channels, clipped at the
    edges (the AlexNet paper's n = 5 is depth_radius = 2). Defaults are the paper's
    k = 2, alpha = 1e-4, beta = 0.75. `alpha` is not divided by the window size, as in
    the paper and `tf.nn.local_response_normalization`. Channels-last input.
    """

    def __init__(
        self,
        depth_radius: int = 2,
        bias: float = 2.0,
        alpha: float = 1e-4,
        beta: float = 0.75,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if depth_radius < 0:
            raise ValueError(f"depth_radius must be >= 0, got {depth_radius}")
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs):
        squares = ops.square(inputs)
        channels = inputs.shape[-1]
        r = self.depth_radius
        pad = [[0, 0]] * (len(inputs.shape) - 1) + [[r, r]]
        padded = ops.pad(squares, pad)
        window_sum = padded[..., 0:channels]
        for offset in range(1, 2 * r + 1):
            window_sum = window_sum + padded[..., offset : offset + channels]
        return inputs / ops.power(self.bias + self.alpha * window_sum, self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha, beta=self.beta
        )
        return config
